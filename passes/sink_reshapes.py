"""Elementwise ops moved above the reshapes that feed them, so they fuse with their producers.

An elementwise op whose tensor operands are all Reshapes of same-shaped values, and whose other
operands are scalars or constants along the last axis, computes the same values on the values before
the reshapes (a constant along the last axis is repeated to the earlier last dim, which must be a
multiple of it). So it runs there, and one reshape follows it:

    Add(mm, bias) -> Reshape -> Relu     becomes     Add(mm, bias) -> Relu -> Reshape

and fuse_elementwise then turns the chain into one VXM map instead of two passes over the tensor
with the tensor between them stored. A reshape that keeps the [rows, cols] view is free (lowering
makes it an alias); one that changes it (quantize_int8's unpacking of packed rows) still moves data,
but once, after the fused map. Reshape(Reshape(x)) becomes one Reshape on the way, unless a 0 in the
outer shape copies a dim of the middle tensor.
"""

from __future__ import annotations

import numpy as np

from lpuc.ir.graph import Graph, Node
from lpuc.ops import is_elementwise
from lpuc.passes.builder import NodeBuilder
from lpuc.passes.eliminate_dead_code import eliminate_dead_code


def sink_reshapes(graph: Graph, ctx: object = None) -> Graph:
    out = graph.copy(nodes=[])
    producer: dict[str, Node] = {}
    consumers = graph.consumers()
    outputs = set(graph.outputs)
    for node in graph.nodes:
        new = [node]
        inner = producer.get(node.inputs[0]) if node.op == "Reshape" and node.inputs else None
        if (
            inner is not None
            and inner.op == "Reshape"
            and not node.domain
            and not inner.domain
            and inner.outputs[0] not in outputs
            and len(consumers.get(inner.outputs[0], [])) == 1
            and not _copies_a_dim(node, out)
        ):
            new = [node.with_(inputs=(inner.inputs[0], *node.inputs[1:]))]
        elif (sources := _sources(node, out, producer)) is not None:
            new = _moved(node, out, sources)
        out.nodes.extend(new)
        for n in new:
            for o in n.outputs:
                producer[o] = n
    # The reshapes the ops moved above are dead now; gone, they no longer count as their sources'
    # consumers (fuse_elementwise fuses only single-consumer producers).
    return eliminate_dead_code(out.prune_values())


def _moved(node: Node, graph: Graph, sources: dict[str, str]) -> list[Node]:
    """`node` on the values before its reshapes, and one Reshape of its result to its own shape."""
    b = NodeBuilder(graph, node)
    shape = graph.values[next(iter(sources.values()))].shape
    cols = graph.values[node.outputs[0]].shape[-1]
    inputs = [sources.get(i, i) for i in node.inputs]
    inputs = [
        b.const(f"{k}_row", _as_row(graph.values[i].const, cols, shape[-1])) if i and graph.is_const(i) else i
        for k, i in enumerate(inputs)
    ]
    # The op itself keeps its name, attributes and opset; only its operands and shape change.
    result = graph.add_value(f"{node.name}/rows", shape, graph.values[node.outputs[0]].dtype)
    moved = node.with_(inputs=tuple(inputs), outputs=(result,))
    b.bind_output(b.reshape(result, graph.values[node.outputs[0]].shape), node.outputs[0])
    return [moved, *b.nodes]


def _sources(node: Node, graph: Graph, producer: dict[str, Node]) -> dict[str, str] | None:
    """For a node that can run before its input reshapes: reshaped input -> the value before it."""
    if not is_elementwise(node.op, node.domain) or len(node.outputs) != 1 or node.op == "Where":
        return None
    out_shape = graph.values[node.outputs[0]].shape
    if not out_shape or not out_shape[-1]:
        return None
    sources: dict[str, str] = {}
    for name in node.inputs:
        if not name:
            continue
        v = graph.values[name]
        if v.is_const:
            if not _is_row(np.asarray(v.const), out_shape[-1]):
                return None
            continue
        p = producer.get(name)
        if p is None or p.op != "Reshape" or p.domain or v.shape != out_shape:
            return None
        before = graph.values[p.inputs[0]]
        if before.shape is None or not before.shape or before.dtype != v.dtype:
            return None
        sources[name] = p.inputs[0]
    shapes = {graph.values[s].shape for s in sources.values()}
    if len(shapes) != 1:
        return None
    (before_shape,) = shapes
    repeats, left = divmod(before_shape[-1], out_shape[-1])
    return sources if repeats and not left else None


def _copies_a_dim(reshape: Node, graph: Graph) -> bool:
    """Whether a Reshape's shape may hold a 0 meaning "this dim of the input" (not a constant shape,
    or a constant with a 0 and allowzero unset)."""
    shape = graph.values.get(reshape.inputs[1]) if len(reshape.inputs) > 1 else None
    if shape is None or not shape.is_const:
        return True
    return not reshape.attr("allowzero", 0) and bool((np.asarray(shape.const) == 0).any())


def _is_row(array: np.ndarray, cols: int) -> bool:
    """A scalar, or values along the last dim only (every other dim 1)."""
    return array.size == 1 or (array.ndim >= 1 and array.shape[-1] == cols and array.size == cols)


def _as_row(array: np.ndarray, cols: int, before_cols: int) -> np.ndarray:
    """A scalar as a scalar; a row over `cols` repeated to the earlier last dim `before_cols`."""
    array = np.asarray(array)
    if array.size == 1 and cols != 1:
        return array.reshape(())
    return np.tile(array.reshape(cols), before_cols // cols)
