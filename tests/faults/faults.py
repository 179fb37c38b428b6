"""Faults the fast test suite must catch, as data: each is one exact text replacement in one file.

`old` must occur exactly once in `path` (tests/faults/run.py refuses the fault loudly otherwise), so
a snippet that goes stale when the code changes is noticed instead of silently testing nothing.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Fault:
    name: str
    path: str  # relative to the repository root
    old: str
    new: str
    why: str  # why the suite must catch it


FAULTS: tuple[Fault, ...] = (
    Fault(
        "mxm-one-cycle-short",
        "lpuc/cost.py",
        'return iw + n + target.delay("MXM") + read_lat + write_lat + stagger',
        'return iw + n - 1 + target.delay("MXM") + read_lat + write_lat + stagger',
        "an MXM matmul shorter than the cost model: the validator's recomputed durations and the"
        " pinned golden cycle counts must disagree",
    ),
    Fault(
        "transport-zero",
        "lpuc/cost.py",
        "read_lat = target.mem.read_delay + t_in if reads else 0\n"
        "    write_lat = target.mem.write_delay + t_out if writes else 0\n",
        "read_lat = target.mem.read_delay if reads else 0\n"
        "    write_lat = target.mem.write_delay if writes else 0\n",
        "streams crossing slices in zero cycles: the pinned golden cycle counts must change",
    ),
    Fault(
        "mxm-input-not-rounded",
        "runtime/plan.py",
        '    if precision == "fp16" and x.dtype == np.float32:\n        return round_fp16(x, quiet=True)\n',
        '    if precision == "fp16" and x.dtype == np.float32:\n        return x.copy()\n',
        "the fp16 path (the default executor) must round MXM operands; tests/test_fp16_reference.py"
        " feeds unrounded weights",
    ),
    Fault(
        "mxm-input-not-rounded-interpreter",
        "runtime/isa.py",
        "return x.astype(np.float16).astype(np.float32)",
        "return x.astype(np.float32)",
        "the instruction-by-instruction interpreter (the plan's oracle) must round MXM operands too",
    ),
    Fault(
        "codec-drops-acc",
        "backends/lpu.py",
        "a(dict(i.attrs)),",
        'a({k: v for k, v in i.attrs.items() if k != "acc"}),',
        "a decoded artifact must accumulate K chunks like the compiled program (test_codec_roundtrip)",
    ),
    Fault(
        "softmax-axis1-as-rows",
        "lpuc/lowering/stream.py",
        'return rank >= 1 and normalize_axis(int(node.attr("axis", default)), rank) == rank - 1',
        'axis = normalize_axis(int(node.attr("axis", default)), rank)\n'
        '    return rank >= 1 and (axis == rank - 1 or (node.op == "Softmax" and rank == 3 and axis == 1))',
        "a 3-D Softmax over axis 1 is not a last-axis row op (tests/test_rowwise_axes.py)",
    ),
    Fault(
        "batchnorm-fold-eps0",
        "passes/fold_batchnorm.py",
        'scale = gamma / np.sqrt(var + float(bn.attr("epsilon", 1e-5)))',
        "scale = gamma / np.sqrt(var)",
        "Conv+BatchNorm folding must honour epsilon (a test with epsilon 0.5 against onnxruntime)",
    ),
    Fault(
        "batchnorm-kernel-eps0",
        "lpuc/kernels/normalization.py",
        '    epsilon = ctx.attr("epsilon", 1e-5)\n    work = x.astype(',
        "    epsilon = 0.0\n    work = x.astype(",
        "the BatchNormalization kernel must honour epsilon (a test with epsilon 0.5 against onnxruntime)",
    ),
)
