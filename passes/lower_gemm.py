"""Gemm -> MatMul (+ Mul by alpha) (+ Add of beta * C), transposes folded into constant operands."""

from __future__ import annotations

import numpy as np

from lpuc.ir.graph import Graph, Node


def lower_gemm(graph: Graph, ctx=None) -> Graph:
    out = graph.copy(nodes=[])
    for node in graph.nodes:
        if node.op != "Gemm" or node.domain or graph.touches_dynamic(node):
            out.nodes.append(node)
            continue
        out.nodes.extend(_lower(node, out))
    return out.prune_values()


def _lower(node: Node, g: Graph) -> list[Node]:
    a, b = node.inputs[0], node.inputs[1]
    c = node.inputs[2] if len(node.inputs) > 2 else ""
    alpha, beta = float(node.attr("alpha", 1.0)), float(node.attr("beta", 1.0))
    y = node.outputs[0]
    dtype = g.values[y].dtype
    nodes: list[Node] = []

    def transposed(name: str, flag: str) -> str:
        if not node.attr(flag, 0):
            return name
        v = g.values[name]
        if v.is_const:
            return g.add_const(f"{name}_T", np.ascontiguousarray(v.const.T))
        t = g.add_value(f"{name}_T", v.shape[::-1], v.dtype)
        nodes.append(Node("Transpose", f"{node.name}/transpose_{flag}", (name,), (t,), {"perm": [1, 0]}))
        return t

    a, b = transposed(a, "transA"), transposed(b, "transB")
    if alpha != 1.0 and g.values[b].is_const:
        b = g.add_const(f"{b}_alpha", (g.values[b].const * alpha).astype(g.values[b].dtype))
        alpha = 1.0
    shape = g.values[y].shape
    has_tail = alpha != 1.0 or (c and beta != 0.0)
    mm = g.add_value(f"{y}_mm", shape, dtype) if has_tail else y
    nodes.append(Node("MatMul", f"{node.name}/matmul", (a, b), (mm,)))
    if alpha != 1.0:
        scaled = g.add_value(f"{y}_alpha", shape, dtype) if c and beta != 0.0 else y
        k = g.add_const(f"{node.name}_alpha", np.array(alpha, dtype=dtype))
        nodes.append(Node("Mul", f"{node.name}/alpha", (mm, k), (scaled,)))
        mm = scaled
    if c and beta != 0.0:
        cv = g.values[c]
        if beta != 1.0:
            if cv.is_const:
                c = g.add_const(f"{c}_beta", (cv.const * beta).astype(cv.dtype))
            else:
                k = g.add_const(f"{node.name}_beta", np.array(beta, dtype=cv.dtype))
                scaled_c = g.add_value(f"{c}_beta", cv.shape, cv.dtype)
                nodes.append(Node("Mul", f"{node.name}/beta", (c, k), (scaled_c,)))
                c = scaled_c
        nodes.append(Node("Add", f"{node.name}/bias", (mm, c), (y,)))
    return nodes
