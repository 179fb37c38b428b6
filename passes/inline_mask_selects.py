"""A select between two scalar constants by a narrow condition, read by maps, computed in each map.

Hugging Face BERT builds its attention mask as Where(mask [1, 1, S, S] bool, 0.0, finfo.min): one
float32 tensor that every head's scale-and-mask map adds to its scores (fused into Q @ K^T,
lpuc.lowering.epilogue). Float32 is 4 bytes a lane: streamed at the fp16 MM's rate of a row every 2
cycles, each map reads 2 words a cycle, both banks of the mask's slice, for its whole duration. When
SRAM is tight the maps read the one mask tile (legalize_broadcast.read_repeated), so the 12 heads'
Q @ K^T ran one after another (BERT-base fp16, layer 0: 12 x ~400 cycles, the MXM mostly idle).
Each reading map now evaluates the select itself, one more ALU op in its expression, and reads the
1-byte condition: a quarter of the words, one port. The result is the same select of the same
constants, so the rewrite is exact.

Only where the MXM takes two or more cycles a row (fp16, fp32): an epilogue then holds
ceil(ALU ops / cycles a row) ALUs, one for the mask's Add with or without the select. int8 streams a
row a cycle, so the select would hold one more ALU in each of the 12 maps beside the softmaxes
(BERT-base int8: 206,428 cycles without it, 217,501 with it).

Rewritten: Where(c, a, b) with a and b scalar constants, c narrower than the result, not a graph
output, read only by elementwise (or fused) nodes; each reader becomes an lpuc.Fused node whose
expression starts with the select (fuse_elementwise then merges it with its neighbours as usual).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lpuc.ir.graph import Graph, Node
from lpuc.ops import is_elementwise
from lpuc.passes.fuse_elementwise import fuse_group

if TYPE_CHECKING:
    from lpuc.passes.pipeline import PassContext


def inline_mask_selects(graph: Graph, ctx: PassContext | None = None) -> Graph:
    if ctx is None or ctx.target.mxm_mode(ctx.precision).cycles_per_row < 2:
        return graph  # (see the module docstring: int8)
    consumers = graph.consumers()
    outputs = set(graph.outputs)
    selects = {n.name: n for n in graph.nodes if _inlinable(n, graph, consumers, outputs)}
    if not selects:
        return graph
    producers = graph.producers()
    out = graph.copy(nodes=[])
    for node in graph.nodes:
        if node.name in selects:
            continue  # recomputed by each of its readers
        inlined = [producers[i] for i in dict.fromkeys(node.inputs) if i and producers.get(i) is not None]
        inlined = [p for p in inlined if p.name in selects]
        out.nodes.append(fuse_group([*inlined, node], graph) if inlined else node)
    return out.prune_values()


def _inlinable(node: Node, graph: Graph, consumers: dict[str, list[Node]], outputs: set[str]) -> bool:
    if node.domain or node.op != "Where" or len(node.inputs) != 3 or graph.touches_dynamic(node):
        return False
    cond, a, b = node.inputs
    result = node.outputs[0]
    if result in outputs or not all(graph.is_const(v) and graph.values[v].size == 1 for v in (a, b)):
        return False
    if graph.values[cond].dtype.itemsize >= graph.values[result].dtype.itemsize:
        return False  # reading the condition would save nothing
    readers = consumers.get(result, [])
    return bool(readers) and all(_elementwise(r, graph) for r in readers)


def _elementwise(node: Node, graph: Graph) -> bool:
    fused = node.domain and node.op == "Fused"
    return (
        len(node.outputs) == 1
        and not graph.touches_dynamic(node)
        and (is_elementwise(node.op, node.domain) or bool(fused))
    )
