"""Remove ops that pass their input through unchanged (Identity, inference Dropout, no-op Cast)."""

from __future__ import annotations

import numpy as np

from lpuc.ir.graph import Graph, Node


def _passthrough_source(node: Node, graph: Graph, used: set[str]) -> str | None:
    """The input this node forwards unchanged, or None if it computes something (`used`: the values
    some node or the graph's outputs read)."""
    if node.domain:
        return None
    if node.op == "Identity":
        return node.inputs[0]
    if node.op == "Cast" and graph.values[node.inputs[0]].dtype == graph.values[node.outputs[0]].dtype:
        return node.inputs[0]
    if node.op == "Dropout":
        training = node.inputs[2] if len(node.inputs) > 2 else ""
        # An exporter names the mask output even when nothing reads it (torch does): only a read
        # mask keeps the node.
        mask_used = len(node.outputs) > 1 and node.outputs[1] in used
        if mask_used or (training and not _is_false_const(graph, training)):
            return None
        return node.inputs[0]
    return None


def _is_false_const(graph: Graph, name: str) -> bool:
    v = graph.values[name]
    return v.is_const and not bool(np.asarray(v.const).reshape(-1)[0])


def eliminate_identity(graph: Graph, ctx=None) -> Graph:
    rename: dict[str, str] = {}
    out = graph.copy(nodes=[])
    outputs = set(graph.outputs)
    used = outputs | {i for node in graph.nodes for i in node.inputs}
    for node in graph.nodes:
        node = node.with_(inputs=tuple(rename.get(i, i) for i in node.inputs))
        src = _passthrough_source(node, graph, used)
        if src is not None and node.outputs[0] not in outputs:
            rename[node.outputs[0]] = src
            continue
        out.nodes.append(node)
    return out.prune_values()
