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
import onnxruntime as ort

import lpuc

ROOT = Path(__file__).resolve().parents[2]


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _feeds(session: ort.InferenceSession, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {i.name: rng.standard_normal([d if isinstance(d, int) else 1 for d in i.shape]).astype(np.float32)
            for i in session.get_inputs()}


def bench_model(path: Path, precision: str, target: str, repeats: int) -> dict:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = _feeds(session)
    expected = session.run(None, feeds)
    start = time.perf_counter()
    program = lpuc.compile(path, target=target, precision=precision)
    compile_s = time.perf_counter() - start
    outputs = program.run(feeds)
    err = max(float(np.max(np.abs(outputs[o.name] - e))) for o, e in zip(session.get_outputs(), expected))
    lpuc_s = _median_seconds(lambda: program.run(feeds), repeats)
    ort_s = _median_seconds(lambda: session.run(None, feeds), max(repeats, 20))
    s = program.summary
    return {
        "model": path.stem, "precision": precision, "compile_s": compile_s, "cycles": s["cycles"],
        "latency_us": s["latency_us"], "bound": s["lower_bound_cycles"]["overall"], "ratio": s["bound_ratio"],
        "sram": s["sram_peak_bytes"], "instructions": s["instructions"], "run_ms": lpuc_s * 1e3,
        "ort_ms": ort_s * 1e3, "max_abs_err": err,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", type=Path, help="ONNX files (default: models/*.onnx)")
    parser.add_argument("--target", default="tsp-v1")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    paths = args.models or sorted((ROOT / "models").glob("*.onnx"))
    header = (f"{'model':<14}{'prec':<6}{'compile s':>10}{'cycles':>10}{'us':>9}{'bound':>9}{'ach/bound':>10}"
              f"{'SRAM KiB':>10}{'instrs':>8}{'run ms':>9}{'ort ms':>9}{'run/ort':>9}{'max err':>10}")
    print(f"target {args.target}; wall times are medians of {args.repeats} runs (onnxruntime: >= 20)")
    print(header)
    print("-" * len(header))
    for path in paths:
        for precision in ("fp16", "fp32"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                r = bench_model(path, precision, args.target, args.repeats)
            print(f"{r['model']:<14}{r['precision']:<6}{r['compile_s']:>10.2f}{r['cycles']:>10}{r['latency_us']:>9.2f}"
                  f"{r['bound']:>9}{r['ratio']:>10.3f}{r['sram'] / 1024:>10.1f}{r['instructions']:>8}"
                  f"{r['run_ms']:>9.2f}{r['ort_ms']:>9.3f}{r['run_ms'] / r['ort_ms']:>9.1f}{r['max_abs_err']:>10.2e}")


if __name__ == "__main__":
    main()
