"""The headline CNNs in int8 and fp16: `python -m tests.benchmarks.int8_bench [--models resnet50 vgg19]`.

For seeded ResNet-50 v1.5 and VGG-19 (tests/zoo.py; ONNX exports cached under /tmp, VGG-19's is
548 MiB): compile time, cycles, latency against Groq's published 49 us (ResNet-50, int8), hardware
bound and bound_ratio, SRAM peak / addressed / constants, and the cosine similarity and SQNR of the
int8 output against fp32 onnxruntime on seeded inputs. Then ResNet-50's fp16 cycles with each
schedule-shaping pass and lowering strategy disabled in turn, and its int8 cycles without each
int8-shaping pass (INT8_ABLATIONS; --no-ablation skips both), and the MXM
utilization of a [2304x4096]x[4096x320] matmul in fp16 and int8.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

import lpuc
from lpuc.errors import LpucError
from lpuc.lowering import STRATEGIES
from lpuc.report import bound_by
from tests.onnx_builders import single_op_model
from tests.zoo import resnet50, vgg19

CACHE = Path("/tmp")
MODELS = {"resnet50": (resnet50, "lpuc_bench_resnet50_v15.onnx"), "vgg19": (vgg19, "lpuc_bench_vgg19.onnx")}
SHAPE = (1, 3, 224, 224)
GROQ_US = {"resnet50": 49.0}  # Groq's compiler on the same chip, int8, batch 1 (ISCA 2020)
# What shapes a CNN's schedule: the layout passes and every lowering strategy.
ABLATIONS = ("sink_transposes", "unit_transposes", "sink_reshapes", "sink_products", *STRATEGIES)
# What shapes int8 schedules most: the requantization maps' ALU ops, the fp16 residual sums, the
# packed stem's split pooling (its unpacking copied a pool slab's tiles at a time), the products
# moved to the maps they fuse into, the int8 residuals, the biases folded into the accumulators,
# and the 3x3 convolutions' kernel rows accumulated on the MXM.
INT8_ABLATIONS = (
    "fold_requantize",
    "store_int8_floats_fp16",
    "split_packed_pool",
    "pool_ordered_pack",
    "pooled_unpack",
    "sink_products",
    "unit_transposes",
    "quantize_residuals",
    "distribute_scales",
    "unsigned_activations",
    "fold_bias_columns",
    "row_taps",
    "tap_tails",
)


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
    groq = f" ({s['latency_us'] / GROQ_US[name]:.1f}x Groq's {GROQ_US[name]:g} us)" if name in GROQ_US else ""
    print(
        f"{name:<9} {precision:<5} compile {seconds:6.1f} s  {s['cycles']:>9,} cycles = "
        f"{s['latency_us']:9.1f} us{groq}"
        f"  bound {s['lower_bound_cycles']['overall']:,} by {bound_by(s)} (bound_ratio {s['bound_ratio']}x; "
        f"MXM bound {s['lower_bound_cycles']['mxm']:,})  SRAM peak "
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


def ablate(name: str, precision: str = "fp16", names: tuple[str, ...] = ABLATIONS) -> None:
    """Cycles with each schedule-shaping pass or lowering strategy in `names` disabled in turn."""
    path = exported(name)
    full = lpuc.compile(path, precision=precision).summary["cycles"]
    print(f"{name} {precision}: {full:,} cycles with everything; disabled in turn:")
    for strategy in names:
        cycles = lpuc.compile(path, precision=precision, disable_passes=(strategy,)).summary["cycles"]
        print(f"    without {strategy:<18} {cycles:>9,} cycles ({cycles / full:.2f}x)")


def gemm_utilization() -> None:
    """A [2304x4096]x[4096x320] matmul: MXM bound / cycles, in fp16 and int8."""
    path = CACHE / "lpuc_bench_gemm_2304x4096x320.onnx"
    if not path.exists():
        w = np.random.default_rng(0).standard_normal((4096, 320)).astype(np.float32)
        onnx.save(
            single_op_model("MatMul", [("x", [2304, 4096])], [("y", [2304, 320])], initializers={"w": w}),
            path,
        )
    for precision in ("fp16", "int8"):
        s = lpuc.compile(path, precision=precision).summary
        mxm = s["lower_bound_cycles"]["mxm"]
        print(
            f"gemm [2304x4096]x[4096x320] {precision}: {s['cycles']:,} cycles, MXM bound {mxm:,}: "
            f"{mxm / s['cycles']:.1%} MXM utilization"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--precisions", nargs="*", default=["int8", "fp16"])
    parser.add_argument("--samples", type=int, default=2, help="inputs compared with onnxruntime")
    parser.add_argument("--no-ablation", action="store_true", help="skip ResNet-50's ablation")
    args = parser.parse_args()
    for name in args.models:
        for precision in args.precisions:
            bench(name, precision, args.samples if precision == "int8" else 0)
    if "resnet50" in args.models and not args.no_ablation:
        ablate("resnet50")
        ablate("resnet50", "int8", INT8_ABLATIONS)
    gemm_utilization()


if __name__ == "__main__":
    main()
