"""MatMul with a 1-D operand -> 2-D MatMul between reshapes (numpy's rules: [K] is [1, K] on the
left and [K, 1] on the right, and the added dimension is removed from the result). A MatMul over an
empty inner dimension (K = 0) sums nothing: its result is a constant of zeros."""

from __future__ import annotations

import numpy as np

from lpuc.ir.graph import Graph, Node
from lpuc.passes.builder import NodeBuilder, replace_nodes


def canonicalize_matmul(graph: Graph, ctx: object = None) -> Graph:
    return replace_nodes(replace_nodes(graph, _empty_inner, _zeros), _has_vector_operand, _promote)


def _empty_inner(node: Node, graph: Graph) -> bool:
    if node.op != "MatMul" or node.domain or graph.touches_dynamic(node):
        return False
    return graph.values[node.inputs[0]].shape[-1:] == (0,)


def _zeros(b: NodeBuilder) -> None:
    out = b.node.outputs[0]
    b.bind_output(b.const("zeros", np.zeros(b.shape(out), dtype=b.dtype(out))), out)


def _has_vector_operand(node: Node, graph: Graph) -> bool:
    if node.op != "MatMul" or node.domain or graph.touches_dynamic(node):
        return False
    return any(len(graph.values[i].shape) < 2 for i in node.inputs[:2])


def _promote(b: NodeBuilder) -> None:
    left, right = b.node.inputs[:2]
    if len(b.shape(left)) < 2:
        left = b.reshape(left, (1, *b.shape(left)), "row")
    if len(b.shape(right)) < 2:
        right = b.reshape(right, (*b.shape(right), 1), "col")
    out = b.node.outputs[0]
    b.bind_output(b.reshape(b.matmul(left, right), b.shape(out), "squeeze"), out)
