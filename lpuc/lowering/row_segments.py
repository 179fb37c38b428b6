"""Row segments: shorter tiles for the values row-wise VXM kernels read and write.

A row-wise kernel (LayerNorm, Softmax, ...) is one instruction per tile row of its result
(lpuc.lowering.stream). With the default tiles (up to `lanes` rows) a 128-token sequence is one
tile row: the kernel runs over the whole tensor and the matmul after it waits for all of it. Cutting
the kernel's input and result into tiles of fewer rows makes each segment its own instruction:
segments run side by side on the VXM ALUs, and the consumer (whose MMs split at tile edges) starts
on the first segment. Costs are unchanged rules of lpuc.cost; only the instruction boundaries move.

Only results of one tile row are cut (a sequence's LayerNorm), into halves while they stay at least
`min_rows` long: shorter MMs would no longer hide the weight loads of the matmul that reads them.
Measured on a GPT-2-shaped 12-layer decoder (fp16): 64-row segments of its LayerNorms take 385.0k
cycles to 369.3k; 32-row ones to 477k (weight loads); cutting its softmaxes too, 391k.

Two more rules line up tiles so that instructions can merge:
- a batch of matrices the default tiles would cut (attention scores [1, 12, 128, 128] in 320-row
  tiles) takes one matrix per tile, with the map before the kernel: each head's scale-and-mask map
  then fuses into its Q @ K^T (lpuc.lowering.epilogue) and its softmax starts when that head is done
  (GPT-2 12L fp16: 324.9k cycles to 314.4k);
- the operands of a map share its segments (the residual add before a LayerNorm and the product it
  adds), so a K-split product's sum of partials and the bias-and-residual add are one VXM pass per
  segment (lpuc.lowering.map_chains).
"""

from __future__ import annotations

import math

from lpuc.ir.graph import Graph
from lpuc.lowering.builder import default_block_rows, view_of
from lpuc.lowering.stream import rowwise_last_axis
from lpuc.ops import placement
from lpuc.target import Target

# Shortest segment: a 64-row MM streams 128 cycles in fp16, about one weight load of the next K chunk
# (a heuristic: shorter ones leave the planes waiting for weights).
MIN_ROWS = 64


def segment_rows(
    graph: Graph, unit_of_node: dict[str, str], target: Target, min_rows: int = MIN_ROWS
) -> dict[str, int]:
    """Value name -> rows per tile for the first input and the result of every row-wise VXM kernel
    (`unit_of_node`: lpuc.lowering.unit_of). A value proposed two sizes takes the smaller."""
    block_rows = default_block_rows(target)
    producers = {o: n for n in graph.nodes for o in n.outputs if o}
    rows: dict[str, int] = {}
    for node in graph.nodes:
        p = placement(node.op, node.domain)
        if unit_of_node.get(node.name) != "VXM" or not rowwise_last_axis(node, graph, p):
            continue
        out = node.outputs[0]
        seg = _segment(graph.values[out].shape, block_rows, min_rows)
        names = [alias_root(node.inputs[0], producers, unit_of_node), out]
        if seg is None:
            seg = _matrix_rows(graph.values[out].shape, block_rows)
            if seg is None:
                continue
            # The map between the product and the kernel (a scale, a mask) cut alike, so each
            # matrix's product, map and kernel windows match (the map can fuse into the MM).
            names += _map_operands(graph, producers, unit_of_node, names[0])
        for name in names:
            v = graph.values[name]
            if name and not v.is_const and v.shape is not None and view_of(v.shape)[0] > seg:
                rows[name] = min(seg, rows.get(name, seg))
    _share_through_maps(graph, unit_of_node, rows)
    return dict(sorted(rows.items()))


def _share_through_maps(graph: Graph, unit_of_node: dict[str, str], rows: dict[str, int]) -> None:
    """Give the other operands of a map the segments of its segmented result or operand (a residual
    add before a LayerNorm: the product it adds, written a segment at a time by the MMs and, when K
    is split, summed by a map per tile, then has the same tiles, so that sum and the add become one
    VXM pass per segment, lpuc.lowering.map_chains)."""
    for node in graph.nodes:
        if unit_of_node.get(node.name) != "MAP" or not node.outputs or not node.outputs[0]:
            continue
        out = node.outputs[0]
        names = [out, *_map_operands(graph, {out: node}, unit_of_node, out)]
        seg = min((rows[n] for n in names if n in rows), default=None)
        if seg is not None and graph.values[out].shape is not None:
            for name in names:
                rows[name] = min(seg, rows.get(name, seg))


def _segment(shape: tuple[int, ...] | None, block_rows: int, min_rows: int) -> int | None:
    """Rows per segment of a value shaped `shape`, or None when the default tiles are as good: a
    result of several tiles is already several instructions running side by side (cutting a GPT-2's
    [12, 128, 128] attention scores further made its schedule longer: more weight loads for the
    products reading them, no earlier start)."""
    if not shape or len(shape) < 2:
        return None
    total = math.prod(int(d) for d in shape[:-1])
    if total > block_rows:
        return None
    seg = total
    while seg % 2 == 0 and seg // 2 >= min_rows:
        seg //= 2
    return seg if seg < total else None


def _matrix_rows(shape: tuple[int, ...] | None, block_rows: int) -> int | None:
    """Rows per tile of a batch of matrices (attention scores [B, H, S, S]) whose matrices do not
    line up with the default tiles (320-row tiles cut a 128-row head in two, so the product writing
    it and the kernel reading it split there): one matrix per tile, or None."""
    if not shape or len(shape) < 3:
        return None
    rows, batch = int(shape[-2]), math.prod(int(d) for d in shape[:-2])
    if batch < 2 or rows >= block_rows or block_rows % rows == 0:
        return None
    return rows


def _map_operands(graph: Graph, producers: dict, unit_of_node: dict[str, str], name: str) -> list[str]:
    """The non-constant operands of the same shape of the elementwise map that produces `name`."""
    node = producers.get(name)
    if node is None or unit_of_node.get(node.name) != "MAP":
        return []
    shape = graph.values[name].shape
    return [i for i in node.inputs if i and not graph.values[i].is_const and graph.values[i].shape == shape]


def alias_root(name: str, producers: dict, unit_of_node: dict[str, str]) -> str:
    """The value whose tiles `name` shares (reshapes lowered as aliases share their source's)."""
    node = producers.get(name)
    while node is not None and unit_of_node.get(node.name) == "ALIAS":
        name = node.inputs[0]
        node = producers.get(name)
    return name
