"""Stacked rows: wide values that only maps read, cut into shorter tiles on several slices.

A tile lives in one MEM slice, whose banks deliver `mem.banks` words per cycle; a row of a 4-byte value
is four words, so a map reading one such tile streams a row every other cycle and holds its chained
ALUs twice as long as its expression needs (the input quantize of an int8 GEMM: 16.9k of its 25.2k
cycles). Cut into tiles of 1/`split` the rows (placement puts them on different slices), one map reads
the tiles of its result's rows side by side as one stacked operand (lowering: attrs["operands"] names
a list of reads, rows in order) at `split` times the words per cycle: a row per cycle, as lpuc.cost
charges MEM bandwidth per slice. A model input's `split` is its words per row (builder.stacked_split):
each slice streams one word a cycle through one bank and keeps the other for the weight loads and
MMs beside it. Costs are unchanged rules; only where the words live moves.

Only values that the model inputs or a map produce, that every consumer reads as a whole tile, and
whose consumers are all maps with results of at most `mem.banks` words per row (so the result's
slice keeps up): an MM or a kernel would cut its own work at the shorter tiles instead.
"""

from __future__ import annotations

from lpuc.dtypes import words_per_row
from lpuc.ir.graph import Graph
from lpuc.lowering.builder import stacked_split, view_of
from lpuc.target import Target


def stacked_values(graph: Graph, unit_of_node: dict[str, str], target: Target, skip: set[str]) -> set[str]:
    """Names of the values to store in stacked tiles (see module doc); `skip`: values tiled otherwise
    already (row segments, fp16 storage)."""
    consumers = graph.consumers()
    producers = {o: n for n in graph.nodes for o in n.outputs if o}
    outputs = set(graph.outputs)
    chosen = set()
    for name, v in graph.values.items():
        if name in skip or name in outputs or v.is_const or v.is_dynamic or v.shape is None:
            continue
        if stacked_split(v.dtype, target) < 2 or view_of(v.shape)[0] < 2:
            continue
        producer = producers.get(name)
        if producer is None and name not in graph.inputs:
            continue
        if producer is not None and unit_of_node.get(producer.name) != "MAP":
            continue
        users = consumers.get(name, [])
        if users and all(_reads_whole(u, name, v.shape, unit_of_node, graph, target) for u in users):
            chosen.add(name)
    return chosen


def _reads_whole(user, name: str, shape, unit_of_node: dict[str, str], graph: Graph, target: Target) -> bool:
    """Whether `user` is a map reading `name` tile for tile into a result a slice keeps up with."""
    if unit_of_node.get(user.name) != "MAP":
        return False
    outs = [o for o in user.outputs if o]
    if len(outs) != 1:
        return False
    out = graph.values[outs[0]]
    return tuple(out.shape or ()) == tuple(shape) and words_per_row(out.dtype) <= target.mem_banks
