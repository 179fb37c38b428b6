"""Elementwise ops on broadcast values compute on the values before the broadcast.

Hugging Face BERT exports its padding mask as a [B, 1, S, S] float tensor: And(all-true [B, 1, S, 1],
mask [B, 1, 1, S]), Expand to [B, 1, S, S], Where(.., 0, min). Every row of it is the same row, but as
a [S, S] tile every head's scaled-and-masked scores (a map fused into its Q @ K^T) stream the whole
float32 tile: 4 words a row, both ports of its slice, so the 12 heads' products ran one at a time.
Computed on [B, 1, 1, S] and broadcast by the map that adds it (numpy broadcasting), the mask is one
row: a row operand, which a softmax may also take into its prologue (passes/fuse_softmax).

The rewrite tracks, for each value, a narrower value it is a broadcast of:
- Expand(x, shape) is a broadcast of x (of what x is a broadcast of);
- And(all true, x), Or(all false, x) and Mul(all ones, x) are broadcasts of x (exact identities);
- an elementwise op of such values (and of constants) whose operands before their broadcasts
  broadcast to a smaller shape runs on those (fewer elements) and its result is broadcast (Expand)
  to the original shape, for readers that need it whole;
- an elementwise op whose other operands give the result's shape already reads the narrow values
  (its own broadcasting replaces the Expand).
Unread Expands and identity ops are then left to eliminate_dead_code. Numerics are unchanged: each
element is computed by the same op on the same operand values.
"""

from __future__ import annotations

import numpy as np

from lpuc.ir.graph import Graph, Node
from lpuc.passes.eliminate_dead_code import eliminate_dead_code

# Elementwise ops whose every input broadcasts against the others (numpy rules), one result.
_BROADCASTING = frozenset(
    {
        "Where",
        "And",
        "Or",
        "Xor",
        "Not",
        "Cast",
        "Add",
        "Sub",
        "Mul",
        "Div",
        "Equal",
        "Less",
        "Greater",
        "Neg",
    }
)
# Ops with a constant operand that leaves the other unchanged: the value of that constant.
_IDENTITIES = {"And": True, "Or": False, "Mul": 1}


def narrow_broadcasts(graph: Graph, ctx: object = None) -> Graph:
    out = graph.copy(nodes=[])
    readers, outputs = graph.consumers(), set(graph.outputs)
    narrow: dict[str, str] = {}  # value -> a narrower value it is a broadcast of
    changed = False
    for node in graph.nodes:
        if node.domain or not node.outputs or not node.outputs[0] or graph.touches_dynamic(node):
            out.nodes.append(node)
            continue
        result = node.outputs[0]
        if node.op == "Expand" and _static_shape(graph, node.inputs[1]):
            narrow[result] = narrow.get(node.inputs[0], node.inputs[0])
            out.nodes.append(node)
            continue
        source = _identity_operand(node, graph)
        if source is not None:
            narrow[result] = narrow.get(source, source)
            out.nodes.append(node)
            continue
        if node.op not in _BROADCASTING or len(node.outputs) != 1:
            out.nodes.append(node)
            continue
        inputs = [narrow.get(i, i) if i else i for i in node.inputs]
        if inputs == list(node.inputs):
            out.nodes.append(node)
            continue
        shape = tuple(graph.values[result].shape)
        small = tuple(np.broadcast_shapes(*[tuple(out.values[i].shape) for i in inputs if i]))
        if small == shape:  # the op's own broadcasting gives the result's shape
            out.nodes.append(node.with_(inputs=tuple(inputs)))
            changed = True
            continue
        if result in outputs or not all(_takes_narrow(r) for r in readers.get(result, [])):
            out.nodes.append(node)  # its readers would read the broadcast copy: no gain
            continue
        narrowed = out.add_value(f"{result}/narrow", small, graph.values[result].dtype)
        out.nodes.append(node.with_(name=f"{node.name}/narrow", inputs=tuple(inputs), outputs=(narrowed,)))
        target = out.add_const(f"{result}/shape", np.array(shape, np.int64))
        out.nodes.append(Node("Expand", f"{node.name}/broadcast", (narrowed, target), (result,), {}, "", 13))
        narrow[result] = narrowed
        changed = True
    return eliminate_dead_code(out.prune_values()) if changed else graph


def _takes_narrow(reader: Node) -> bool:
    """Whether `reader` can read a narrower value in place of a broadcast one (so the broadcast copy
    of a narrowed result goes unread)."""
    return not reader.domain and (reader.op in _BROADCASTING or reader.op == "Expand")


def _static_shape(graph: Graph, name: str) -> bool:
    return bool(name) and graph.is_const(name)


def _identity_operand(node: Node, graph: Graph) -> str | None:
    """The operand `node` passes through unchanged (broadcast to its result's shape), if its other
    operand is a constant of the op's identity element and the result has that operand's dtype."""
    if node.op not in _IDENTITIES or len(node.inputs) != 2 or not all(node.inputs):
        return None
    for const, other in (node.inputs, node.inputs[::-1]):
        if not graph.is_const(const) or graph.is_const(other):
            continue
        c = np.asarray(graph.values[const].const)
        if c.size and (c == _IDENTITIES[node.op]).all() and graph.values[other].dtype == c.dtype:
            if graph.values[node.outputs[0]].dtype == c.dtype:
                return other
    return None
