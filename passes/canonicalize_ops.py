"""Small rewrites to one canonical form per operation, so later passes match fewer patterns.

- CastLike(x, like) -> Cast(x, to=dtype of like): `like` only carries a dtype.
- Sum / Mean / Max / Min of a single operand -> Identity.
"""

from __future__ import annotations

import onnx

from lpuc.ir.graph import Graph, Node

_VARIADIC = frozenset({"Sum", "Mean", "Max", "Min"})


def canonicalize_ops(graph: Graph, ctx=None) -> Graph:
    out = graph.copy(nodes=[])
    for node in graph.nodes:
        out.nodes.append(_canonical(node, graph))
    return out.prune_values()


def _canonical(node: Node, graph: Graph) -> Node:
    if node.domain:
        return node
    if node.op == "CastLike":
        to = onnx.helper.np_dtype_to_tensor_dtype(graph.values[node.inputs[1]].dtype)
        attrs = {k: v for k, v in node.attrs.items() if k == "saturate"}
        return node.with_(op="Cast", inputs=node.inputs[:1], attrs={**attrs, "to": int(to)})
    if node.op in _VARIADIC and len([i for i in node.inputs if i]) == 1:
        return node.with_(op="Identity", inputs=tuple(i for i in node.inputs if i), attrs={})
    return node
