"""Elementwise ops moved above the free reshapes that feed them, so they fuse with their producers.

A Reshape that keeps a tensor's [rows, cols] view (the same last dim) moves no data: lowering makes
it an alias. An elementwise op whose tensor operands are all such reshapes of same-shaped values,
and whose other operands are scalars or rows over the last dim, computes the same values on the
values before the reshapes. So it runs there, and one reshape follows it:

    Add(mm, bias) -> Reshape -> Relu     becomes     Add(mm, bias) -> Relu -> Reshape

which fuse_elementwise then turns into one VXM map instead of two passes over the tensor.
"""

from __future__ import annotations

import numpy as np

from lpuc.ir.graph import Graph, Node
from lpuc.lowering.builder import view_of
from lpuc.ops import is_elementwise
from lpuc.passes.builder import NodeBuilder
from lpuc.passes.eliminate_dead_code import eliminate_dead_code


def sink_reshapes(graph: Graph, ctx: object = None) -> Graph:
    out = graph.copy(nodes=[])
    producer: dict[str, Node] = {}
    for node in graph.nodes:
        sources = _sources(node, out, producer)
        if sources is None:
            out.nodes.append(node)
            new = [node]
        else:
            b = NodeBuilder(out, node)
            inputs = [sources.get(i, i) for i in node.inputs]
            shape = out.values[next(iter(sources.values()))].shape
            cols = shape[-1]
            inputs = [
                b.const(f"{k}_row", _as_row(out.values[i].const, cols)) if i and out.is_const(i) else i
                for k, i in enumerate(inputs)
            ]
            # The op itself keeps its name, attributes and opset; only its operands and shape change.
            result = out.add_value(f"{node.name}/rows", shape, out.values[node.outputs[0]].dtype)
            moved = node.with_(inputs=tuple(inputs), outputs=(result,))
            b.bind_output(b.reshape(result, out.values[node.outputs[0]].shape), node.outputs[0])
            new = [moved, *b.nodes]
            out.nodes.extend(new)
        for n in new:
            for o in n.outputs:
                producer[o] = n
    # The reshapes the ops moved above are dead now; gone, they no longer count as their sources'
    # consumers (fuse_elementwise fuses only single-consumer producers).
    return eliminate_dead_code(out.prune_values())


def _sources(node: Node, graph: Graph, producer: dict[str, Node]) -> dict[str, str] | None:
    """For a node that can run before its input reshapes: reshaped input -> the value before it."""
    if not is_elementwise(node.op, node.domain) or len(node.outputs) != 1 or node.op == "Where":
        return None
    out_shape = graph.values[node.outputs[0]].shape
    if not out_shape:
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
        if before.shape is None or view_of(before.shape) != view_of(v.shape) or before.dtype != v.dtype:
            return None
        sources[name] = p.inputs[0]
    shapes = {graph.values[s].shape for s in sources.values()}
    return sources if len(shapes) == 1 else None


def _is_row(array: np.ndarray, cols: int) -> bool:
    """A scalar, or values along the last dim only (every other dim 1)."""
    return array.size == 1 or (array.ndim >= 1 and array.shape[-1] == cols and array.size == cols)


def _as_row(array: np.ndarray, cols: int) -> np.ndarray:
    array = np.asarray(array)
    return array.reshape(()) if array.size == 1 and cols != 1 else array.reshape(cols)
