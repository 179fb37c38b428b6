"""Transposes that only move dims of size 1, and Flattens, become Reshapes.

A CNN's head pools to [1, 1, 1, C] channels-last; sink_transposes then emits the Transpose to NCHW
[1, C, 1, 1] for the Flatten to [1, C]. All three hold the same values in the same order, but the
middle one's [rows, cols] view is [C, 1] (a row per channel): lowering copies the pooled row into C
rows of one lane on the SXM and back into one row (ResNet-50: 2,212 + 2,241 cycles at the end of
the critical path). As Reshapes, sink_reshapes merges the chain into one Reshape, a view of the
pooled row.
"""

from __future__ import annotations

import numpy as np

from lpuc.ir.graph import Graph, Node
from lpuc.passes.builder import NodeBuilder, replace_nodes


def unit_transposes(graph: Graph, ctx: object = None) -> Graph:
    return replace_nodes(graph, _is_reshape, _as_reshape)


def _as_reshape(b: NodeBuilder) -> None:
    node = b.node
    b.bind_output(b.reshape(node.inputs[0], b.graph.values[node.outputs[0]].shape), node.outputs[0])


def _is_reshape(node: Node, graph: Graph) -> bool:
    """A Transpose keeping the order of its dims larger than 1, or a Flatten (static shapes)."""
    if node.domain or node.op not in ("Transpose", "Flatten") or graph.touches_dynamic(node):
        return False
    shape = graph.values[node.inputs[0]].shape
    if shape is None or graph.values[node.outputs[0]].shape is None:
        return False
    if node.op == "Flatten":
        return True
    perm = [int(p) for p in node.attr("perm") or reversed(range(len(shape)))]
    moved = [p for p in perm if shape[p] != 1]
    return moved == sorted(moved) and int(np.prod(shape)) > 0
