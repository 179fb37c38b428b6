"""Drop nodes none of whose outputs reach a graph output."""

from __future__ import annotations

from lpuc.ir.graph import Graph


def eliminate_dead_code(graph: Graph, ctx=None) -> Graph:
    live = set(graph.outputs)
    kept = []
    for node in reversed(graph.nodes):
        if any(o in live for o in node.outputs if o):
            kept.append(node)
            live.update(i for i in node.inputs if i)
    return graph.copy(nodes=reversed(kept)).prune_values()
