"""Which constant lookup tables stay in host memory: only when the program overflows SRAM.

A table read only by Gathers (an embedding) need not be on the chip: the host gathers the rows and
only those cross PCIe (one transfer of ids out and of rows back, costed by the host op). On-chip
SRAM is always faster, so tables move only when the constants do not fit, largest first, until they
do (BERT-base in fp16: the 30522 x 768 word embeddings); and one more at a time while the
constants fit but the constants and the live data together do not (`one_more_table`, after the
allocation fails).
"""

from __future__ import annotations

from collections import Counter

from lpuc.ir.graph import Graph
from lpuc.ir.tiled import TiledProgram
from lpuc.schedule.packing import const_words, pack_constants
from lpuc.target import Target


def tables_for_host(graph: Graph, tiled: TiledProgram, target: Target) -> frozenset[str]:
    over = const_words(tiled, pack_constants(tiled, target.lanes)) * target.word_bytes - target.sram_bytes
    if over <= 0:
        return frozenset()
    chosen: list[str] = []
    for name, nbytes in sorted(table_bytes(graph, tiled, target).items(), key=lambda kv: (-kv[1], kv[0])):
        if over <= 0:
            break
        chosen.append(name)
        over -= nbytes
    return frozenset(chosen)


def one_more_table(graph: Graph, tiled: TiledProgram, target: Target) -> frozenset[str]:
    """The tables in host memory plus the largest one still in SRAM, or nothing if none is left."""
    on_host = {b.tensor for b in tiled.buffers if b.host and b.is_const}
    movable = [(-nbytes, name) for name, nbytes in table_bytes(graph, tiled, target).items() if nbytes]
    return frozenset(on_host | {min(movable)[1]}) if movable else frozenset()


def table_bytes(graph: Graph, tiled: TiledProgram, target: Target) -> dict[str, int]:
    """SRAM bytes of every constant read only as the table of on-chip Gathers (shared tiles excluded)."""
    users = graph.consumers()
    holders = Counter(b.const_key for b in tiled.buffers if b.is_const)  # buffers per content
    out = {}
    for name, value in graph.values.items():
        readers = users.get(name, [])
        if not value.is_const or not readers or name in graph.outputs or name not in tiled.tensors:
            continue
        if not all(n.op == "Gather" and not n.domain and n.inputs[0] == name for n in readers):
            continue
        if any(name in n.inputs[1:] or graph.touches_dynamic(n) for n in readers):
            continue
        tiles = [tiled.buffers[b] for b in tiled.tensors[name].tiles()]
        mine = Counter(b.const_key for b in tiles)
        # Tiles whose content another tensor also holds stay in SRAM anyway: they save nothing.
        own = {b.const_key: b.words for b in tiles if holders[b.const_key] == mine[b.const_key]}
        out[name] = sum(own.values()) * target.word_bytes
    return out
