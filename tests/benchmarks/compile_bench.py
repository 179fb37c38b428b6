"""`make bench-compile`: compile time and peak memory per stage for GPT-2-shaped decoders.

Two sets of models, exported with torch at fixed seeds and cached by shape in a temp directory:

- GPT-2 shape (width 768, 12 heads, seq 128, vocab 50257) with 4, 12, 24 and 48 layers, fp32 weights
  (the 48-layer file is ~1.7 GB). Their weights do not fit the chip's SRAM, so only the frontend and
  the graph passes are run and timed: the part of a compile that reads and rewrites the model.
- The same blocks with vocab 2048 and 4 and 12 layers, compiled in full at fp16 (they fit), so
  lowering and scheduling are timed too.

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
STAGES = ("frontend", "passes", "lowering", "schedule")


@dataclass(frozen=True)
class Case:
    layers: int
    vocab: int
    full: bool  # all four stages; else the frontend and the passes only
    width: int = 768
    heads: int = 12
    context: int = 128

    @property
    def name(self) -> str:
        return f"gpt2-{self.layers}L-v{self.vocab}"


GPT2_CASES = [Case(n, 50257, full=False) for n in (4, 12, 24, 48)]
FULL_CASES = [Case(n, 2048, full=True) for n in (4, 12)]


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


def _child(path: str, full: bool, precision: str) -> None:
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
        lpuc.compile(path, precision=precision)
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
    cmd += ["--precision", precision] + (["--full"] if case.full else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=os.getcwd())
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        return {"outcome": f"child failed ({tail[0][:120]})", "stages": {}, "file_bytes": path.stat().st_size}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["file_bytes"] = path.stat().st_size
    result["wall_seconds"] = time.perf_counter() - start
    return result


def _row(case: Case, r: dict) -> str:
    cells = [f"{case.name:<18}", f"{r['file_bytes'] / 2**20:9.1f}"]
    for s in STAGES:
        seconds, rss = r["stages"].get(s, (None, None))
        cells.append(
            f"{seconds:7.2f} {rss / 2**20:7.0f}" if seconds is not None and rss else f"{'-':>7} {'-':>7}"
        )
    total = sum(v[0] for v in r["stages"].values())
    peak = max((v[1] or 0 for v in r["stages"].values()), default=0)
    cells.append(f"{total:7.2f} {peak / r['file_bytes']:5.2f}x")
    return "  ".join(cells) + f"  {r['outcome']}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", metavar="MODEL", help=argparse.SUPPRESS)
    parser.add_argument("--full", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="fp16")
    parser.add_argument("--layers", default="4,12,24,48", help="GPT-2-shaped layer counts (comma-separated)")
    parser.add_argument("--no-full", action="store_true", help="skip the full compiles (vocab 2048)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per compile")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.full, args.precision)
        return

    layers = {int(n) for n in args.layers.split(",") if n}
    cases = [c for c in GPT2_CASES if c.layers in layers] + ([] if args.no_full else FULL_CASES)
    print(f"models cached in {CACHE}; each compile in its own process; precision {args.precision}")
    print("GPT-2 shape (vocab 50257) does not fit SRAM: frontend + passes only; vocab 2048: full compile")
    stage_head = "  ".join(f"{s + ' s':>7} {'MiB':>7}" for s in STAGES)
    print(f"{'model':<18}  {'file MiB':>9}  {stage_head}  {'total s':>7} {'peak/file':>6}")
    results = {}
    for case in cases:
        results[case.name] = measure(case, args.precision, args.timeout)
        print(_row(case, results[case.name]), flush=True)
    _print_growth(cases, results)
    if args.json:
        from lpuc.fileio import atomic_write

        atomic_write(args.json, json.dumps(results, indent=1, sort_keys=True) + "\n")


def _print_growth(cases: list[Case], results: dict[str, dict]) -> None:
    """Seconds each added layer costs in frontend + passes: about constant when time is linear in depth
    (the embeddings and LM head are a fixed cost, so seconds / layers alone would fall with depth)."""
    points = [
        (c.layers, sum(results[c.name]["stages"].get(s, (0.0,))[0] for s in ("frontend", "passes")))
        for c in cases
        if not c.full and results[c.name]["stages"]
    ]
    steps = [f"{n0}->{n1}L {(t1 - t0) / (n1 - n0):.3f}" for (n0, t0), (n1, t1) in zip(points, points[1:])]
    if steps:
        print("frontend+passes seconds per added layer (constant if linear): " + ", ".join(steps))


if __name__ == "__main__":
    main()
