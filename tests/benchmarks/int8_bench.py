"""int8 builds of the headline CNNs: `python -m tests.benchmarks.int8_bench [--models resnet50 vgg19]`.

For seeded ResNet-50 v1.5 and VGG-19 (tests/zoo.py; ONNX exports cached under /tmp, VGG-19's is
548 MiB): compile time, cycles, latency, hardware bound, SRAM peak / addressed / constants, and the
cosine similarity and SQNR of the int8 output against fp32 onnxruntime on seeded inputs.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

import lpuc
from lpuc.errors import LpucError
from tests.zoo import resnet50, vgg19

CACHE = Path("/tmp")
MODELS = {"resnet50": (resnet50, "lpuc_bench_resnet50_v15.onnx"), "vgg19": (vgg19, "lpuc_bench_vgg19.onnx")}
SHAPE = (1, 3, 224, 224)


def exported(name: str) -> Path:
    factory, file = MODELS[name]
    path = CACHE / file
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        with torch.no_grad():
            torch.onnx.export(
                factory(),
                (torch.randn(*SHAPE),),
                str(tmp),
                input_names=["x"],
                output_names=["y"],
                opset_version=17,
                dynamo=False,
            )
        tmp.rename(path)
    return path


def bench(name: str, precision: str, samples: int) -> None:
    path = exported(name)
    start = time.perf_counter()
    try:
        program = lpuc.compile(path, precision=precision)
    except LpucError as e:
        print(f"{name:<9} {precision:<5} does not compile: {e}")
        return
    seconds = time.perf_counter() - start
    s = program.summary
    mib = 2**20
    print(
        f"{name:<9} {precision:<5} compile {seconds:6.1f} s  {s['cycles']:>9,} cycles = "
        f"{s['latency_us']:9.1f} us"
        f"  bound {s['lower_bound_cycles']['overall']:,} ({s['bound_ratio']}x)  SRAM peak "
        f"{s['sram_peak_bytes'] / mib:.1f} / addressed {s['sram_used_bytes'] / mib:.1f} / constants "
        f"{s['sram_const_bytes'] / mib:.1f} of {s['sram_capacity_bytes'] / mib:.0f} MiB"
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(7)
    for i in range(samples):
        x = rng.standard_normal(SHAPE).astype(np.float32)
        ref = session.run(None, {"x": x})[0].astype(np.float64).ravel()
        got = program.run({"x": x})["y"].astype(np.float64).ravel()
        cosine = got @ ref / (np.linalg.norm(got) * np.linalg.norm(ref))
        sqnr = 10 * np.log10(np.sum(ref**2) / np.sum((got - ref) ** 2))
        same = "same" if got.argmax() == ref.argmax() else "DIFFERENT"
        print(f"    input {i}: cosine {cosine:.6f}, SQNR {sqnr:.1f} dB, top-1 {same}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--precisions", nargs="*", default=["int8", "fp16"])
    parser.add_argument("--samples", type=int, default=2, help="inputs compared with onnxruntime")
    args = parser.parse_args()
    for name in args.models:
        for precision in args.precisions:
            bench(name, precision, args.samples if precision == "int8" else 0)


if __name__ == "__main__":
    main()
