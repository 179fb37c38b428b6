"""Pool slabs: shorter result tiles for a channels-last MaxPool that reads several tile rows.

A windowed pool is one instruction per tile row of its result (lpuc.lowering.stream). A stride-2
pool's result is a quarter of its input, so a result of one tile row (MTCNN ONet's second pool:
21x21 -> 10x10 pixels, 441 input rows in three tiles, 100 result rows in one) streams all the input
rows in one instruction on one VXM ALU group and waits for the last input tile. Cutting the result
into as many tiles as the input has makes each its own slab: the slabs read only their windows'
input rows, run side by side on the ALU groups, and the first starts before the last input tile is
written. Costs are unchanged rules of lpuc.cost; only the instruction boundaries move (the slabs
together read the rows their windows share twice).
"""

from __future__ import annotations

import math

from lpuc.ir.graph import LPUC_DOMAIN, Graph
from lpuc.lowering.builder import default_block_rows, rows_per_tile, view_of
from lpuc.lowering.stream import is_windowed
from lpuc.ops import placement
from lpuc.target import Target


def pool_slab_rows(
    graph: Graph, unit_of_node: dict[str, str], target: Target, short_tiles: bool
) -> dict[str, int]:
    """Value name -> rows per tile for the result of every channels-last MaxPool on the VXM whose
    result is one tile row while its input is several (`short_tiles`: the builder's rule): whole
    pooled image rows per tile, as many tiles as the input has."""
    block_rows = default_block_rows(target)
    rows: dict[str, int] = {}
    for node in graph.nodes:
        if node.op != "MaxPool" or node.domain != LPUC_DOMAIN or unit_of_node.get(node.name) != "VXM":
            continue
        if not is_windowed(node, placement(node.op, node.domain)):
            continue
        x, y = graph.values[node.inputs[0]].shape, graph.values[node.outputs[0]].shape
        if x is None or y is None or len(y) != 4 or int(y[0]) != 1:
            continue
        in_rows, out_rows = view_of(tuple(x))[0], view_of(tuple(y))[0]
        in_tiles = math.ceil(in_rows / rows_per_tile(in_rows, block_rows, short_tiles))
        if in_tiles < 2 or rows_per_tile(out_rows, block_rows, short_tiles) < out_rows:
            continue  # (one input tile: nothing to start early; a result of several tiles has its slabs)
        image_rows, width = int(y[1]), int(y[2])
        per_tile = math.ceil(image_rows / min(in_tiles, image_rows)) * width
        if per_tile < out_rows:
            rows[node.outputs[0]] = per_tile
    return dict(sorted(rows.items()))
