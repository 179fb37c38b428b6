"""Gemm -> MatMul (+ Mul by alpha) (+ Add of beta * C), transposes folded into constant operands."""

from __future__ import annotations

from lpuc.ir.graph import Graph, Node
from lpuc.passes.builder import NodeBuilder, replace_nodes


def lower_gemm(graph: Graph, ctx: object = None) -> Graph:
    return replace_nodes(graph, _lowerable, _lower)


def _lowerable(node: Node, graph: Graph) -> bool:
    return node.op == "Gemm" and not node.domain and not graph.touches_dynamic(node)


def _lower(b: NodeBuilder) -> None:
    node = b.node
    alpha, beta = float(node.attr("alpha", 1.0)), float(node.attr("beta", 1.0))
    a, w = (_operand(b, k, flag) for k, flag in ((0, "transA"), (1, "transB")))
    if b.graph.is_const(w):  # scale the constant weights instead of every result
        w, alpha = b.scaled(w, alpha, "alpha"), 1.0
    y = b.scaled(b.matmul(a, w), alpha, "alpha")
    c = node.inputs[2] if len(node.inputs) > 2 else ""
    if c and beta != 0.0:
        y = b.binary("Add", y, b.scaled(c, beta, "beta"), "bias")
    b.bind_output(y, node.outputs[0])


def _operand(b: NodeBuilder, index: int, flag: str) -> str:
    """Input `index`, transposed if the node's `flag` says so (a constant one stays a constant)."""
    x = b.node.inputs[index]
    return b.transpose(x, (1, 0), f"transpose_{flag}") if b.node.attr(flag, 0) else x
