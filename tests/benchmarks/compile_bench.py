"""`make bench-compile`: compile time and peak memory per stage for GPT-2-shaped decoders.

Models exported with torch at fixed seeds and cached by shape in a temp directory:

- GPT-2 shape (width 768, 12 heads, seq 128, vocab 50257) with 4, 12, 24 and 48 layers, fp32 weights
  (the 48-layer file is ~1.7 GB). Their weights do not fit the chip's SRAM, so only the frontend and
  the graph passes are run and timed: the part of a compile that reads and rewrites the model.
- The same blocks with vocab 2048, compiled in full at fp16 (every stage, and writing the artifact):
  with 4 and 12 layers for tsp-v1 (they fit), and with 4, 12, 24 and 48 layers for a bench-only copy
  of tsp-v1 with more addresses per MEM slice (BIG_SRAM times; the same units, streams and floorplan),
  so that the growth of lowering, scheduling, validation and encoding with depth can be judged.

Each compile runs in a child process of its own so that its peak RSS is its own: per stage, the
peak resident set size while that stage ran (lpuc.api.stage_usage; VmHWM, reset per stage).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(tempfile.gettempdir()) / "lpuc-compile-bench"
STAGES = ("frontend", "passes", "lowering", "schedule", "validate", "encode")
BIG_SRAM = 6  # the bench target's addresses per slice, in multiples of tsp-v1's (48 layers fit)


@dataclass(frozen=True)
class Case:
    layers: int
    vocab: int
    full: bool  # every stage; else the frontend and the passes only
    big_sram: bool = False  # compiled for the bench target with BIG_SRAM x tsp-v1's SRAM
    width: int = 768
    heads: int = 12
    context: int = 128

    @property
    def name(self) -> str:
        return f"gpt2-{self.layers}L-v{self.vocab}" + (f"-{BIG_SRAM}xsram" if self.big_sram else "")


LAYERS = (4, 12, 24, 48)
GPT2_CASES = [Case(n, 50257, full=False) for n in LAYERS]
FULL_CASES = [Case(n, 2048, full=True) for n in (4, 12)]
BIG_CASES = [Case(n, 2048, full=True, big_sram=True) for n in LAYERS]


def bench_target() -> Path:
    """tsp-v1 with BIG_SRAM times the addresses per slice, as a target file in the cache (a compile-time
    bench device, not a chip: only SRAM capacity differs, so schedules keep tsp-v1's resources)."""
    from lpuc.fileio import atomic_write
    from lpuc.target import load_target

    raw = load_target("tsp-v1").as_dict()
    raw["name"] = f"tsp-v1-{BIG_SRAM}xsram-bench"
    raw["description"] = f"compile-time bench only: tsp-v1 with {BIG_SRAM}x the addresses per MEM slice"
    raw["mem"]["addresses_per_slice"] *= BIG_SRAM
    path = CACHE / f"{raw['name']}.json"
    CACHE.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(raw, indent=1, sort_keys=True) + "\n")
    return path


def model_file(case: Case) -> Path:
    """The case's ONNX file, exported once (fixed seed) and cached by shape."""
    path = CACHE / f"gpt2_l{case.layers}_w{case.width}_h{case.heads}_t{case.context}_v{case.vocab}.onnx"
    if path.is_file():
        return path
    import torch

    from tests import zoo
    from tests.models import export

    CACHE.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    module = zoo.GPT(vocab=case.vocab, width=case.width, heads=case.heads, context=case.context)
    module.blocks = torch.nn.Sequential(
        *(zoo.DecoderBlock(case.width, case.heads, case.context, "tanh") for _ in range(case.layers))
    )
    ids = torch.zeros(1, case.context, dtype=torch.int64)
    # Exported beside the cache file and renamed: an interrupted export never leaves a cached file.
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        part = export(module, (ids,), Path(tmp) / "model.onnx", seed=0, input_names=["ids"])
        os.replace(part, path)
    return path


def _child(path: str, full: bool, precision: str, target: str) -> None:
    """Compile `path` in this process and print one JSON line: stage -> [seconds, peak RSS bytes]."""
    import lpuc
    import lpuc.api
    from lpuc.errors import LpucError

    class _Stop(Exception):
        pass

    if not full:

        def stop(*args, **kwargs):  # lowering is where the stages that need the model to fit begin
            raise _Stop

        lpuc.api.lower = stop
    outcome = "compiled"
    try:
        program = lpuc.compile(path, target=target, precision=precision)
        with tempfile.TemporaryDirectory(dir=CACHE) as tmp, lpuc.api.timed_stage({}, "encode"):
            program.save(Path(tmp) / "model.lpu")
    except _Stop:
        outcome = "frontend+passes only"
    except LpucError as e:
        outcome = "error: " + str(e).splitlines()[0][:120]
    done = [s for s in STAGES if s in lpuc.api.stage_usage]
    if not full:
        done = [s for s in done if s in ("frontend", "passes")]
    print(json.dumps({"outcome": outcome, "stages": {s: lpuc.api.stage_usage[s] for s in done}}))


def measure(case: Case, precision: str, timeout: float) -> dict:
    path = model_file(case)
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "tests.benchmarks.compile_bench", "--child", str(path)]
    cmd += ["--precision", precision, "--target", str(bench_target()) if case.big_sram else "tsp-v1"]
    cmd += ["--full"] if case.full else []
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=os.getcwd())
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        return {"outcome": f"child failed ({tail[0][:120]})", "stages": {}, "file_bytes": path.stat().st_size}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["file_bytes"] = path.stat().st_size
    result["wall_seconds"] = time.perf_counter() - start
    return result


def _row(case: Case, r: dict) -> str:
    cells = [f"{case.name:<24}", f"{r['file_bytes'] / 2**20:9.1f}"]
    for s in STAGES:
        seconds, rss = r["stages"].get(s, (None, None))
        known = seconds is not None and rss
        cells.append(f"{seconds:6.2f} {rss / 2**20:5.0f}" if known else f"{'-':>6} {'-':>5}")
    total = sum(v[0] for v in r["stages"].values())
    peak = max((v[1] or 0 for v in r["stages"].values()), default=0)
    cells.append(f"{total:7.2f} {peak / r['file_bytes']:5.2f}x")
    return "  ".join(cells) + f"  {r['outcome']}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", metavar="MODEL", help=argparse.SUPPRESS)
    parser.add_argument("--full", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--target", default="tsp-v1", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="fp16")
    parser.add_argument("--layers", default="4,12,24,48", help="layer counts (comma-separated)")
    parser.add_argument("--no-full", action="store_true", help="skip the full compiles (vocab 2048)")
    parser.add_argument("--no-gpt2", action="store_true", help="skip the frontend-only GPT-2 vocab cases")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per compile")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.full, args.precision, args.target)
        return

    layers = {int(n) for n in args.layers.split(",") if n}
    cases = [] if args.no_gpt2 else GPT2_CASES
    cases += [] if args.no_full else FULL_CASES + BIG_CASES
    cases = [c for c in cases if c.layers in layers]
    print(f"models cached in {CACHE}; each compile in its own process; precision {args.precision}")
    print("GPT-2 shape (vocab 50257) does not fit SRAM: frontend + passes only; vocab 2048: full compile")
    print("per stage: wall seconds and peak RSS MiB; the last column is the peak over the model file's size")
    stage_head = "  ".join(f"{s[:6]:>6} {'MiB':>5}" for s in STAGES)  # seconds, then MiB
    print(f"{'model':<24}  {'file MiB':>9}  {stage_head}  {'total s':>7} {'peak/file':>6}")
    results = {}
    for case in cases:
        results[case.name] = measure(case, args.precision, args.timeout)
        print(_row(case, results[case.name]), flush=True)
    _print_growth([c for c in cases if not c.full], results, ("frontend", "passes"))
    _print_growth([c for c in cases if c.big_sram], results, STAGES)
    if args.json:
        from lpuc.fileio import atomic_write

        atomic_write(args.json, json.dumps(results, indent=1, sort_keys=True) + "\n")


def _print_growth(cases: list[Case], results: dict[str, dict], stages: tuple[str, ...]) -> None:
    """Seconds each added layer costs in `stages`: about constant when time is linear in depth (the
    embeddings and LM head are a fixed cost, so seconds / layers alone would fall with depth)."""
    points = [
        (c.layers, sum(results[c.name]["stages"].get(s, (0.0,))[0] for s in stages))
        for c in cases
        if results[c.name]["stages"]
    ]
    steps = [f"{n0}->{n1}L {(t1 - t0) / (n1 - n0):.3f}" for (n0, t0), (n1, t1) in zip(points, points[1:])]
    if steps:
        what = "+".join(stages) if len(stages) < len(STAGES) else "a full compile"
        print(f"{what}: seconds per added layer (constant if linear): " + ", ".join(steps))


if __name__ == "__main__":
    main()
