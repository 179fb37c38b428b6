"""Micro-benchmark of the reference runtime's hot kernels on the shapes the zoo CNNs run them at.

Compiles onnx's light squeezenet, shufflenet, resnet50 and inception_v1, collects every kernel
instruction of a hot op (MaxPool, AveragePool, lpuc Im2Col, Transpose, Conv) with its input
shapes and attributes, and times each distinct one (median of --repeats runs; the machine is
shared and noisy). A kernel may return a view; the runtime then copies it when storing it to
SRAM, so the timing includes making the output contiguous.

    python -m tests.benchmarks.kernel_bench [--repeats 7] [--save before.json] [--compare before.json]

--save writes {case: median microseconds}; --compare prints a saved run beside this one.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

import lpuc
from lpuc.fileio import atomic_write
from lpuc.kernels.registry import KernelContext, run_kernel
from lpuc.runtime.isa import decoded_attrs
from tests.benchmarks.light_zoo import LIGHT

MODELS = ("squeezenet", "shufflenet", "resnet50", "inception_v1")
HOT = ("MaxPool", "AveragePool", "Im2Col", "Transpose", "Conv")


def collect_cases(models: tuple[str, ...] = MODELS) -> dict[str, Counter]:
    """{model: Counter of case keys}; a key is JSON [op, domain, input shapes, dtypes, attrs]."""
    found = {}
    for model in models:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = lpuc.compile(LIGHT / f"light_{model}.onnx", target="tsp-v1", precision="fp32")
        cache: dict[int, dict] = {}
        counts: Counter = Counter()
        for ins in program.instructions:
            if not ins.opcode.endswith(".kernel"):
                continue
            attrs = decoded_attrs(ins, cache)
            if attrs["kernel"] not in HOT:
                continue
            inputs = attrs["inputs"]
            key = [
                attrs["kernel"],
                attrs["domain"],
                [None if d is None else d["shape"] for d in inputs],
                [None if d is None else d["dtype"] for d in inputs],
                attrs["attrs"],
            ]
            counts[json.dumps(key, sort_keys=True)] += 1
        found[model] = counts
    return found


def _inputs(shapes: list, dtypes: list, rng: np.random.Generator) -> list[np.ndarray | None]:
    arrays = []
    for shape, dtype in zip(shapes, dtypes, strict=True):
        if shape is None:
            arrays.append(None)
            continue
        a = rng.standard_normal(shape).astype(dtype)
        a.flags.writeable = False  # kernels get read-only SRAM views in the runtime
        arrays.append(a)
    return arrays


def time_case(key: str, repeats: int) -> float:
    """Median seconds of one kernel call plus making its outputs contiguous."""
    op, domain, shapes, dtypes, attrs = json.loads(key)
    ctx = KernelContext(op, attrs, 0, 1, domain)
    inputs = _inputs(shapes, dtypes, np.random.default_rng(0))
    times = []
    for _ in range(repeats + 1):  # the first run warms caches and is dropped
        start = time.perf_counter()
        for out in run_kernel(ctx, inputs):
            np.ascontiguousarray(out)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def _label(key: str) -> str:
    op, domain, shapes, _, attrs = json.loads(key)
    keys = ("kernel_shape", "strides", "pads", "group", "perm", "channels_last")
    window = {k: attrs[k] for k in keys if k in attrs}
    return f"{domain + ':' if domain else ''}{op} {shapes[0]} {json.dumps(window, separators=(',', ':'))}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=MODELS)
    parser.add_argument("--save", type=Path, help="write {case: median us} as JSON")
    parser.add_argument("--compare", type=Path, help="a --save file to print beside this run")
    parser.add_argument("--cases", action="store_true", help="print every distinct case")
    args = parser.parse_args()
    before = json.loads(args.compare.read_text()) if args.compare else {}
    found = collect_cases(tuple(args.models))
    keys = sorted({k for counts in found.values() for k in counts})
    medians = {k: time_case(k, args.repeats) * 1e6 for k in keys}
    if args.save:
        atomic_write(args.save, json.dumps(medians, indent=1, sort_keys=True) + "\n")
    if args.cases:
        print(f"{'us':>10}{'before':>10}{'x':>7}  case")
        for k in keys:
            old = before.get(k)
            ratio = f"{old / medians[k]:>7.2f}" if old else f"{'-':>7}"
            print(f"{medians[k]:>10.1f}{old or float('nan'):>10.1f}{ratio}  {_label(k)}")
        print()
    print(f"per model and op: calls x median, ms (medians of {args.repeats} runs)")
    print(f"{'model':<14}{'op':<13}{'calls':>6}{'ms':>9}{'before':>9}{'x':>7}")
    for model, counts in found.items():
        for op in HOT:
            mine = [(k, n) for k, n in counts.items() if json.loads(k)[0] == op]
            if not mine:
                continue
            now = sum(medians[k] * n for k, n in mine) / 1e3
            old = sum(before[k] * n for k, n in mine) / 1e3 if all(k in before for k, _ in mine) else None
            calls = sum(n for _, n in mine)
            tail = f"{old:>9.2f}{old / now:>7.2f}" if old else f"{'-':>9}{'-':>7}"
            print(f"{model:<14}{op:<13}{calls:>6}{now:>9.2f}{tail}")


if __name__ == "__main__":
    main()
