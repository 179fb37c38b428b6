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
slice keeps up): an MM or a kernel would cut its own work at the shorter tiles instead. An exception
is a product whose activation comes in row segments (lpuc.lowering.row_segments: a LayerNorm's
result) that the shorter tiles end on: its MMs are cut there already, so its result is stacked at
no extra MM (GPT-2's MLP up projection, 128 x 3072 fp32 read by the bias-and-GELU map: 64-row MMs
wrote 128-row tiles, which the map read at half its row rate through one slice's two banks).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import numpy as np

from lpuc.dtypes import words_per_row
from lpuc.ir.graph import Graph, Node
from lpuc.lowering.builder import default_block_rows, stacked_split, view_of
from lpuc.lowering.row_segments import MIN_ROWS, alias_root
from lpuc.target import Target


def stacked_values(
    graph: Graph,
    unit_of_node: dict[str, str],
    target: Target,
    skip: set[str],
    segments: Mapping[str, int] | None = None,
    fp16_values: Collection[str] = (),
) -> set[str]:
    """Names of the values to store in stacked tiles (see module doc); `skip`: values tiled otherwise
    already (row segments, fp16 storage); `segments`: rows per tile of the row-segmented values;
    `fp16_values`: float32 values stored as fp16 (a map's result among them writes half the words)."""
    segments = segments or {}
    consumers = graph.consumers()
    producers = {o: n for n in graph.nodes for o in n.outputs if o}
    outputs = set(graph.outputs)
    chosen = set()
    for name, v in graph.values.items():
        if name in skip or name in outputs or v.is_const or v.is_dynamic or v.shape is None:
            continue
        split, rows = stacked_split(v.dtype, target, name in graph.inputs), view_of(v.shape)[0]
        if split < 2 or rows < 2:
            continue
        # A value shorter than a tile is cut only into halves that stream long enough to gain more
        # than the extra tile costs (a 2-row LSTM cell state in two 1-row tiles: 11,137 -> 11,315
        # cycles).
        if rows < default_block_rows(target) and rows // split < MIN_ROWS:
            continue
        producer = producers.get(name)
        if producer is None and name not in graph.inputs:
            continue
        if producer is not None and unit_of_node.get(producer.name) != "MAP":
            if not _mms_cut_already(producer, v, producers, unit_of_node, segments, target):
                continue
        users = consumers.get(name, [])
        whole = (_reads_whole(u, name, v.shape, unit_of_node, graph, target, fp16_values) for u in users)
        if users and all(whole):
            chosen.add(name)
    return chosen


def _mms_cut_already(
    producer: Node,
    v,
    producers: dict[str, Node],
    unit_of_node: dict[str, str],
    segments: Mapping[str, int],
    target: Target,
) -> bool:
    """Whether `producer` is a product whose MMs already end where the stacked tiles of its result `v`
    would: its activation is row-segmented and the stacked tile (the one default tile of a value no
    taller than a tile, cut in stacked_split) is a whole number of segments."""
    if unit_of_node.get(producer.name) != "MXM":
        return False
    seg = segments.get(alias_root(producer.inputs[0], producers, unit_of_node))
    rows, split = view_of(v.shape)[0], stacked_split(v.dtype, target)
    if seg is None or rows > default_block_rows(target) or rows % split:
        return False
    return (rows // split) % seg == 0


def _reads_whole(
    user,
    name: str,
    shape,
    unit_of_node: dict[str, str],
    graph: Graph,
    target: Target,
    fp16_values: Collection[str] = (),
) -> bool:
    """Whether `user` is a map reading `name` tile for tile into a result a slice keeps up with."""
    if unit_of_node.get(user.name) != "MAP":
        return False
    outs = [o for o in user.outputs if o]
    if len(outs) != 1:
        return False
    out = graph.values[outs[0]]
    stored = np.float16 if outs[0] in fp16_values else out.dtype
    return tuple(out.shape or ()) == tuple(shape) and words_per_row(stored) <= target.mem_banks
