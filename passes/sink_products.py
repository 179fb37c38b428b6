"""A product read only by a map that also reads later values (none of them products) moves down to
just before that map.

lowering fuses a map into the MM that writes one of its operands (lpuc.lowering.epilogue) only when
the map's other operands are written before the MM's weight group starts in program order. A
residual block with a projection shortcut (ResNet's first block of each stage) computes

    conv3 = MatMulInteger(...)         shortcut = MatMulInteger(x)      (the graph's order)
    part  = map(conv3)                 out      = map(shortcut, part)

so `out` cannot fuse into the shortcut's MM (`part` comes after it) and runs as a map of its own,
reading the int32 product back from SRAM (4 words per row: the slowest maps of ResNet-50 int8).
With the shortcut's MatMulInteger moved after `part`, both maps fuse. The scheduler orders ops by
their paths to the end, not by program order, so the product still runs as early as its operands
and the fused map allow.
"""

from __future__ import annotations

from lpuc.ir.graph import LPUC_DOMAIN, Graph, Node

_PRODUCTS = frozenset({"MatMulInteger", "MatMul"})


def sink_products(graph: Graph, ctx: object = None) -> Graph:
    consumers = graph.consumers()
    position = {n.name: i for i, n in enumerate(graph.nodes)}
    producer_at = {o: i for i, n in enumerate(graph.nodes) for o in n.outputs if o}
    moved: dict[str, list[Node]] = {}  # map name -> the products to put just before it
    for i, node in enumerate(graph.nodes):
        reader = _fused_reader(node, graph, consumers)
        if reader is None:
            continue
        later = [
            graph.nodes[producer_at[v]]
            for v in reader.inputs
            if v and v != node.outputs[0] and producer_at.get(v, -1) > i
        ]
        # A map reading a value made after the product, and no later product it could fuse into.
        if later and not any(n.op in _PRODUCTS and not n.domain for n in later):
            moved.setdefault(reader.name, []).append(node)
    if not moved:
        return graph
    sinking = {n.name for ns in moved.values() for n in ns}
    nodes: list[Node] = []
    for node in graph.nodes:
        if node.name in sinking:
            continue
        nodes.extend(sorted(moved.get(node.name, []), key=lambda n: position[n.name]))
        nodes.append(node)
    return graph.copy(nodes=nodes)


def _fused_reader(node: Node, graph: Graph, consumers: dict) -> Node | None:
    """The one map (lpuc.Fused) that reads a product's result, or None."""
    if node.op not in _PRODUCTS or node.domain or len(node.outputs) != 1:
        return None
    out = node.outputs[0]
    readers = consumers.get(out, [])
    if out in graph.outputs or len(readers) != 1:
        return None
    reader = readers[0]
    return reader if reader.op == "Fused" and reader.domain == LPUC_DOMAIN else None
