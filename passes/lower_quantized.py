"""Quantized ONNX models onto the MXM's int8 mode: their integer products stay integer.

    QDQ         Conv / MatMul / Gemm(DequantizeLinear(x_q), DequantizeLinear(w_q) [, bias])
                -> integer core; Cast and Mul by s_x * s_w (the float result the pattern has) [+ bias]
    QLinear     QLinearConv / QLinearMatMul -> integer core [+ int32 bias]; requantized on the VXM:
                round(acc * (s_x * s_w / s_y)) + z_y, saturated (the formula of lpuc's kernels)
    Integer     ConvInteger / MatMulInteger -> integer core (their int32 result)

The integer core is what the int8 mode multiplies: the activation as int8 (uint8 shifted by -128,
its zero point with it), the constant weights minus their zero points (the op is left alone when
those do not fit int8), then MatMulInteger with no zero point, adding the activation zero point's
term -z_x * (column sums of W) to the int32 accumulator, or ConvInteger with x's zero point only,
which lower_conv lowers the same way (its Im2Col pads with the zero point). The quantize steps
between layers (QuantizeLinear) stay as they are: VXM ops matching onnxruntime's.

Runs first: fold_constants would turn the weights' DequantizeLinear into float constants.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lpuc.ir.graph import Graph, Node
from lpuc.passes.builder import NodeBuilder

_INT8 = np.dtype(np.int8)


@dataclass(frozen=True)
class _Operand:
    """A quantized operand: its integer value, and constant scale / zero point (arrays)."""

    value: str
    scale: np.ndarray | None
    zero_point: np.ndarray


def lower_quantized(graph: Graph, ctx: object = None) -> Graph:
    producers = graph.producers()
    out = graph.copy(nodes=[])
    for node in graph.nodes:
        b = NodeBuilder(out, node)
        rewrite = _REWRITES.get(node.op) if not node.domain and not graph.touches_dynamic(node) else None
        if rewrite is None or not rewrite(b, producers):
            out.nodes.append(node)
            continue
        out.nodes.extend(b.nodes)
    return out.prune_values()


# -- the patterns -----------------------------------------------------------------------------------
def _qdq(b: NodeBuilder, producers: dict[str, Node]) -> bool:
    """Conv / MatMul / Gemm of two DequantizeLinear outputs, the weights' constant."""
    node = b.node
    if node.op == "Gemm" and (node.attr("transA", 0) or node.attr("alpha", 1.0) != 1.0):
        return False
    if node.op == "Gemm" and len(node.inputs) > 2 and node.inputs[2] and node.attr("beta", 1.0) != 1.0:
        return False
    x = _dequantized(b.graph, producers.get(node.inputs[0]))
    w_node = producers.get(node.inputs[1])
    if x is None or w_node is None or x.scale.size != 1:
        return False
    channel_axis = {"Conv": 0, "MatMul": 1, "Gemm": 0 if node.attr("transB", 0) else 1}[node.op]
    w = _dequantized(b.graph, w_node, channel_axis)
    if w is None or not b.graph.is_const(w.value):
        return False
    weights = b.graph.values[w.value].const
    if node.op == "Gemm" and node.attr("transB", 0):
        weights = weights.T
    acc = _integer_core(b, x, weights, w.zero_point, node.attrs if node.op == "Conv" else None)
    if acc is None:
        return False
    out = node.outputs[0]
    scale = (x.scale.astype(np.float32) * w.scale.astype(np.float32)).reshape(-1)
    y = b.binary("Mul", b.cast(acc, b.dtype(out), "dequant"), _per_channel(b, scale, node.op, out), "scale")
    bias = node.inputs[2] if len(node.inputs) > 2 else ""
    if bias:
        y = b.binary("Add", y, b.reshape(bias, _channel_shape(node.op, b.shape(out), b.shape(bias)), "bias"))
    b.bind_output(y, out)
    return True


def _qlinear(b: NodeBuilder, producers: dict[str, Node]) -> bool:
    node = b.node
    x_name, xs, xz, w_name, ws, wz, ys, yz = node.inputs[:8]
    if not all(b.graph.is_const(n) for n in (xs, xz, w_name, ws, wz, ys, yz)):
        return False
    consts = {n: b.graph.values[n].const for n in (xs, xz, ws, wz, ys, yz)}
    if consts[xs].size != 1 or consts[xz].size != 1 or consts[ys].size != 1:
        return False
    x = _Operand(x_name, consts[xs], consts[xz])
    conv = node.op == "QLinearConv"
    acc = _integer_core(b, x, b.graph.values[w_name].const, consts[wz], node.attrs if conv else None)
    if acc is None:
        return False
    out = node.outputs[0]
    bias = node.inputs[8] if conv and len(node.inputs) > 8 else ""
    if bias:
        acc = b.binary(
            "Add", acc, b.reshape(bias, _channel_shape("Conv", b.shape(out), b.shape(bias)), "bias")
        )
    # As the kernels compute it: s_x * s_w / s_y in float32.
    multiplier = (consts[xs].astype(np.float32) * consts[ws].astype(np.float32) / consts[ys]).reshape(-1)
    scaled = b.binary("Mul", b.cast(acc, np.float32, "acc_float"), _per_channel(b, multiplier, node.op, out))
    rounded = b.binary("Add", b.unary("Round", scaled), b.const("zero_point", consts[yz].astype(np.float32)))
    low, high = np.iinfo(b.dtype(out)).min, np.iinfo(b.dtype(out)).max
    bounds = [b.const(tag, np.array(v, np.float32)) for tag, v in (("qmin", low), ("qmax", high))]
    clipped = b.emit("Clip", [rounded, *bounds], b.shape(out), np.float32, "saturate")
    b.bind_output(b.cast(clipped, b.dtype(out), "quantized"), out)
    return True


def _integer(b: NodeBuilder, producers: dict[str, Node]) -> bool:
    """ConvInteger / MatMulInteger: the core itself (unless it already is one)."""
    node = b.node
    zero_points = [node.inputs[k] if len(node.inputs) > k else "" for k in (2, 3)]
    x_dtype = b.dtype(node.inputs[0])
    if not b.graph.is_const(node.inputs[1]) or any(z and not b.graph.is_const(z) for z in zero_points):
        return False
    if x_dtype == _INT8 and not zero_points[1] and (node.op == "ConvInteger" or not zero_points[0]):
        return False  # already what the int8 mode runs (lower_conv lowers a ConvInteger's x zero point)
    x_zero = b.graph.values[zero_points[0]].const if zero_points[0] else np.zeros((), x_dtype)
    w = b.graph.values[node.inputs[1]].const
    w_zero = b.graph.values[zero_points[1]].const if zero_points[1] else np.zeros((), w.dtype)
    if x_zero.size != 1:
        return False
    acc = _integer_core(
        b, _Operand(node.inputs[0], None, x_zero), w, w_zero, node.attrs if node.op == "ConvInteger" else None
    )
    if acc is None:
        return False
    b.bind_output(acc, node.outputs[0])
    return True


_REWRITES = {
    "Conv": _qdq,
    "MatMul": _qdq,
    "Gemm": _qdq,
    "QLinearConv": _qlinear,
    "QLinearMatMul": _qlinear,
    "ConvInteger": _integer,
    "MatMulInteger": _integer,
}


# -- pieces -----------------------------------------------------------------------------------------
def _dequantized(graph: Graph, node: Node | None, channel_axis: int | None = None) -> _Operand | None:
    """The quantized operand behind a DequantizeLinear with constant scale and zero point: scalar
    ones, or per-channel along `channel_axis` (the output channel) when that is given."""
    if node is None or node.op != "DequantizeLinear" or node.domain or node.attr("block_size", 0):
        return None
    q, scale = node.inputs[0], node.inputs[1]
    zero = node.inputs[2] if len(node.inputs) > 2 else ""
    if graph.values[q].dtype not in (np.dtype(np.int8), np.dtype(np.uint8)):
        return None
    if not graph.is_const(scale) or (zero and not graph.is_const(zero)):
        return None
    s = graph.values[scale].const
    z = graph.values[zero].const if zero else np.zeros(s.shape, graph.values[q].dtype)
    if s.size > 1:
        rank = len(graph.values[q].shape)
        if channel_axis is None or node.attr("axis", 1) % rank != channel_axis % rank:
            return None
    return _Operand(q, s, z)


def _integer_core(
    b: NodeBuilder, x: _Operand, w: np.ndarray, w_zero: np.ndarray, conv_attrs: dict | None
) -> str | None:
    """The int32 accumulator of (x - z_x) * (w - z_w) on the int8 mode; None if w - z_w is not int8."""
    if conv_attrs is None and w.ndim != 2:
        return None
    axis = 0 if conv_attrs is not None else 1  # the output channel of the weights
    if w_zero.size > 1:
        w_zero = w_zero.reshape([-1 if a == axis else 1 for a in range(w.ndim)])
    centered = w.astype(np.int64) - w_zero.astype(np.int64)
    if centered.min(initial=0) < -128 or centered.max(initial=0) > 127:
        return None
    weights = b.const("weights_int8", centered.astype(np.int8))
    value, zero = _as_int8(b, x.value, int(x.zero_point.reshape(())))
    out = b.node.outputs[0]
    if conv_attrs is not None:
        inputs = [value, weights] + ([b.const("x_zero_point", np.array(zero, np.int8))] if zero else [])
        return b.emit("ConvInteger", inputs, b.shape(out), np.int32, "conv_int8", **dict(conv_attrs))
    shape = (*b.shape(value)[:-1], centered.shape[1])
    acc = b.emit("MatMulInteger", [value, weights], shape, np.int32, "matmul_int8")
    if not zero:
        return acc
    term = (-zero * centered.sum(axis=0)).astype(np.int32)
    return b.binary("Add", acc, b.const("zero_point_term", term), "zero_point")


def _as_int8(b: NodeBuilder, x: str, zero_point: int) -> tuple[str, int]:
    """x as int8 with its zero point: uint8 values (and zero point) shift by -128, exactly."""
    if b.dtype(x) == _INT8:
        return x, zero_point
    wide = b.cast(x, np.int16, "widen")
    shifted = b.binary("Add", wide, b.const("shift", np.array(-128, np.int16)), "shift")
    return b.cast(shifted, np.int8, "int8"), zero_point - 128


def _channel_shape(op: str, out_shape: tuple[int, ...], vector_shape: tuple[int, ...]) -> tuple[int, ...]:
    """A per-channel vector's broadcast shape: [M, 1, ...] over NCHW conv outputs, [N] otherwise."""
    if op in ("Conv", "QLinearConv") and len(out_shape) > 2:
        return (*vector_shape, *([1] * (len(out_shape) - 2)))
    return vector_shape


def _per_channel(b: NodeBuilder, values: np.ndarray, op: str, out: str) -> str:
    array = values.astype(np.float32)
    return b.const("channel_scale", array.reshape(_channel_shape(op, b.shape(out), array.shape)))
