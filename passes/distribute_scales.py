"""A constant multiply after the sum of two scaled values moves into their scales: one VXM op less.

    (x * a [+ b] + y * c) * k  ->  x * (a k) [+ b k] + y * (c k)

After quantize_residuals a residual block ends in (requantized product + dequantized residual)
* 1/s_out -> SaturatingCast: fold_requantize folds constant chains of one input only, so the
multiply by 1/s_out stays, and the block's epilogue map takes 9 ALU ops: then only one such map
fits on the VXM's 16 ALUs at a time. Distributed, it takes 8 and two run side by side.

A constant added after that multiply (an unsigned activation's zero point, passes/quantize_int8.py)
joins the first term's offset the same way: (...) * k + z -> x * (a k) + (b k + z) + y * (c k).

Numerics: each constant product rounds once instead of the two multiplies rounding twice (the
same kind of change fold_requantize makes); fp32 builds, which promise onnxruntime's bits, are left
alone.
"""

from __future__ import annotations

import numpy as np

from lpuc.ir.graph import Graph, Node
from lpuc.passes.builder import NodeBuilder, replace_nodes
from lpuc.passes.eliminate_dead_code import eliminate_dead_code


def distribute_scales(graph: Graph, ctx: object = None) -> Graph:
    if getattr(ctx, "precision", "") == "fp32":
        return graph
    producers, consumers = graph.producers(), graph.consumers()
    outputs = set(graph.outputs)

    def only_reader(value: str, op: str) -> Node | None:
        p = producers.get(value)
        ok = p is not None and p.op == op and not p.domain and value not in outputs
        return p if ok and len(consumers.get(value, [])) == 1 else None

    matches = {}
    for n in graph.nodes:
        # (the multiply's result plus a constant, an unsigned activation's zero point: the constant
        # joins the offset of the sum's first term too)
        shift = _shift_of(n, graph, only_reader)
        root = only_reader(n.inputs[0], "Mul") if shift is not None else n
        if root is not None and (sides := _match(root, graph, only_reader)):
            matches[n.name] = (root, sides, shift)
    if not matches:
        return graph
    shifted = {root.name for root, _, shift in matches.values() if shift is not None}
    matches = {name: m for name, m in matches.items() if name not in shifted}
    out = replace_nodes(
        graph, lambda n, _: n.name in matches, lambda b: _distribute(b, *matches[b.node.name])
    )
    return eliminate_dead_code(out)


def _shift_of(node: Node, graph: Graph, only_reader) -> np.ndarray | None:
    """c of Add(m, c), c a constant of one value, m a value only this Add reads; else None."""
    if node.op != "Add" or node.domain or len(node.inputs) != 2 or not graph.is_const(node.inputs[1]):
        return None
    c = _const(graph, node.inputs[1])
    if c.size != 1 or graph.values[node.outputs[0]].dtype.kind != "f":
        return None
    return c.reshape(()) if only_reader(node.inputs[0], "Mul") is not None else None


def _distribute(
    b: NodeBuilder,
    root: Node,
    sides: list[tuple[str, np.ndarray, np.ndarray | None]],
    shift: np.ndarray | None,
) -> None:
    """x * (a k) [+ b k] + y * (c k) [+ s] in place of b.node, (x * a [+ b] + y * c) * k [+ s]
    (s joins the first term's offset)."""
    k = _const(b.graph, root.inputs[1])
    terms = []
    for i, (x, scale, offset) in enumerate(sides):
        dtype = b.dtype(x)
        y = b.binary("Mul", x, b.const("scale", (scale * k).astype(dtype)), "scale")
        if i == 0 and shift is not None:
            offset = shift / k if offset is None else offset + shift / k
        if offset is not None:
            y = b.binary("Add", y, b.const("offset", (offset * k).astype(dtype)), "offset")
        terms.append(y)
    b.bind_output(b.binary("Add", *terms, "sum"), b.node.outputs[0])


def _match(node: Node, graph: Graph, only_reader) -> list[tuple[str, np.ndarray, np.ndarray | None]] | None:
    """For Mul(Add(u, v), k) (or Sum(u, v)) with k constant and u, v each x * a [+ b] (a, b
    constant, each value read only by the next step): [(x, a, b or None)] of u and v."""
    if node.op != "Mul" or node.domain or len(node.inputs) != 2 or not graph.is_const(node.inputs[1]):
        return None
    if graph.values[node.outputs[0]].dtype.kind != "f":
        return None
    total = only_reader(node.inputs[0], "Add") or only_reader(node.inputs[0], "Sum")
    if total is None or len(total.inputs) != 2 or any(graph.is_const(i) for i in total.inputs):
        return None
    shape = graph.values[node.outputs[0]].shape
    k = _const(graph, node.inputs[1])
    sides = []
    for value in total.inputs:
        offset = None
        add = only_reader(value, "Add")
        if add is not None:
            if not graph.is_const(add.inputs[1]):
                return None
            offset, value = _const(graph, add.inputs[1]), add.inputs[0]
        mul = only_reader(value, "Mul")
        if mul is None or not graph.is_const(mul.inputs[1]) or graph.is_const(mul.inputs[0]):
            return None
        x, scale = mul.inputs[0], _const(graph, mul.inputs[1])
        if graph.values[x].shape != shape or graph.values[value].shape != shape:
            return None
        for c in (scale, offset):
            if c is not None and np.broadcast_shapes(c.shape, k.shape, shape) != tuple(shape):
                return None
        sides.append((x, scale, offset))
    return sides if any(_dequantized(x, graph, only_reader) for x, _, _ in sides) else None


def _dequantized(x: str, graph: Graph, only_reader) -> bool:
    """x is an int8 value cast to float (quantize_residuals' residual). Sums of two products (a
    projection shortcut's) are left alone: distributed there, ResNet-50 int8 took 108,674 cycles
    instead of 101,511 (their maps no longer fused whole)."""
    cast = only_reader(x, "Cast")
    return cast is not None and graph.values[cast.inputs[0]].dtype == np.int8


def _const(graph: Graph, name: str) -> np.ndarray:
    return np.asarray(graph.values[name].const, dtype=np.float64)
