"""Fewer VXM ALU ops for (re)quantization: fold the float chain that ends in an integer cast.

quantize_int8 (and lower_quantized) leave, between two int8 products, a chain such as

    Cast(acc) * s_a s_w[n] + bias -> Relu -> * 1/s_next -> Round -> Clip(-128, 127) -> Cast int8

(9 ALU ops per element: Clip is a Max and a Min). This pass rewrites the part after the chain's
input x (here the Cast of the int32 accumulator) into

    x * S + B [-> Max(L)] [-> Min(H)] -> SaturatingCast int8

(5 ops here; an input quantize `x * 1/s -> Round -> Clip -> Cast` takes 2 instead of 5, and
lower_quantized's QLinear `Cast(acc) * m -> Round -> + z_y -> Clip -> Cast` 4 instead of 7):
- the constant multiplies and adds compose into one multiply by S (per-lane row when a factor is
  per channel) and one add of B: S = s_a s_w[n] / s_next, B = bias / s_next (+ z_y);
- a Relu moves below the positive scales after it (relu(z) c = relu(z c) for c > 0), then merges
  with the clip's lower bound: L = max(lo, 0) (round(max(z, 0)) = max(round(z), 0));
- Round, Clip to the type's range and Cast are one SaturatingCast (lpuc/kernels/lowered.py: rounds
  half to even and saturates, one VXM op); a Max or Min remains only for a bound inside the type's
  range, and a lower bound 0 (after a Relu) is a Relu: the same one ALU op, but a unary one, so a
  map fused into an MM streams no bound to the VXM (a float32 scalar: 4 stream ids for the MM's
  whole duration).

Numerics: one multiply and no add (an input quantize) gives the same bits. Composing two float32
multiplies (or a multiply and an add) rounds once instead of twice, so z may differ in its last bit
and a value within a float32 ulp of a .5 tie may round to the other integer; likewise z + z_y when
that sum itself rounds (tests/passes/test_fold_requantize.py measures this against onnxruntime).
fp32 builds, which promise onnxruntime's bits, get only the rewrites that keep them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lpuc.ir.graph import LPUC_DOMAIN, Graph, Node
from lpuc.kernels._common import integer_range, onnx_dtype
from lpuc.passes.builder import NodeBuilder
from lpuc.passes.eliminate_dead_code import eliminate_dead_code

# Constant steps whose composition is the same float ops in the same order (a Relu anywhere among
# them moves exactly: relu(z) c = relu(z c) for c > 0).
_SAME_BITS = ([], ["Mul"], ["Add"], ["Mul", "Add"])


@dataclass(frozen=True)
class _Chain:
    """What a Cast-to-integer node computes from the chain's input x."""

    x: str  # the chain's input (an integer tensor when widen is set)
    scale: np.ndarray  # S (float64), broadcast against x
    offset: np.ndarray  # B (float64)
    low: float  # lower bound after rounding (the clip's, raised to 0 by a Relu)
    high: float
    widen: np.dtype | None = None  # x is an integer tensor to Cast to this float type first


def fold_requantize(graph: Graph, ctx: object = None) -> Graph:
    producers, consumers = graph.producers(), graph.consumers()
    outputs = set(graph.outputs)
    out = graph.copy(nodes=[])
    changed = False
    # fp32 builds promise onnxruntime's results: there only rewrites that give the same bits.
    exact = getattr(ctx, "precision", "") == "fp32"
    for node in graph.nodes:
        chain = _match(node, graph, producers, consumers, outputs, exact)
        if chain is None:
            out.nodes.append(node)
            continue
        b = NodeBuilder(out, node)
        b.bind_output(_emit(b, chain, node), node.outputs[0])
        out.nodes.extend(b.nodes)
        changed = True
    # The replaced chain's nodes now have no reader.
    return eliminate_dead_code(out.prune_values()) if changed else graph


def _emit(b: NodeBuilder, chain: _Chain, cast: Node) -> str:
    y = chain.x if chain.widen is None else b.cast(chain.x, chain.widen, "float")
    dtype = b.dtype(y)
    to = int(cast.attrs["to"])
    lo, hi = integer_range(onnx_dtype(to))
    if np.any(chain.scale != 1):
        y = b.binary("Mul", y, b.const("scale", chain.scale.astype(dtype)), "scale")
    if np.any(chain.offset != 0):
        y = b.binary("Add", y, b.const("offset", chain.offset.astype(dtype)), "offset")
    if chain.low == 0 > lo:  # a ReLU: a unary VXM op, no bound to stream in
        y = b.unary("Relu", y, "low")
    elif chain.low > lo:
        y = b.binary("Max", y, b.const("low", np.array(chain.low, dtype)), "low")
    if chain.high < hi:
        y = b.binary("Min", y, b.const("high", np.array(chain.high, dtype)), "high")
    return b.emit("SaturatingCast", [y], b.shape(y), onnx_dtype(to), "round_cast", domain=LPUC_DOMAIN, to=to)


def _match(
    cast: Node,
    graph: Graph,
    producers: dict[str, Node],
    consumers: dict[str, list[Node]],
    outputs: set[str],
    exact: bool = False,
) -> _Chain | None:
    """The chain `cast` ends, when it is Cast(int) <- Clip(const bounds) [<- Add integer constant]
    <- Round <- [Mul | Add by constants]* [<- Relu <- [Mul | Add]*] with every value in between read
    only by the next node."""
    if cast.op != "Cast" or cast.domain or len(cast.inputs) != 1 or graph.touches_dynamic(cast):
        return None
    to_range = integer_range(graph.values[cast.outputs[0]].dtype)
    if to_range is None:
        return None

    def inner(value: str, op: str) -> Node | None:
        p = producers.get(value)
        if p is None or p.op != op or p.domain or value in outputs or len(consumers.get(value, [])) != 1:
            return None
        return p

    clip = inner(cast.inputs[0], "Clip")
    bounds = _clip_bounds(clip, graph) if clip is not None else None
    if bounds is None or not to_range[0] <= bounds[0] <= bounds[1] <= to_range[1]:
        return None
    out_shape = graph.values[cast.outputs[0]].shape
    # lower_quantized's QLinear requantization adds the output zero point after rounding.
    zero_point, rounded = None, clip.inputs[0]
    shifted = inner(rounded, "Add")
    if shifted is not None and (operand := _affine_operand(shifted, graph, out_shape)) is not None:
        rounded, zero_point = operand
        if np.any(zero_point != np.round(zero_point)):
            return None
    rnd = inner(rounded, "Round")
    if rnd is None or graph.values[rnd.inputs[0]].dtype.kind != "f":
        return None
    # Walk up: (op, constant, the value the op reads), nearest the Round first.
    steps: list[tuple[str, np.ndarray | None, str]] = []
    value = rnd.inputs[0]
    while True:
        p = producers.get(value)
        if p is None or value in outputs or len(consumers.get(value, [])) != 1 or p.domain:
            break
        if p.op == "Relu" and all(op != "Relu" for op, _, _ in steps):
            value = p.inputs[0]
            steps.append(("Relu", None, value))
            continue
        operand = _affine_operand(p, graph, out_shape)
        if operand is None:
            break
        value, const = operand
        steps.append((p.op, const, value))
    steps.reverse()  # input side first
    relu = next((k for k, (op, _, _) in enumerate(steps) if op == "Relu"), None)
    # With a zero point z added after rounding, the Relu's bound moves to z: round(max(y, 0)) + z =
    # max(round(y) + z, z) (one z for every element: an unsigned activation's -128).
    uniform_zero_point = zero_point is None or np.all(zero_point == np.ravel(zero_point)[0])
    if relu is not None and (
        not uniform_zero_point or not all(op == "Mul" and np.all(c > 0) for op, c, _ in steps[relu + 1 :])
    ):
        # A Relu that an add (or a non-positive scale) follows stays: fold only what comes after it.
        value = steps[relu + 1][2] if relu + 1 < len(steps) else rnd.inputs[0]
        steps, relu = steps[relu + 1 :], None
    if exact and (zero_point is not None or [op for op, _, _ in steps if op != "Relu"] not in _SAME_BITS):
        if zero_point is not None:
            return None
        value, steps, relu = rnd.inputs[0], [], None  # only Round, Clip and Cast become one op
    # An integer constant added before the int -> float Cast at the top (lower_quantized's zero-point
    # term -z_x * column sums of W) joins the offset too: x is then the integer tensor before it.
    scale, offset, widen = np.float64(1), np.float64(0), None
    top = producers.get(value)
    if top is not None and not exact and inner(value, "Cast") is not None:
        added = inner(top.inputs[0], "Add")
        operand = _affine_operand(added, graph, out_shape, "iu") if added is not None else None
        if operand is not None and graph.values[value].dtype.kind == "f":
            widen = graph.values[value].dtype
            value, offset = operand
    for op, c, _ in steps:
        if op == "Mul":
            scale, offset = scale * c, offset * c
        elif op == "Add":
            offset = offset + c
    if zero_point is not None:  # round(z) + zp = round(z + zp) for an integer zp (z + zp rounds once)
        offset = offset + zero_point
    relu_bound = 0.0 if zero_point is None else float(np.ravel(zero_point)[0])
    low = max(bounds[0], relu_bound) if relu is not None else bounds[0]
    return _Chain(value, np.asarray(scale), np.asarray(offset), low, bounds[1], widen)


def _affine_operand(
    node: Node, graph: Graph, out_shape: tuple[int, ...], kinds: str = "f"
) -> tuple[str, np.ndarray] | None:
    """(tensor input, float64 constant) of a Mul or Add of a tensor of the chain's shape (of a dtype
    kind in `kinds`) by a finite constant that broadcasts to it without growing it."""
    if node.op not in ("Mul", "Add") or len(node.inputs) != 2:
        return None
    a, c = node.inputs
    if graph.is_const(a) and not graph.is_const(c):
        a, c = c, a
    if graph.is_const(a) or not graph.is_const(c):
        return None
    tensor, const = graph.values[a], np.asarray(graph.values[c].const)
    shapes = (tensor.shape, graph.values[node.outputs[0]].shape)
    if tensor.dtype.kind not in kinds or shapes != (out_shape, out_shape):
        return None
    if np.broadcast_shapes(const.shape, out_shape) != tuple(out_shape) or not np.all(np.isfinite(const)):
        return None
    return a, const.astype(np.float64)


def _clip_bounds(clip: Node, graph: Graph) -> tuple[float, float] | None:
    """A Clip's (min, max) when both are integral constants the same for every element (opset >= 11
    form: bounds as inputs)."""
    if len(clip.inputs) != 3 or "min" in clip.attrs or "max" in clip.attrs:
        return None
    bounds = []
    for name in clip.inputs[1:]:
        if not name or not graph.is_const(name):
            return None
        values = np.asarray(graph.values[name].const, dtype=np.float64).ravel()
        if not values.size or np.any(values != values[0]) or values[0] != np.round(values[0]):
            return None
        bounds.append(float(values[0]))
    return bounds[0], bounds[1]
