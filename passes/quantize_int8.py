"""int8 builds: every MatMul with constant float weights becomes an int8 x int8 -> int32 MXM product.

    A (float) --quantize: x / s_a, round, clip to [-128, 127], cast int8 (a VXM map)--> Aq
    Aq @ Wq   --MatMulInteger: int8 mode of the MXM, int32 accumulation--> acc
    acc       --Cast, Mul by s_a * s_w[n] (a VXM map; fuses with the bias / ReLU after it)--> Y

Weights are quantized symmetrically per output column n: s_w[n] = max|W[:, n]| / 127. Activations
get one symmetric per-tensor scale s_a = max|A| / 127 over the calibration samples
(lpuc.calibration), measured by evaluating the graph this pass receives (lpuc.ir.evaluate): its
values (Im2Col columns, fused ops) need not exist in the source model, so onnxruntime could not
measure them. When A is the Im2Col of x, x is quantized before the Im2Col instead (Im2Col only
copies x and zero padding), so the SXM moves 1-byte columns and the map runs over x rather than its
kernel-size-times larger copy; likewise before a MaxPool (max commutes with a monotonic
quantization), which then pools int8 values: SRAM holds the 1-byte form of what it pools.
MatMuls with two runtime operands (attention) keep the float path (fp16 on the MXM).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from lpuc import calibration as calib
from lpuc.ir.evaluate import evaluate_graph_ir
from lpuc.ir.graph import LPUC_DOMAIN, Graph, Node
from lpuc.ir.model_work import ATTR as MODEL_BLOCKS
from lpuc.ir.model_work import block_diagonal, flat
from lpuc.passes.builder import NodeBuilder
from lpuc.passes.eliminate_dead_code import eliminate_dead_code

INT8_MAX = 127  # weights: symmetric range [-127, 127]: -128 is never produced, so negation is exact


def quantize_int8(graph: Graph, ctx) -> Graph:
    if ctx.precision != "int8":
        return graph
    producers, consumers = graph.producers(), graph.consumers()
    sources = {n.name: _source(n, graph, producers, consumers) for n in graph.nodes if _quantizable(n, graph)}
    if not sources:
        return graph
    ranges = activation_ranges(
        graph, [src for src, _ in sources.values()], ctx.calibration or calib.Calibration()
    )
    unsigned = (
        set()
        if "unsigned_activations" in getattr(ctx, "disabled", ())
        else {src for src, _ in sources.values() if _unsigned(src, graph, producers, consumers)}
    )
    out = graph.copy(nodes=[])
    quantized: dict[str, str] = {}  # float value -> its int8 form (shared by all its MatMuls)
    bias_shift: dict[str, tuple[str, np.ndarray]] = {}  # bias Add -> (its constant, what it gains)
    for node in graph.nodes:
        if node.name in bias_shift:
            node = _shifted_bias(out, node, *bias_shift[node.name])
        if node.name not in sources:
            out.nodes.append(node)
            continue
        b = NodeBuilder(out, node)
        src, chain = sources[node.name]
        zero_point = UNSIGNED_ZERO_POINT if src in unsigned else 0
        s_a = activation_scale(ranges[src], unsigned=bool(zero_point))
        if src not in quantized:
            quantized[src] = _quantize(b, src, s_a, zero_point)
        q = quantized[src]
        w_q, s_w = quantize_weights(graph.values[node.inputs[1]].const)
        pack = _row_packing(b, node, chain, ctx.target.lanes)
        for moved in chain:  # MaxPool / Im2Col, now on int8 data (both commute with quantizing)
            value = moved.outputs[0]
            packed = pack if moved is chain[-1] else 1
            key = value if packed == 1 else f"{value}#{packed}"
            if key not in quantized:
                rows, cols = (
                    (b.shape(value)[0] // packed, b.shape(value)[1] * packed) if packed > 1 else (0, 0)
                )
                quantized[key] = b.emit(
                    moved.op,
                    [q, *moved.inputs[1:]],
                    (rows, cols) if packed > 1 else b.shape(value),
                    np.int8,
                    f"{moved.op.lower()}_int8",
                    domain=moved.domain,
                    **moved.attrs,
                    **({"pack_rows": packed} if packed > 1 else {}),
                    **({"pad_value": zero_point} if zero_point and moved.op == "Im2Col" else {}),
                )
            q = quantized[key]
        out_shape = b.shape(node.outputs[0])
        # (a product band_conv_rows packed keeps its model work)
        model_work = {MODEL_BLOCKS: node.attr(MODEL_BLOCKS)} if node.attr(MODEL_BLOCKS) else {}
        if pack > 1:  # p rows side by side: block-diagonal weights, per-channel scales repeated
            model_work = {MODEL_BLOCKS: flat(block_diagonal(pack, *w_q.shape))}
            w_q = np.kron(np.eye(pack, dtype=np.int8), w_q)
            s_w = np.tile(s_w, pack)
        acc = b.emit(
            "MatMulInteger",
            [q, b.const("weights_int8", w_q)],
            (*b.shape(q)[:-1], w_q.shape[1]),
            np.int32,
            "matmul_int8",
            **model_work,
        )
        out_dtype = b.dtype(node.outputs[0])
        scale = b.const("requant_scale", (np.float64(s_a) * s_w).astype(out_dtype))
        y = b.binary("Mul", b.cast(acc, out_dtype, "dequant"), scale, "requant")
        if zero_point:
            # The MXM multiplied q = x_q + z: the product lacks -z * (column sums of W), scaled. It
            # joins the bias Add after the product if there is one, else it is an Add of its own.
            shift = -zero_point * w_q.astype(np.int64).sum(axis=0) * (np.float64(s_a) * s_w)
            bias = _bias_add(node.outputs[0], graph, consumers, pack)
            if bias is not None:
                bias_shift[bias[0].name] = (bias[1], shift)
            else:
                y = b.binary("Add", y, b.const("zero_point_term", shift.astype(out_dtype)), "zero_point")
        b.bind_output(b.reshape(y, out_shape, "unpack"), node.outputs[0])
        out.nodes.extend(b.nodes)
    # The float Im2Cols replaced by int8 ones go now, so fuse_elementwise sees the quantize map as
    # the only reader of what they read (and fuses it with, e.g., the ReLU before it).
    return eliminate_dead_code(out.prune_values())


def quantize_weights(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """W [K, N] -> (int8 W_q, float64 scale[N]) with W ~= W_q * scale, symmetric per column."""
    w = np.asarray(w, dtype=np.float64)
    peak = np.max(np.abs(w), axis=0) if w.shape[0] else np.zeros(w.shape[1])
    scale = np.where(peak > 0, peak / INT8_MAX, 1.0)
    return np.clip(np.rint(w / scale), -INT8_MAX, INT8_MAX).astype(np.int8), scale


def activation_scale(peak: float, unsigned: bool = False) -> float:
    """Per-tensor scale from the largest magnitude seen (1 for an all-zero tensor): symmetric, or
    (an unsigned activation) [0, peak] over all 256 levels."""
    levels = UNSIGNED_LEVELS if unsigned else INT8_MAX
    return float(np.float32(peak / levels)) if peak > 0 else 1.0


def activation_ranges(graph: Graph, names: Iterable[str], calibration: calib.Calibration) -> dict[str, float]:
    """max |value| of each named value over the calibration samples."""
    peaks = dict.fromkeys(names, 0.0)

    def observe(name: str, value: np.ndarray) -> None:
        if name in peaks and value.size:
            peaks[name] = max(peaks[name], float(np.max(np.abs(value))))

    for feeds in calib.samples(calibration, graph):
        evaluate_graph_ir(graph, feeds, observe)
    return peaks


def _quantizable(node: Node, graph: Graph) -> bool:
    if node.op != "MatMul" or node.domain or graph.touches_dynamic(node):
        return False
    a, w = (graph.values[i] for i in node.inputs[:2])
    return (
        w.is_const
        and len(w.shape) == 2
        and w.dtype.kind == "f"
        and a.dtype.kind == "f"
        and not a.is_const
        and len(a.shape) >= 2
    )


def _source(
    node: Node, graph: Graph, producers: dict[str, Node], consumers: dict[str, list[Node]]
) -> tuple[str, list[Node]]:
    """The float value to quantize for this MatMul, and the ops between it and A that then run on
    int8 data instead: A = Im2Col(x) or Reshape(x) quantizes x, and x = MaxPool(v) quantizes v
    (these ops only copy or select values, and quantizing is monotonic), when every reader of what
    they produce is quantized the same way (then their float forms go away)."""
    value, chain = node.inputs[0], []
    while True:
        p = producers.get(value)
        if (
            p is None
            or not _movable(p)
            or not all(_reads_int8(c, value, graph, consumers) for c in consumers[value])
        ):
            return value, chain
        value, chain = p.inputs[0], [p, *chain]


def _movable(node: Node) -> bool:
    if node.op == "Im2Col":
        return node.domain == LPUC_DOMAIN
    if node.op == "Reshape":  # a 1x1 convolution reads its input through one
        return not node.domain
    if node.op == "UnbandRows":  # (a copy of a banded pool's rows: passes/band_conv_rows)
        return node.domain == LPUC_DOMAIN
    # MaxPool without indices; its kernel pads an integer input with the type's minimum, which
    # (like -inf for floats) never wins a window.
    return (
        node.op == "MaxPool" and node.domain in ("", LPUC_DOMAIN) and len([o for o in node.outputs if o]) == 1
    )


def _reads_int8(reader: Node, value: str, graph: Graph, consumers: dict[str, list[Node]]) -> bool:
    """Whether `reader` of `value` would read its int8 form: a quantized MatMul's A, or a movable op
    whose own readers all do."""
    if reader.op == "MatMul" and not reader.domain:
        return _quantizable(reader, graph) and reader.inputs[0] == value and reader.inputs[1] != value
    if _movable(reader) and reader.inputs[0] == value:
        out = reader.outputs[0]
        return out not in graph.outputs and all(
            _reads_int8(c, out, graph, consumers) for c in consumers.get(out, [])
        )
    return False


# Pack rows into lanes only for results at least this tall (a 112x112 feature map: 12544 rows).
# Packing costs an SXM copy to unpack and longer Im2Col rows. Measured on tsp-v1 int8 (with
# store_int8_floats_fp16): from 20000 rows instead (112x112 maps unpacked), ResNet-50 v1.5 takes
# 134,593 cycles instead of 142,188 and VGG-19 444,445 instead of 458,588, but Inception v1/v2,
# DenseNet-121, SqueezeNet and the MobileNet-style net 3-15% more: the CNN bench's geomean
# bound_ratio is 14.90 instead of 14.45. VGG-19's 224x224 layers need packing to fit in SRAM.
PACK_MIN_ROWS = 10000


def _row_packing(b: NodeBuilder, node: Node, chain: list[Node], lanes: int) -> int:
    """How many rows of a convolution's Im2Col to put side by side in one row of lanes (1: none).

    A result N < lanes wide fills N of the lanes of every tile; its int32 accumulators take
    4 * lanes bytes per row whatever N is, and the requantization map reads all of them. With p
    rows packed ([M, K] -> [M / p, p K], weights block-diagonal [p K, p N]), the MXM streams M / p
    rows through p times the K (the same row-cycles) and the accumulators take p times less SRAM
    and VXM time. The packed result is one row-major reshape away from [M, N]."""
    if not chain or chain[-1].op != "Im2Col":
        return 1
    m, n = b.shape(node.inputs[0])[0], b.shape(node.inputs[1])[1]
    if len(b.shape(node.inputs[0])) != 2 or m < PACK_MIN_ROWS:
        return 1
    for p in range(lanes // max(1, n), 1, -1):
        if m % p == 0:
            return p
    return 1


# Activations saturate to int8's whole range. Their scale is symmetric (max|A| / 127), so -128 is
# reached only past the calibrated range; a lower bound of -127 would cost a Max per element, where
# the saturating cast (fold_requantize) gives [-128, 127] for free. (Nothing negates activations;
# the weights keep [-127, 127].)
ACTIVATION_MIN = -INT8_MAX - 1


# An activation that is never negative (a ReLU's result) read only by int8 products is quantized
# unsigned: x / s - 128 with s = max / 255, so 0 is -128, the bottom of int8's range. The ReLU then
# costs nothing (fold_requantize: the saturating cast's own lower bound), where a symmetric scale
# needs a Max by 0 in the map that computes x, and x gets twice the levels. The products add back
# 128 * (column sums of W) in their bias (strategy unsigned_activations).
UNSIGNED_ZERO_POINT = -128
UNSIGNED_LEVELS = 255


def _unsigned(src: str, graph: Graph, producers: dict[str, Node], consumers: dict[str, list[Node]]) -> bool:
    """A ReLU's result whose readers all take its int8 form (no float reader, no residual)."""
    p = producers.get(src)
    readers = consumers.get(src, [])
    return (
        p is not None
        and p.op == "Relu"
        and not p.domain
        and src not in graph.outputs
        and bool(readers)
        and all(_reads_int8(c, src, graph, consumers) for c in readers)
    )


def _bias_add(
    product: str, graph: Graph, consumers: dict[str, list[Node]], pack: int
) -> tuple[Node, str] | None:
    """(the Add, its constant) when a product's only reader adds a constant bias of one value per
    output column (lower_conv's bias), which can take the zero-point term; not for packed rows."""
    readers = consumers.get(product, [])
    if pack > 1 or len(readers) != 1 or readers[0].op != "Add" or readers[0].domain:
        return None
    add = readers[0]
    if len(add.inputs) != 2 or product not in add.inputs or product in graph.outputs:
        return None
    bias = add.inputs[1] if add.inputs[0] == product else add.inputs[0]
    value, out = graph.values[bias], graph.values[product]
    if not value.is_const or value.dtype != out.dtype or value.shape is None or len(value.shape) != 1:
        return None
    return (add, bias) if value.shape[0] == out.shape[-1] else None


def _shifted_bias(out: Graph, add: Node, bias: str, shift: np.ndarray) -> Node:
    """`add` with its bias constant plus the zero-point term `shift`, as a new constant."""
    b = NodeBuilder(out, add)
    value = out.values[bias]
    shifted = b.const("bias_zero_point", (value.const.astype(np.float64) + shift).astype(value.dtype))
    out.nodes.extend(b.nodes)
    return add.with_(inputs=tuple(shifted if i == bias else i for i in add.inputs))


def _quantize(b: NodeBuilder, x: str, scale: float, zero_point: int = 0) -> str:
    """x / scale rounded (half to even) [plus zero_point] and clipped to [-128, 127], as int8: one VXM map."""
    dtype = b.dtype(x)
    scaled = b.binary("Mul", x, b.const("inv_scale", np.array(1.0 / scale, dtype)), "quantize")
    rounded = b.unary("Round", scaled, "round")
    if zero_point:
        rounded = b.binary("Add", rounded, b.const("zero_point", np.array(zero_point, dtype)), "zero_point")
    bounds = [b.const(tag, np.array(v, dtype)) for tag, v in (("qmin", ACTIVATION_MIN), ("qmax", INT8_MAX))]
    clipped = b.emit("Clip", [rounded, *bounds], b.shape(x), dtype, "clip")
    return b.cast(clipped, np.int8, "int8")
