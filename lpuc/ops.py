"""Where each operator runs on the chip and what it costs: the op table, as data.

Every op lpuc accepts falls in one class:

- ELEMENTWISE: a VXM map over tiles (numpy broadcasting). The value is the number of ALU ops one
  element needs (a transcendental is a short polynomial on the 32-bit ALUs); fused chains of
  elementwise ops occupy that many ALUs in a pipeline.
- MATMUL: tiled onto MXM planes (weights loaded with LW, activations streamed).
- ALIAS: a view change that keeps the tensor's [rows, lanes] layout: no instruction at all.
- STREAM ops: a whole-tensor (or row-slab) kernel on a VXM or SXM unit, costed as `passes` streams
  of every input and output vector through the unit.
- FOLD: computed by the compiler (shapes and constants); on the host if its inputs are not constant.
- HOST: no sensible mapping onto MXM/VXM/SXM/MEM: runs on the host, behind PCIe transfers.

Ops may also be rewritten away by passes before lowering (Gemm -> MatMul + Add, Conv -> Im2Col +
MatMul, LSTM/GRU/RNN -> matmuls and elementwise ops per step); the table says so in `via`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from lpuc.ir.graph import LPUC_DOMAIN, Graph, Node

# Vector ALU ops of a VXM kernel, from (node, graph, input vectors, output vectors, lanes per vector);
# see lpuc.cost.
AluRule = Callable[[Node, Graph, int, int, int], int]


@dataclass(frozen=True)
class Placement:
    unit: str  # "VXM" | "SXM" | "MXM" | "ALIAS" | "HOST"
    passes: float = 1.0  # streams of the data through the unit (stream ops) or ALU ops (elementwise)
    rowwise: bool = False  # output row slab depends only on the same input row slab (axis = last)
    via: str = ""  # rewritten by this pass before lowering
    cost: Callable[[Node, Graph], float] | None = None  # passes that depend on the node's attributes
    # Vector ALU ops when they are not one per streamed vector (pooling, interpolation, reductions).
    alu_ops: AluRule | None = None
    # Channels-last sliding-window op: each result row slab reads the input rows its windows touch.
    windowed: bool = False
    # When set: the kernel streams each input vector this many times and each output vector once
    # (a normalization reads a row for its statistics, then again to normalize it), not `passes` x all.
    input_reads: int = 0

    def passes_for(self, node: Node, graph: Graph) -> float:
        return self.cost(node, graph) if self.cost is not None else self.passes


def _window_alu_ops(node: Node, graph: Graph, in_vectors: int, out_vectors: int, lanes: int) -> int:
    """Sliding-window pooling: each output vector combines one shifted input vector per window tap
    (LpPool: a power and an add per tap)."""
    shape = node.attr("kernel_shape") or graph.values[node.inputs[0]].shape[2:]
    per_tap = 2 if node.op == "LpPool" else 1
    return int(math.prod(shape)) * per_tap * out_vectors


def _depthwise_alu_ops(node: Node, graph: Graph, in_vectors: int, out_vectors: int, lanes: int) -> int:
    """A channels-last depthwise convolution: per output vector, a multiply and an add per window
    tap (each tap's weights are one vector over the channels), and one add of the bias."""
    taps = int(math.prod(node.attr("kernel_shape")))
    bias = 1 if len(node.inputs) > 2 and node.inputs[2] else 0
    return (2 * taps + bias) * out_vectors


def _global_pool_alu_ops(node: Node, graph: Graph, in_vectors: int, out_vectors: int, lanes: int) -> int:
    """Global pooling: every input vector is added into its channel's accumulator once, then each
    output reduces its lanes in a log-depth tree."""
    width = int(graph.values[node.inputs[0]].shape[-1])
    per_tap = 2 if node.op == "GlobalLpPool" else 1
    return per_tap * in_vectors + out_vectors * math.ceil(math.log2(max(2, width)))


def _vxm_conv_alu_ops(node: Node, graph: Graph, in_vectors: int, out_vectors: int, lanes: int) -> int:
    """A convolution left on the VXM (depthwise-like): a multiply and an add per tap and input
    channel of its group, for every output vector."""
    w = graph.values[node.inputs[1]].shape
    return 2 * int(math.prod(w[2:])) * int(w[1]) * out_vectors


def _per_output(ops: Callable[[Node], int]) -> AluRule:
    """A fixed number of ALU ops per output element (interpolating ops), over the output vectors."""
    return lambda node, graph, in_vectors, out_vectors, lanes: ops(node) * out_vectors


def _resize_ops(node: Node) -> int:
    """Per output value: nearest copies; linear blends 2 taps per spatial axis, cubic 4 (a multiply and
    an add per tap), plus the coordinate transform."""
    mode = node.text_attr("mode", "nearest")
    taps = {"nearest": 1, "linear": 2, "cubic": 4}.get(mode, 4)
    return 1 if taps == 1 else 2 * taps**2 + 4


def _grid_sample_ops(node: Node) -> int:
    mode = node.text_attr("mode", "linear")
    taps = {"nearest": 1, "linear": 4, "bilinear": 4, "cubic": 16, "bicubic": 16}.get(mode, 16)
    return 2 * taps + 6  # 6: unnormalizing the grid coordinates


def _roi_align_ops(node: Node) -> int:
    ratio = int(node.attr("sampling_ratio", 0)) or 2  # adaptive ratio: assume 2x2 points per bin
    return ratio * ratio * (2 * 4 + 4) + 1  # bilinear taps + coordinates per point, then the average


def _normalized_axes(node: Node, graph: Graph) -> tuple[int, ...]:
    """The axes a softmax or normalization reduces over: from `axis` to the end (LayerNorm, RMSNorm,
    softmax before opset 13, which flattens there), or `axis` alone (softmax from opset 13)."""
    from lpuc.kernels._common import normalize_axis

    rank = len(graph.values[node.inputs[0]].shape)
    old_softmax = node.op in ("Softmax", "LogSoftmax") and 0 < node.opset < 13
    axis = normalize_axis(int(node.attr("axis", 1 if old_softmax else -1)), rank)
    is_norm = node.op in ("LayerNormalization", "RMSNormalization")
    return tuple(range(axis, rank)) if is_norm or old_softmax else (axis,)


def _reduce_axes(node: Node, graph: Graph) -> tuple[int, ...]:
    from lpuc.kernels.reduce import reduction_axes
    from lpuc.kernels.registry import KernelContext

    rank = len(graph.values[node.inputs[0]].shape)
    axes = node.inputs[1] if len(node.inputs) > 1 and node.inputs[1] else ""
    const = graph.values[axes].const if axes and graph.is_const(axes) else None
    return reduction_axes(KernelContext(node.op, node.attrs, node.opset), rank, const)


def _grouped_alu_ops(
    axes: Callable[[Node, Graph], tuple[int, ...]],
    per_vector: Callable[[Node], int],
    trees: int,
    per_group: int,
    per_input: bool = False,
) -> AluRule:
    """Vector ALU ops of a kernel over groups of elements reduced together (a row, for the last axis):
    `per_vector` ops on every vector written (every vector read, for a reduction: `per_input`),
    `trees` log-depth lane-reduction trees per group when the group spans lanes (a tree of
    ceil(log2(lanes it spans)) shift-and-combine steps; vectors of one group combine in the
    per-vector ops), and `per_group` ops on each group's statistics (mean, rsqrt, reciprocal).

    Groups of one vector at most half as wide as it (a 128-token softmax row on 320 lanes) share
    their trees: `pack` rows, each in a segment of the next power of two lanes, are merged into one
    vector (a select per extra row and tree: the shift that moves a row to its segment is the same
    lane shift a tree step makes), and each tree step and statistics op then serves them all."""

    def rule(node: Node, graph: Graph, in_vectors: int, out_vectors: int, lanes: int) -> int:
        shape = graph.values[node.inputs[0]].shape
        reduced, rank = axes(node, graph), len(shape)
        if rank == 0 or not reduced:
            return max(1, per_vector(node) * (in_vectors if per_input else out_vectors))
        width = int(shape[-1])
        spans_lanes = rank - 1 in reduced
        vectors_per_group = (math.ceil(width / lanes) if spans_lanes else 1) * math.prod(
            int(shape[a]) for a in reduced if a != rank - 1
        )
        tree = math.ceil(math.log2(min(width, lanes))) if spans_lanes and width > 1 else 0
        if per_input:  # a reduction (never cut into slabs): every vector of its data input
            streamed = math.prod(int(d) for d in shape[:-1]) * math.ceil(width / lanes)
        else:
            streamed = out_vectors
        # Groups along the lanes: one tree each; along rows only: their statistics fill the lanes of
        # each result vector side by side.
        groups = (
            math.ceil(streamed / max(1, vectors_per_group)) if spans_lanes or not per_input else out_vectors
        )
        pack = lanes // 2**tree if spans_lanes and vectors_per_group == 1 and tree else 1
        if pack > 1:
            packed = math.ceil(groups / pack)
            merges = (groups - packed) * trees  # a select per row merged into another's vector, per tree
            return max(1, per_vector(node) * streamed + packed * (trees * tree + per_group) + merges)
        return max(1, per_vector(node) * streamed + groups * (trees * tree + per_group))

    return rule


def _has_input(index: int) -> Callable[[Node], int]:
    return lambda node: int(len(node.inputs) > index and bool(node.inputs[index]))


# ALU ops per element (VXM has TanH, Exp, RSqrt natively; the rest are built from them).
ELEMENTWISE: dict[str, int] = {
    "Abs": 1,
    "Add": 1,
    "And": 1,
    "BitShift": 1,
    "BitwiseAnd": 1,
    "BitwiseNot": 1,
    "BitwiseOr": 1,
    "BitwiseXor": 1,
    "Cast": 1,
    "Ceil": 1,
    "Clip": 2,
    "Div": 2,
    "Equal": 1,
    "Floor": 1,
    "Greater": 1,
    "GreaterOrEqual": 1,
    "Identity": 1,
    "IsInf": 1,
    "IsNaN": 1,
    "LeakyRelu": 2,
    "Less": 1,
    "LessOrEqual": 1,
    "Max": 1,
    "Min": 1,
    "Mul": 1,
    "Neg": 1,
    "Not": 1,
    "Or": 1,
    "PRelu": 2,
    "Reciprocal": 2,
    "Relu": 1,
    "Round": 1,
    "Sign": 1,
    "Sub": 1,
    "Where": 1,
    "Xor": 1,
    "Mean": 2,
    "Sum": 1,
    "Binarizer": 1,
    "ThresholdedRelu": 2,
    "Shrink": 3,
    "HardSigmoid": 3,
    "HardSwish": 4,
    "Exp": 1,
    "Tanh": 1,
    "Sqrt": 2,
    "Sigmoid": 3,
    "Softsign": 3,
    "Swish": 4,
    "Elu": 4,
    "Selu": 5,
    "Celu": 5,
    "Log": 4,
    "Softplus": 5,
    "Mish": 7,
    "Erf": 8,
    "Gelu": 10,
    "Pow": 6,
    "Mod": 3,
    "Sin": 8,
    "Cos": 8,
    "Tan": 10,
    "Asin": 10,
    "Acos": 10,
    "Atan": 10,
    "Sinh": 4,
    "Cosh": 4,
    "Asinh": 6,
    "Acosh": 6,
    "Atanh": 6,
}
# Elementwise ops the passes introduce. SaturatingCast (float -> integer, rounding half to even and
# saturating to the type's range) is the VXM's one-op type conversion: what Round + Clip + Cast do.
LPUC_ELEMENTWISE: dict[str, int] = {"SaturatingCast": 1}
# Variadic elementwise ops (Sum, Max, ...) cost one ALU op per extra operand.
VARIADIC = frozenset({"Sum", "Mean", "Max", "Min"})


def expression_alu_ops(steps: list[dict]) -> int:
    """ALU ops per element of a fused elementwise expression (steps as lpuc.passes.fuse_elementwise
    records them)."""
    total = 0
    for s in steps:
        table = LPUC_ELEMENTWISE if s.get("domain") == LPUC_DOMAIN else ELEMENTWISE
        ops = table.get(s["op"], 1)
        if s["op"] in VARIADIC:
            ops *= max(1, len(s["args"]) - 1)
        total += ops
    return max(1, total)


_TABLE: dict[tuple[str, str], Placement] = {}


def _add(
    unit: str,
    ops: str,
    passes: float = 1.0,
    rowwise: bool = False,
    via: str = "",
    domain: str = "",
    cost: Callable[[Node, Graph], float] | None = None,
    alu_ops: AluRule | None = None,
    windowed: bool = False,
    input_reads: int = 0,
) -> None:
    for op in ops.split():
        _TABLE[(domain, op)] = Placement(unit, passes, rowwise, via, cost, alu_ops, windowed, input_reads)


for _op, _alu in ELEMENTWISE.items():
    _add("VXM", _op, passes=_alu, domain="ai.onnx.ml" if _op == "Binarizer" else "")
for _op, _alu in LPUC_ELEMENTWISE.items():
    _add("VXM", _op, passes=_alu, domain=LPUC_DOMAIN)
_add("VXM", "Fused", domain=LPUC_DOMAIN)
_add("VXM", "CastLike", passes=1, via="canonicalize_ops")

_add("MXM", "MatMul")
# A MatMul reading attention heads from lanes, or writing them merged (passes/address_heads).
_add("MXM", "HeadMatMul", domain=LPUC_DOMAIN)
# int8 x int8 -> int32 on the MXM's int8 mode: what quantize_int8 and lower_quantized emit (no zero
# points: they fold those into the requantization). One with zero points left runs on the host.
_add("MXM", "MatMulInteger")
_add("MXM", "ConvInteger QLinearConv QLinearMatMul", via="lower_quantized")
_add("MXM", "Gemm", via="lower_gemm")
# Dense convolutions become Im2Col + MatMul (lower_conv); depthwise-like ones stay on the VXM.
_add("VXM", "Conv", via="lower_conv", alu_ops=_vxm_conv_alu_ops)
_add("MXM", "ConvTranspose", via="lower_conv")
_add("MXM", "LSTM GRU RNN", via="decompose_rnn")
_add("MXM", "Einsum", via="lower_einsum")
_add("MXM", "Attention", via="decompose_attention")

_add("ALIAS", "Reshape Flatten Squeeze Unsqueeze")
# Inference Dropout is removed by eliminate_identity; what remains (training mode, or a mask that
# is used) draws random numbers on the VXM.
_add("VXM", "Dropout", passes=2)

# Evaluated by the compiler: their inputs are constants once shapes are static. Left with runtime
# inputs (a Range whose limits are computed), they run on the host.
_add("FOLD", "Constant Shape Size ConstantOfShape Range")

# Row-wise reductions and normalizations along the last axis: a log-depth lane reduction tree
# (SXM shifts feeding VXM adds) plus the elementwise work.
# Softmax and the norms read their input more than once: statistics passes, then a normalizing pass.
# They hold as many ALUs as their arithmetic needs (lpuc.cost.vxm_alus), counted per vector / per row:
# - Softmax, three reads: the max (1), the sum of exp(x - max) (sub, exp, add: 3), then
#   exp(x - max) * 1/sum (sub, exp, mul: 3); per row a max tree, a sum tree and the reciprocal (2).
#   LogSoftmax: the last pass is x - max - log(sum) (sub, sub: 2); per row a log (4).
# - LayerNorm, two reads: sums of x and x * x (add, mul, add), then (x - mean) * rstd * scale
#   [+ bias] (sub, mul, mul [, add]); per row two trees, mean, variance (3), + eps and rsqrt.
#   RMSNorm: a sum of squares (mul, add), then x * rstd * scale (mul, mul); per row one tree, / n,
#   + eps, rsqrt.
_SOFTMAX_ALU = _grouped_alu_ops(_normalized_axes, lambda node: 7, trees=2, per_group=2)
_LOG_SOFTMAX_ALU = _grouped_alu_ops(_normalized_axes, lambda node: 6, trees=2, per_group=4)
_LAYER_NORM_ALU = _grouped_alu_ops(_normalized_axes, lambda n: 6 + _has_input(2)(n), trees=2, per_group=6)
_RMS_NORM_ALU = _grouped_alu_ops(_normalized_axes, lambda node: 4, trees=1, per_group=3)
_add("VXM", "Softmax", rowwise=True, alu_ops=_SOFTMAX_ALU, input_reads=3)
# Softmax of an elementwise prologue (fuse_softmax): the prologue's ops are recomputed in each read,
# and so is each causal mask it generates instead of reading (attr triangles): a row counter step and
# a compare of the lanes' column index against it, two ops.
_CAUSAL_MASK_OPS = 2


def _fused_softmax_per_vector(node: Node) -> int:
    prologue = expression_alu_ops(node.attr("expr")) + _CAUSAL_MASK_OPS * len(node.attr("triangles") or {})
    return 7 + 3 * prologue


_FUSED_SOFTMAX_ALU = _grouped_alu_ops(_normalized_axes, _fused_softmax_per_vector, trees=2, per_group=2)
_add("VXM", "FusedSoftmax", rowwise=True, domain=LPUC_DOMAIN, alu_ops=_FUSED_SOFTMAX_ALU, input_reads=3)
_add("VXM", "LogSoftmax", rowwise=True, alu_ops=_LOG_SOFTMAX_ALU, input_reads=3)


def _segmented_alu(node: Node, graph: Graph, in_vectors: int, out_vectors: int, lanes: int) -> int:
    """Softmax over runs of `segment` lanes of each row (passes/pair_heads: two heads' score rows
    side by side, each run at a power-of-two lane offset): Softmax's 7 ops per vector, and per vector
    the max and sum trees (log2(segment) steps each, the shift-and-combine steps of a packed tree:
    each serves every run in the vector) and the 2 statistics ops. The runs arrive side by side, so
    no select merges them into a vector (the packed Softmax's extra op per row and tree)."""
    segment = int(node.attr("segment"))
    width = int(graph.values[node.inputs[0]].shape[-1])
    tree = math.ceil(math.log2(segment)) if segment > 1 else 0
    # (a row over several vectors: every run's trees and statistics apart, as if one run a vector)
    runs = 1 if width <= lanes else width // segment
    return max(1, 7 * out_vectors + out_vectors * (2 * tree + 2) * runs)


_add("VXM", "SegmentedSoftmax", rowwise=True, domain=LPUC_DOMAIN, alu_ops=_segmented_alu, input_reads=3)
_add("VXM", "Hardmax", passes=3, rowwise=True)
_add("VXM", "LayerNormalization", rowwise=True, alu_ops=_LAYER_NORM_ALU, input_reads=2)
_add("VXM", "RMSNormalization", rowwise=True, alu_ops=_RMS_NORM_ALU, input_reads=2)
_add("VXM", "LpNormalization", passes=3, rowwise=True)
# Reductions stream their input once, combining each vector into its group's accumulator (abs or
# square first for L1 / L2 / SumSquare), then a lane tree per group when the last axis is reduced,
# and per group the mean's 1 / n, L2's sqrt (2) or LogSum's log (4).
for _op, (_per_vector, _per_group) in {
    "ReduceSum": (1, 0),
    "ReduceMax": (1, 0),
    "ReduceMin": (1, 0),
    "ReduceProd": (1, 0),
    "ReduceMean": (1, 1),
    "ReduceL1": (2, 0),
    "ReduceSumSquare": (2, 0),
    "ReduceL2": (2, 2),
    "ReduceLogSum": (1, 4),
}.items():
    _rule = _grouped_alu_ops(_reduce_axes, lambda node, k=_per_vector: k, 1, _per_group, per_input=True)
    _add("VXM", _op, alu_ops=_rule, input_reads=1)
_add("VXM", "ReduceLogSumExp ArgMax ArgMin", passes=3)
_add("VXM", "CumSum CumProd", passes=2)
_add("VXM", "TopK", passes=8)
_add("VXM", "BatchNormalization", passes=2, via="fold_batchnorm")
_add("VXM", "InstanceNormalization GroupNormalization MeanVarianceNormalization LRN", passes=5)
_add("VXM", "MaxPool AveragePool LpPool", alu_ops=_window_alu_ops)
_add("VXM", "GlobalAveragePool GlobalMaxPool GlobalLpPool", alu_ops=_global_pool_alu_ops)
# Channels-last pooling (sink_transposes): channels on lanes, so a global pool only adds vectors.
_add("VXM", "MaxPool AveragePool", domain=LPUC_DOMAIN, alu_ops=_window_alu_ops, windowed=True)
_add("VXM", "DepthwiseConv", domain=LPUC_DOMAIN, alu_ops=_depthwise_alu_ops, windowed=True)
_add(
    "VXM",
    "GlobalAveragePool GlobalMaxPool",
    domain=LPUC_DOMAIN,
    alu_ops=lambda node, graph, in_vectors, out_vectors, lanes: in_vectors + out_vectors,
)
_add("VXM", "NegativeLogLikelihoodLoss SoftmaxCrossEntropyLoss", passes=6)
_add("VXM", "QuantizeLinear DequantizeLinear DynamicQuantizeLinear", passes=2)
_add("VXM", "Trilu EyeLike", passes=1)
_add("VXM", "RotaryEmbedding", passes=3)

# Data movement: SXM shifts/permutes/transposes and MEM gathers.
_add("SXM", "Transpose Concat Split Slice Expand Tile Pad DepthToSpace SpaceToDepth ReverseSequence")
_add("SXM", "Gather GatherElements GatherND Scatter ScatterElements ScatterND OneHot CenterCropPad")
_add("SXM", "MaxUnpool")
# Interpolating and accumulating "movement" ops do arithmetic: they run on the VXM, costed by it.
_add("VXM", "Resize Upsample", alu_ops=_per_output(_resize_ops))
_add("VXM", "GridSample", alu_ops=_per_output(_grid_sample_ops))
_add("VXM", "RoiAlign", alu_ops=_per_output(_roi_align_ops))
_add("VXM", "AffineGrid", alu_ops=_per_output(lambda node: 4))  # theta (2x3) times [x, y, 1]
_add("VXM", "Col2Im", alu_ops=lambda node, graph, in_vectors, out_vectors, lanes: in_vectors + out_vectors)
_add("SXM", "Im2Col", domain=LPUC_DOMAIN, windowed=True)
_add("SXM", "UnbandRows", domain=LPUC_DOMAIN)  # (passes/band_conv_rows)
_add("SXM", "ConvTransposeScatter", domain=LPUC_DOMAIN)
_add("SXM", "UnpackBlocks", domain=LPUC_DOMAIN)  # passes/pool_ordered_pack

_HOST_OPS = (
    "If Loop Scan NonZero Unique Compress NonMaxSuppression DFT STFT Det BlackmanWindow HammingWindow "
    "HannWindow MelWeightMatrix Bernoulli RandomUniform RandomNormal RandomUniformLike RandomNormalLike "
    "Multinomial TfIdfVectorizer ImageDecoder DeformConv MaxRoiPool TensorScatter BitCast"
)
_add("HOST", _HOST_OPS)


def placement(op: str, domain: str = "") -> Placement:
    """Where `op` runs; ops with a kernel but no entry run on the host."""
    return _TABLE.get((domain, op), Placement("HOST"))


def is_elementwise(op: str, domain: str = "") -> bool:
    return (
        (domain == "" and op in ELEMENTWISE)
        or (domain == LPUC_DOMAIN and op in LPUC_ELEMENTWISE)
        or (domain == "ai.onnx.ml" and op == "Binarizer")
    )


def table() -> dict[tuple[str, str], Placement]:
    return dict(sorted(_TABLE.items()))


# Inputs that decide output shapes (or control flow). A statically scheduled chip needs them at
# compile time: the ONNX backend binds graph inputs that feed these positions as constants.
SHAPE_OPERANDS: dict[str, tuple[int, ...]] = {
    "Reshape": (1,),
    "Expand": (1,),
    "Tile": (1,),
    "Slice": (1, 2, 3, 4),
    "Pad": (1, 3),
    "Resize": (1, 2, 3),
    "Upsample": (1,),
    "Split": (1,),
    "Squeeze": (1,),
    "Unsqueeze": (1,),
    "ReduceSum": (1,),
    "ReduceMean": (1,),
    "ReduceMax": (1,),
    "ReduceMin": (1,),
    "ReduceProd": (1,),
    "ReduceL1": (1,),
    "ReduceL2": (1,),
    "ReduceLogSum": (1,),
    "ReduceLogSumExp": (1,),
    "ReduceSumSquare": (1,),
    "TopK": (1,),
    "OneHot": (1,),
    "ConstantOfShape": (0,),
    "Range": (0, 1, 2),
    "CenterCropPad": (1,),
    "Col2Im": (1, 2),
    "DFT": (1, 2),
    "STFT": (1, 3),
    "BlackmanWindow": (0,),
    "HannWindow": (0,),
    "HammingWindow": (0,),
    "MelWeightMatrix": (0, 1, 2, 3, 4),
    "AffineGrid": (1,),
    "MaxUnpool": (2,),
    "Loop": (0, 1),
    "If": (0,),
    "CumSum": (1,),
    "Trilu": (1,),
    "EyeLike": (),
}

# Ops whose output shapes depend on input *values*: never typed by evaluating them on placeholders.
DATA_DEPENDENT_SHAPES = frozenset(
    {
        "NonZero",
        "Unique",
        "Compress",
        "NonMaxSuppression",
        "Loop",
        "If",
        "StringSplit",
        "TfIdfVectorizer",
    }
)
# Ops that read only the shapes of their inputs.
SHAPE_READERS = frozenset({"Shape", "Size"})


def supported_ops() -> list[dict]:
    """Every op with a kernel: where it runs (the unit after the op's rewriting pass, if any) and
    the ONNX schema versions (opsets) lpuc accepts for it (all versions onnx knows)."""
    import onnx

    from lpuc.kernels import registered_ops

    versions: dict[tuple[str, str], set[int]] = {}
    for schema in onnx.defs.get_all_schemas_with_history():
        domain = "" if schema.domain in ("", "ai.onnx") else schema.domain
        versions.setdefault((domain, schema.name), set()).add(schema.since_version)
    rows = []
    for domain, op in registered_ops():
        p = placement(op, domain)
        unit = "VXM" if is_elementwise(op, domain) else p.unit
        rows.append(
            {
                "op": op,
                "domain": domain,
                "unit": unit,
                "via": p.via,
                "opsets": sorted(versions.get((domain, op), ())),
            }
        )
    return rows
