"""`make bench`: compile and run the bundled models; print schedule quality and runtime speed.

For each model and precision: compile time; simulated cycles (and before the honest cost model of
issue 6, from cycles_before_issue6.json, measured at commit 5a223a2), latency on the chip and end to
end; the hardware lower bound, cycles / bound and the resource that sets it; SRAM peak; wall time of
one run in the reference runtime (execution plan and interpreter) and of onnxruntime (its default
threads, and one thread as the plan uses), measured in this process, and their ratios; max error
against onnxruntime. The light zoo models run with seeded weights (light_zoo.py). Wall times are
medians of several runs (machines are shared and noisy). Then ablations: light ResNet-50 without
each schedule-shaping pass, and a GPT-2-shaped decoder (--gpt-layers; BERT-base too with
--bert-ablation) with each transformer pass disabled in turn; then BERT-base and GPT-2-shaped decoders
(transformer_bench.py). Memory: the peak RSS a first run (which builds the plan) adds to a child
process that loaded the program, against the program's SRAM image plus its inputs and outputs.

    python -m tests.benchmarks.bench --models mlp,squeezenet --precisions fp16
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort

import lpuc
from lpuc.errors import DoesNotFitError
from lpuc.report import bound_by
from tests.benchmarks.light_zoo import LIGHT, seeded_weights
from tests.benchmarks.transformer_bench import bench_transformers

ROOT = Path(__file__).resolve().parents[2]
# Published results of the same chip with Groq's compiler (ISCA 2020): the marks to beat.
GROQ_US = {"light_resnet50": 49.0}
# The light zoo lists its initializers as graph inputs too, which onnxruntime warns about per tensor.
ort.set_default_logger_severity(3)
BEFORE = json.loads((Path(__file__).parent / "cycles_before_issue6.json").read_text())


def _median_seconds(fn, repeats: int, min_seconds: float = 0.3) -> float:
    """Median of at least `repeats` calls, and of more (up to 2000) until `min_seconds` passed:
    a tiny model's median over five calls on a shared machine is mostly noise."""
    times: list[float] = []
    spent = 0.0
    while len(times) < repeats or (spent < min_seconds and len(times) < 2000):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        spent += times[-1]
    return statistics.median(times)


def _feeds(session: ort.InferenceSession) -> dict[str, np.ndarray]:
    """onnx's backend-runner inputs, arange(n) / n: deterministic, and valid BatchNorm variances for the
    zoo models that take their statistics as inputs."""
    feeds = {}
    for i in session.get_inputs():
        shape = [d if isinstance(d, int) else 1 for d in i.shape]
        n = int(np.prod(shape))
        feeds[i.name] = (np.arange(n).reshape(shape) / max(n, 1)).astype(np.float32)
    return feeds


def _rss(field: str) -> int:
    """VmRSS / VmHWM of this process, bytes (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"no {field} in /proc/self/status")


def _rss_child(artifact: str) -> None:
    """Load `artifact`, run it twice and print one JSON line: resident bytes before the runs and the
    peak each run adds (the first builds the execution plan; the second reuses it)."""
    import lpuc.api

    program = lpuc.load(artifact)
    feeds = {}
    for b in program.inputs:  # the same arange(n) / n inputs as _feeds
        n = int(np.prod(b.shape))
        feeds[b.name] = (np.arange(n).reshape(b.shape) / max(n, 1)).astype(b.dtype)
    before = _rss("VmRSS")
    peaks = []
    for _ in range(2):
        lpuc.api._reset_peak_rss()
        outputs = program.run(feeds)
        peaks.append(_rss("VmHWM") - before)
    io = sum(v.nbytes for v in feeds.values()) + sum(v.nbytes for v in outputs.values())
    print(json.dumps({"before": before, "first": peaks[0], "second": peaks[1], "io": io}))


def run_memory(program: lpuc.Program) -> dict:
    """_rss_child's measurement of `program`, in a child process of its own."""
    with tempfile.TemporaryDirectory() as tmp:
        artifact = os.path.join(tmp, "m.lpu")
        program.save(artifact)
        cmd = [sys.executable, "-m", "tests.benchmarks.bench", "--rss-child", artifact]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"memory child failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_model(path: Path, precision: str, target: str, repeats: int, name: str | None = None) -> dict:
    """One row of the bench; `name` (default: the file's stem) also keys the cycles before issue 6,
    which only a model under its own name has."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = _feeds(session)
    expected = session.run(None, feeds)
    start = time.perf_counter()
    program = lpuc.compile(path, target=target, precision=precision)
    compile_s = time.perf_counter() - start
    outputs = program.run(feeds)
    err = max(float(np.max(np.abs(outputs[o.name] - e))) for o, e in zip(session.get_outputs(), expected))
    finite = all(np.isfinite(outputs[o.name]).all() for o in session.get_outputs())
    lpuc_s = _median_seconds(lambda: program.run(feeds), repeats)  # the execution plan (built above)
    interp_s = _median_seconds(lambda: program.run(feeds, interpret=True), repeats)
    ort_s = _median_seconds(lambda: session.run(None, feeds), max(repeats, 20))
    # onnxruntime's default uses a thread per core (two here); the plan runs on one thread with a
    # one-thread BLAS. Both figures, so that the comparison says which it is.
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    one_thread = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    ort1_s = _median_seconds(lambda: one_thread.run(None, feeds), max(repeats, 20))
    memory = run_memory(program)
    s = program.summary
    return {
        "model": name or path.stem,
        "precision": precision,
        "compile_s": compile_s,
        "cycles": s["cycles"],
        "latency_us": s["latency_us"],
        "before": None if name else BEFORE.get(f"{path.stem}/{precision}"),
        "end_to_end_us": s["end_to_end_us"],
        "bound": s["lower_bound_cycles"]["overall"],
        "binding": bound_by(s),
        "ratio": s["bound_ratio"],
        "mxm_bound": s["lower_bound_cycles"]["mxm"],
        "finite": finite,
        "sram": s["sram_peak_bytes"],
        "instructions": s["instructions"],
        "run_ms": lpuc_s * 1e3,
        "interp_ms": interp_s * 1e3,
        "ort_ms": ort_s * 1e3,
        "ort1_ms": ort1_s * 1e3,
        "max_abs_err": err,
        "run_rss": memory["first"],
        "image_io": s["sram_peak_bytes"] + memory["io"],
    }


# Passes that change schedules, measured by compiling without each in turn.
ABLATIONS = ("sink_transposes", "fuse_layernorm", "fuse_gelu")


def ablate(path: Path, target: str) -> None:
    """Cycles with each schedule-shaping pass disabled in turn, so each one's effect is measured."""
    if not path.exists():
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = lpuc.compile(path, target=target, precision="fp16").summary["cycles"]
        parts = []
        for name in ABLATIONS:
            cycles = lpuc.compile(path, target=target, precision="fp16", disable_passes=(name,)).summary[
                "cycles"
            ]
            parts.append(f"without {name} {cycles:,} ({cycles / full:.2f}x)")
    print(f"{path.stem} fp16: {full:,} cycles; " + "; ".join(parts))


# The transformer passes and the lowering strategies that shape attention (row segments, per-head
# score tiles; K^T transposed in slabs; the mask map fused into Q @ K^T; K-split sums joined with the
# residual add), measured on a GPT-2-shaped decoder (width 768, 12 heads, seq 128) and, opt-in,
# BERT-base.
TRANSFORMER_ABLATIONS = (
    "address_heads",
    "pair_heads",
    "values_with_queries",
    "weight_sides",
    "fuse_layernorm",
    "fuse_gelu",
    "fuse_softmax",
    "fold_score_scale",
    "inline_mask_selects",
    "fuse_elementwise",
    "row_segments",
    "row_slabs",
    "mxm_epilogues",
    "map_chains",
)


def gpt2_file(layers: int, opset: int = 14) -> Path:
    """A GPT-2-shaped decoder (tests/zoo.py GPT: width 768, 12 heads, seq 128, tanh GELU; vocab 2048
    so that it fits SRAM) exported once at `opset` and cached. Opset 14, as Hugging Face exports
    often are, writes LayerNorm and GELU as chains of small ops: what the fusion passes are for."""
    import os
    import tempfile

    import torch

    from tests import zoo
    from tests.benchmarks.compile_bench import CACHE
    from tests.models import export

    path = CACHE / f"gpt2_l{layers}_w768_h12_t128_v2048_opset{opset}.onnx"
    if path.is_file():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    module = zoo.GPT(vocab=2048, width=768, heads=12, context=128)
    module.blocks = torch.nn.Sequential(*(zoo.DecoderBlock(768, 12, 128, "tanh") for _ in range(layers)))
    ids = torch.zeros(1, 128, dtype=torch.int64)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:  # renamed into place: never a partial file
        part = export(
            module, (ids,), Path(tmp) / "model.onnx", seed=0, input_names=["ids"], opset_version=opset
        )
        os.replace(part, path)
    return path


def ablate_transformer(target: str, layers: int) -> None:
    """Cycles, bound ratio and the SXM / VXM share of the critical path of a GPT-2-shaped decoder,
    with each transformer pass disabled in turn."""
    title = (
        f"GPT-2-shaped decoder (opset 14 export), {layers} layers, 768 wide, seq 128, fp16: "
        "transformer passes disabled in turn"
    )
    _ablate(gpt2_file(layers), target, title)


def ablate_bert(target: str) -> None:
    """The same for BERT-base (transformers export, opset 17, seq 128; tests/zoo.py bert_onnx, cached):
    seven compiles of 25-90 s each, so only with --bert-ablation."""
    from tests import zoo

    title = "BERT-base (seq 128, batch 1), fp16: transformer passes disabled in turn"
    _ablate(zoo.bert_onnx(), target, title)


def _ablate(path: Path, target: str, title: str) -> None:
    print(title, flush=True)
    full = 0
    for disabled in ((), *((name,) for name in TRANSFORMER_ABLATIONS)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = lpuc.compile(path, target=target, precision="fp16", disable_passes=disabled)
        s, share = program.summary, _critical_share(program)
        del program  # BERT-base programs are large: one at a time
        full = full or s["cycles"]
        label = f"without {disabled[0]}" if disabled else "all passes"
        print(  # as each compile ends: BERT-base's take minutes
            f"  {label:<26}{s['cycles']:>10,} cycles ({s['cycles'] / full:.2f}x)"
            f"  ratio {s['bound_ratio']:>6.2f}"
            f"  critical path: SXM {share['SXM']:.1%}, VXM {share['VXM']:.1%}, MXM {share['MXM']:.1%}",
            flush=True,
        )


def _critical_share(program) -> dict[str, float]:
    """The share of the critical path's busy cycles each unit class spends."""
    from lpuc.schedule.critical_path import critical_path

    path = critical_path(program)
    total = max(1, sum(i.duration for i in path))
    share = {"MXM": 0.0, "VXM": 0.0, "SXM": 0.0}
    for ins in path:
        kind = ins.opcode.split(".")[0].upper()
        if kind in share:
            share[kind] += ins.duration / total
    return share


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", type=Path, help="ONNX files (default: models/*.onnx)")
    parser.add_argument("--target", default="tsp-v1")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-zoo", action="store_true", help="skip onnx's light zoo models")
    parser.add_argument(
        "--gpt-layers", type=int, default=12, help="layers of the GPT-2-shaped ablation (0: skip it)"
    )
    parser.add_argument(
        "--no-transformers", action="store_true", help="skip BERT-base and the GPT-2-shaped decoders"
    )
    parser.add_argument(
        "--bert-ablation",
        action="store_true",
        help="also compile BERT-base with each transformer pass disabled in turn (7 compiles, minutes)",
    )
    parser.add_argument(
        "--models",
        dest="only",
        help="comma-separated parts of model names to keep, e.g. mlp,squeezenet (default: all)",
    )
    parser.add_argument("--precisions", default="fp16,fp32", help="comma-separated (default: fp16,fp32)")
    parser.add_argument("--rss-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        _rss_child(args.rss_child)
        return
    paths = args.models or sorted((ROOT / "models").glob("*.onnx"))
    light = [] if args.models or args.no_zoo else sorted(LIGHT.glob("light_*.onnx"))
    if args.only:
        keep = args.only.split(",")
        paths = [p for p in paths if any(k in p.stem for k in keep)]
        light = [p for p in light if any(k in p.stem for k in keep)]
    # The zoo ships each weight as one repeated value, which overflows fp16 on the bench's inputs:
    # run times would be measured on NaNs. Seeded weights keep every run's values finite.
    zoo = {seeded_weights(p): p.stem for p in light}
    header = (
        f"{'model':<19}{'prec':<6}{'compile s':>10}{'before':>10}{'cycles':>10}{'change':>8}{'us':>9}"
        f"{'e2e us':>9}{'bound':>8}{'(by)':>6}{'ratio':>7}{'SRAM KiB':>10}{'instrs':>7}{'run ms':>9}"
        f"{'interp ms':>10}{'ort ms':>8}{'plan/ort':>9}{'ort1 ms':>9}{'/ort1':>6}{'max err':>10}"
        f"{'RSS MiB':>8}{'/image+io':>10}"
    )
    print(
        f"target {args.target}; wall times are medians of {args.repeats} runs "
        "(onnxruntime: >= 20; zoo: 1 run, after a first run that builds the plan)"
    )
    print(
        "before: cycles at 5a223a2, before the honest cost model (bundled models; the light zoo runs with "
        "seeded weights, light_zoo.py); bound: the hardware lower bound (max of "
        "MXM, VXM, SXM, MEM, host and the graph's dependence chain), (by): which; ratio: cycles / bound"
    )
    print(header)
    print("-" * len(header))
    runs = [(p, prec) for p in [*paths, *zoo] for prec in args.precisions.split(",")]
    results = []
    for path, precision in runs:
        name = zoo.get(path)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                r = bench_model(path, precision, args.target, 1 if path in zoo else args.repeats, name)
        except DoesNotFitError as e:  # seeded weights share no tiles: VGG-19 fits in int8 only
            print(f"{name or path.stem:<19}{precision:<6}does not fit: {str(e).split(': ', 1)[-1][:120]}")
            continue
        err = f"{r['max_abs_err']:>10.2e}" if r["finite"] else f"{'overflow':>10}"  # fp16 range exceeded
        before = f"{r['before']:>10}" if r["before"] else f"{'-':>10}"
        change = f"{100 * (r['cycles'] / r['before'] - 1):>+7.1f}%" if r["before"] else f"{'-':>8}"
        print(
            f"{r['model']:<19}{r['precision']:<6}{r['compile_s']:>10.2f}{before}{r['cycles']:>10}{change}"
            f"{r['latency_us']:>9.1f}{r['end_to_end_us']:>9.1f}{r['bound']:>8}{r['binding'][:5]:>6}"
            f"{r['ratio']:>7.1f}{r['sram'] / 1024:>10.1f}{r['instructions']:>7}{r['run_ms']:>9.2f}"
            f"{r['interp_ms']:>10.2f}{r['ort_ms']:>8.3f}{r['run_ms'] / r['ort_ms']:>9.2f}"
            f"{r['ort1_ms']:>9.3f}{r['run_ms'] / r['ort1_ms']:>6.2f}{err}"
            f"{r['run_rss'] / 2**20:>8.1f}{r['run_rss'] / r['image_io']:>10.2f}",
            flush=True,
        )
        results.append(r)
    ratios = [r["run_ms"] / r["ort_ms"] for r in results]
    print(
        "run ms: the execution plan, on one thread (BLAS too); interp ms: the instruction-by-instruction "
        "interpreter (its oracle); ort ms: onnxruntime with its default threads (an intra-op pool of one "
        "per core); ort1 ms: onnxruntime on one thread"
    )
    print(
        "RSS MiB: peak resident memory a first run (building the plan) adds to a process that loaded the "
        "program; /image+io: that over the SRAM image (peak SRAM bytes) plus input and output bytes"
    )
    worst = max(results, key=lambda r: r["run_ms"] / r["ort_ms"])
    print(
        f"plan/ort: geomean {statistics.geometric_mean(ratios):.2f}, max {max(ratios):.2f} "
        f"({worst['model']} {worst['precision']})"
    )
    single = [r["run_ms"] / r["ort1_ms"] for r in results]
    print(
        f"plan/ort1 (both on one thread): geomean {statistics.geometric_mean(single):.2f}, "
        f"max {max(single):.2f}"
    )
    for r in results:
        if r["model"] == "mlp":  # tiny: its run time is the runtime's fixed per-run cost
            overhead = r["run_ms"] - r["ort_ms"]
            print(f"fixed per-run overhead ({r['precision']} MLP, plan - onnxruntime): {overhead:.3f} ms")
    if zoo:
        ablate(seeded_weights(LIGHT / "light_resnet50.onnx"), args.target)
    if args.gpt_layers:
        ablate_transformer(args.target, args.gpt_layers)
    if args.bert_ablation:
        ablate_bert(args.target)
    for r in results:
        us = GROQ_US.get(r["model"])
        if us is not None:
            print(
                f"{r['model'].removeprefix('light_')} {r['precision']}: {r['cycles']:,} cycles = "
                f"{r['latency_us']:,.0f} us, {r['ratio']:.1f}x its hardware bound ({r['binding']}, "
                f"{r['bound']:,} cycles) and {r['latency_us'] / us:.0f}x the {us:g} us Groq's compiler gets "
                "on this chip (int8, ISCA 2020)"
            )
    if not (args.models or args.no_transformers):
        print(
            "\ntransformers (seq 128, batch 1; cosine: one run against onnxruntime fp32; runtime not timed)"
        )
        bench_transformers()


if __name__ == "__main__":
    main()
