"""`make bench`: compile and run the bundled models; print schedule quality and runtime speed.

For each model and precision: compile time; simulated cycles and latency at the target clock; the
compiler's lower bound and achieved / bound; SRAM peak; wall time of one run in the reference
runtime and of onnxruntime, measured in this process, and their ratio; max error against
onnxruntime. Wall times are medians of several runs (machines are shared and noisy).
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

import lpuc

ROOT = Path(__file__).resolve().parents[2]
LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
# Published results of the same chip with Groq's compiler (ISCA 2020): the marks to beat.
GROQ_US = {"light_resnet50": 49.0}


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
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


def bench_model(path: Path, precision: str, target: str, repeats: int) -> dict:
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
    s = program.summary
    return {
        "model": path.stem,
        "precision": precision,
        "compile_s": compile_s,
        "cycles": s["cycles"],
        "latency_us": s["latency_us"],
        "bound": s["lower_bound_cycles"]["overall"],
        "ratio": s["bound_ratio"],
        "mxm_bound": s["lower_bound_cycles"]["mxm"],
        "finite": finite,
        "sram": s["sram_peak_bytes"],
        "instructions": s["instructions"],
        "run_ms": lpuc_s * 1e3,
        "interp_ms": interp_s * 1e3,
        "ort_ms": ort_s * 1e3,
        "max_abs_err": err,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", type=Path, help="ONNX files (default: models/*.onnx)")
    parser.add_argument("--target", default="tsp-v1")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-zoo", action="store_true", help="skip onnx's light zoo models")
    args = parser.parse_args()
    paths = args.models or sorted((ROOT / "models").glob("*.onnx"))
    zoo = [] if args.models or args.no_zoo else sorted(LIGHT.glob("light_*.onnx"))
    header = (
        f"{'model':<19}{'prec':<6}{'compile s':>10}{'cycles':>10}{'us':>9}{'bound':>9}{'ach/bnd':>8}"
        f"{'mxm bnd':>9}{'ach/mxm':>8}{'SRAM KiB':>10}{'instrs':>7}{'run ms':>9}{'interp ms':>10}"
        f"{'ort ms':>8}{'plan/ort':>9}"
        f"{'max err':>10}"
    )
    print(
        f"target {args.target}; wall times are medians of {args.repeats} runs "
        "(onnxruntime: >= 20; zoo: 1 run, after a first run that builds the plan)"
    )
    print(
        "bound: the compiler's lower bound for the program (max of MXM/VXM/SXM/MEM/host/critical path); "
        "mxm bnd: MACs / peak MXM throughput"
    )
    print(header)
    print("-" * len(header))
    runs = [(p, prec) for p in paths + zoo for prec in ("fp16", "fp32")]
    results = []
    for path, precision in runs:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = bench_model(path, precision, args.target, 1 if path in zoo else args.repeats)
        err = f"{r['max_abs_err']:>10.2e}" if r["finite"] else f"{'overflow':>10}"  # fp16 range exceeded
        print(
            f"{r['model']:<19}{r['precision']:<6}{r['compile_s']:>10.2f}{r['cycles']:>10}{r['latency_us']:>9.2f}"
            f"{r['bound']:>9}{r['ratio']:>8.2f}{r['mxm_bound']:>9}"
            f"{r['cycles'] / max(1, r['mxm_bound']):>8.1f}"
            f"{r['sram'] / 1024:>10.1f}{r['instructions']:>7}{r['run_ms']:>9.2f}{r['interp_ms']:>10.2f}"
            f"{r['ort_ms']:>8.3f}{r['run_ms'] / r['ort_ms']:>9.2f}{err}"
        )
        results.append(r)
    ratios = [r["run_ms"] / r["ort_ms"] for r in results]
    print("run ms: the execution plan; interp ms: the instruction-by-instruction interpreter (its oracle)")
    print(f"plan/ort: geomean {statistics.geometric_mean(ratios):.2f}, max {max(ratios):.2f}")
    for r in results:
        if r["model"] == "mlp":  # tiny: its run time is the runtime's fixed per-run cost
            overhead = r["run_ms"] - r["ort_ms"]
            print(f"fixed per-run overhead ({r['precision']} MLP, plan - onnxruntime): {overhead:.3f} ms")
    for name, us in GROQ_US.items():
        print(
            f"reference: Groq's compiler on this chip runs {name.removeprefix('light_')} (int8) "
            f"in {us:g} us (ISCA 2020)"
        )


if __name__ == "__main__":
    main()
