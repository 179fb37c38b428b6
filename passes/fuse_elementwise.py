"""Fuse trees of elementwise ops into one `lpuc.Fused` node: one VXM pass instead of several.

An elementwise op on a Reshape of an elementwise result (with scalar other operands) moves before
the Reshape first (`hoist_over_reshapes`), so that it can join that result's group.
A producer joins its consumer's group when it is elementwise, has no other consumer, is not a graph
output, and produces the consumer's full shape (fusing a broadcast producer would repeat its work).
The fused node keeps the group's external inputs and evaluates an expression, a list of steps:

    {"op": "Add", "domain": "", "attrs": {...}, "args": ["i0", "s0"], "dtype": "float32"}

where "iK" is the fused node's K-th input and "sK" the result of step K; the last step is the output.
"""

from __future__ import annotations

import numpy as np

from lpuc.ir.graph import LPUC_DOMAIN, Graph, Node
from lpuc.ops import is_elementwise


def _fusable(node: Node, graph: Graph) -> bool:
    if len(node.outputs) != 1 or graph.touches_dynamic(node):
        return False
    return is_elementwise(node.op, node.domain) or _is_fused(node)


def _is_fused(node: Node) -> bool:
    return node.domain == LPUC_DOMAIN and node.op == "Fused"


def fuse_elementwise(graph: Graph, ctx=None) -> Graph:
    graph = hoist_over_reshapes(graph)
    consumers = graph.consumers()
    producers = graph.producers()
    outputs = set(graph.outputs)
    # absorbed[name] = consumer node that takes over the producer of `name`
    parent: dict[str, Node] = {}
    for node in graph.nodes:
        if not _fusable(node, graph):
            continue
        out_shape = graph.values[node.outputs[0]].shape
        for name in dict.fromkeys(i for i in node.inputs if i):
            p = producers.get(name)
            if (
                p is not None
                and _fusable(p, graph)
                and name not in outputs
                and len(consumers.get(name, [])) == 1
                and graph.values[name].shape == out_shape
            ):
                parent[p.name] = node
    if not parent:
        return graph

    members: dict[str, list[Node]] = {}
    for node in graph.nodes:  # topological order, so members come before their root
        if node.name in parent:
            root = parent[node.name]
            while root.name in parent:
                root = parent[root.name]
            members.setdefault(root.name, []).append(node)

    out = graph.copy(nodes=[])
    for node in graph.nodes:
        if node.name in parent:
            continue
        group = members.get(node.name)
        out.nodes.append(_fuse(group + [node], graph) if group else node)
    return out.prune_values()


def _fuse(group: list[Node], graph: Graph) -> Node:
    inputs: list[str] = []
    ref_of: dict[str, str] = {}  # value computed inside the group -> "sK"
    steps: list[dict] = []

    def ref(name: str) -> str:
        if not name:
            return "-"  # missing optional operand
        if name in ref_of:
            return ref_of[name]
        if name not in inputs:
            inputs.append(name)
        return f"i{inputs.index(name)}"

    for node in group:
        local: list[str] = []
        for step in node_steps(node, graph):
            args = [
                a if a == "-" else ref(node.inputs[int(a[1:])]) if a[0] == "i" else local[int(a[1:])]
                for a in step["args"]
            ]
            steps.append({**step, "args": args})
            local.append(f"s{len(steps) - 1}")
        ref_of[node.outputs[0]] = local[-1]
    name = "+".join(n.name for n in group)
    return Node("Fused", name, tuple(inputs), group[-1].outputs, {"expr": steps}, LPUC_DOMAIN, 1)


def node_steps(node: Node, graph: Graph) -> list[dict]:
    """The expression of an elementwise or fused node, in node-local references."""
    if _is_fused(node):
        return list(node.attrs["expr"])
    return [
        {
            "op": node.op,
            "domain": node.domain,
            "attrs": dict(node.attrs),
            "args": [f"i{k}" if name else "-" for k, name in enumerate(node.inputs)],
            "dtype": graph.values[node.outputs[0]].dtype.name,
            "opset": node.opset,
        }
    ]


def hoist_over_reshapes(graph: Graph) -> Graph:
    """op(Reshape(y)) -> Reshape(op(y)) for an elementwise op when y comes from an elementwise op and
    only that Reshape reads it: the op can then join y's group. Its other operands must be scalars,
    or constants along the last axis that the Reshape keeps whole (its last dim divides y's: they
    are repeated to y's last dim). Reshape(Reshape(x)) becomes one Reshape on the way.
    (lower_conv's NHWC Reshape, and quantize_int8's unpacking one, would otherwise keep a
    convolution's bias add apart from the activation and requantization after it, and the tensor
    between them would be stored.)"""
    changed = True
    while changed:
        changed = False
        producers, consumers = graph.producers(), graph.consumers()
        outputs = set(graph.outputs)
        nodes: list[Node] = []
        for node in graph.nodes:
            first = producers.get(node.inputs[0]) if node.inputs and node.inputs[0] else None
            if changed or first is None or first.op != "Reshape" or first.domain:
                nodes.append(node)
                continue
            if node.op == "Reshape" and not node.domain and len(consumers[first.outputs[0]]) == 1:
                # Reshape(Reshape(x)) -> Reshape(x), unless a 0 in the shape copies a dim of the
                # middle tensor (which x need not have)
                if first.outputs[0] not in outputs and not _copies_a_dim(node, graph):
                    nodes.remove(first)
                    nodes.append(node.with_(inputs=(first.inputs[0], *node.inputs[1:])))
                    changed = True
                    continue
            operands = _hoisted_operands(node, first, graph, producers, consumers, outputs)
            if operands is None:
                nodes.append(node)
                continue
            y = first.inputs[0]
            out = graph.values[node.outputs[0]]
            moved = graph.add_value(f"{node.outputs[0]}/before_reshape", graph.values[y].shape, out.dtype)
            nodes.remove(first)
            nodes.append(node.with_(inputs=(y, *operands), outputs=(moved,)))
            nodes.append(first.with_(inputs=(moved, *first.inputs[1:]), outputs=node.outputs))
            changed = True
        graph = graph.copy(nodes=nodes).prune_values()
    return graph


def _copies_a_dim(reshape: Node, graph: Graph) -> bool:
    """Whether a Reshape's shape may hold a 0 meaning "this dim of the input" (not a constant shape,
    or a constant with a 0 and allowzero unset)."""
    shape = graph.values[reshape.inputs[1]] if len(reshape.inputs) > 1 else None
    if shape is None or not shape.is_const:
        return True
    return not reshape.attr("allowzero", 0) and bool((np.asarray(shape.const) == 0).any())


def _hoisted_operands(
    node: Node, reshape: Node, graph: Graph, producers, consumers, outputs
) -> list[str] | None:
    """The other operands of `node` once it moves before `reshape`, or None if it cannot."""
    if not _fusable(node, graph):
        return None
    y, r_out = reshape.inputs[0], reshape.outputs[0]
    p = producers.get(y)
    if p is None or not _fusable(p, graph) or y in outputs or r_out in outputs:
        return None
    if len(consumers.get(y, [])) != 1 or len(consumers.get(r_out, [])) != 1:
        return None
    if graph.values[node.outputs[0]].shape != graph.values[r_out].shape:
        return None
    y_shape, r_shape = graph.values[y].shape, graph.values[r_out].shape
    operands = []
    for name in node.inputs[1:]:
        v = graph.values[name] if name else None
        if v is None or (v.size == 1 and len(v.shape) <= len(y_shape)):
            operands.append(name)
            continue
        # A constant along the last axis: [..., 1, N] against [..., N] after the Reshape.
        last = r_shape[-1] if r_shape else 0
        along_last = v.is_const and v.shape and v.shape[-1] == last and v.size == last
        if not (along_last and y_shape and last and y_shape[-1] % last == 0):
            return None
        tiled = np.tile(v.const.reshape(-1), y_shape[-1] // last)
        operands.append(graph.add_const(f"{name}/tiled", tiled))
    return operands
