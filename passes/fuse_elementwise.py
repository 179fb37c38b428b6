"""Fuse trees of elementwise ops into one `lpuc.Fused` node: one VXM pass instead of several.

(sink_reshapes, just before, moves elementwise ops above the reshapes between them, so that they
join one group.)
A producer joins its consumer's group when it is elementwise, has no other consumer, is not a graph
output, and produces the consumer's full shape (fusing a broadcast producer would repeat its work).
The fused node keeps the group's external inputs and evaluates an expression, a list of steps:

    {"op": "Add", "domain": "", "attrs": {...}, "args": ["i0", "s0"], "dtype": "float32"}

where "iK" is the fused node's K-th input and "sK" the result of step K; the last step is the output.
"""

from __future__ import annotations

from lpuc.ir.graph import LPUC_DOMAIN, Graph, Node
from lpuc.ops import is_elementwise


def _fusable(node: Node, graph: Graph) -> bool:
    if len(node.outputs) != 1 or graph.touches_dynamic(node):
        return False
    return is_elementwise(node.op, node.domain) or _is_fused(node)


def _is_fused(node: Node) -> bool:
    return node.domain == LPUC_DOMAIN and node.op == "Fused"


def fuse_elementwise(graph: Graph, ctx=None) -> Graph:
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
        out.nodes.append(fuse_group(group + [node], graph) if group else node)
    return out.prune_values()


def fuse_group(group: list[Node], graph: Graph) -> Node:
    """One Fused node evaluating `group` (in topological order; its last node's output is the result)."""
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
