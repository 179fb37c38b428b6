"""MatMul with a 1-D operand -> 2-D MatMul between reshapes (numpy's rules: [K] is [1, K] on the
left and [K, 1] on the right, and the added dimension is removed from the result)."""

from __future__ import annotations

import numpy as np

from lpuc.ir.graph import Graph, Node


def canonicalize_matmul(graph: Graph, ctx=None) -> Graph:
    out = graph.copy(nodes=[])
    for node in graph.nodes:
        if node.op != "MatMul" or node.domain or graph.touches_dynamic(node):
            out.nodes.append(node)
            continue
        a, b = (graph.values[i] for i in node.inputs[:2])
        if len(a.shape) >= 2 and len(b.shape) >= 2:
            out.nodes.append(node)
            continue
        out.nodes.extend(_promote(node, out))
    return out.prune_values()


def _reshape(g: Graph, nodes: list[Node], name: str, src: str, shape: tuple[int, ...], dst: str | None = None) -> str:
    dst = dst or g.add_value(f"{src}_{name}", shape, g.values[src].dtype)
    target = g.add_const(f"{dst}_shape", np.array(shape, dtype=np.int64))
    nodes.append(Node("Reshape", f"{dst}/{name}", (src, target), (dst,), {}, "", 21))
    return dst


def _promote(node: Node, g: Graph) -> list[Node]:
    a, b, y = (g.values[n] for n in (node.inputs[0], node.inputs[1], node.outputs[0]))
    nodes: list[Node] = []
    left = node.inputs[0] if len(a.shape) >= 2 else _reshape(g, nodes, "row", node.inputs[0], (1, a.shape[0]))
    right = node.inputs[1] if len(b.shape) >= 2 else _reshape(g, nodes, "col", node.inputs[1], (b.shape[0], 1))
    la, lb = g.values[left].shape, g.values[right].shape
    batch = np.broadcast_shapes(la[:-2], lb[:-2])
    full = g.add_value(f"{node.outputs[0]}_2d", (*batch, la[-2], lb[-1]), y.dtype)
    nodes.append(Node("MatMul", node.name, (left, right), (full,), {}, "", 21))
    _reshape(g, nodes, "squeeze", full, y.shape, dst=node.outputs[0])
    return nodes
