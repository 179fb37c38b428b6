"""Plane rows: the tiles of a tall product's operands cut so its accumulation chains share the
MXM planes evenly.

A product whose K spans several weight tiles runs as accumulation chains, one per row segment of
at most a tile (and `mxm.acc_rows`) rows, each whole on one plane (lpuc.lowering.matmul). With the
default tiles the last segment is what is left over: [2304 x 4096] @ [4096 x 320] in int8 is seven
320-row chains and a 64-row one, so three planes run two long chains (640 rows per K chunk) while
the fourth runs 384. Tiles of 288 rows make eight equal chains, two a plane: 576 rows each.

Only where that shortens the busiest plane (chains packed longest first on the least busy plane),
where there are more chains than planes (fewer are split over K instead: lpuc.lowering.matmul's
k_split), and where every value cut along with the product's activation and result is a model
input, a map's result or operand, or a model output: the product's activation and the same-shaped
operands of the map producing it, its result and the same-shaped results of the maps reading it.
An SXM or VXM kernel (an Im2Col, a LayerNorm) cuts its own work at tiles and stays on the default.
The map computing the activation (the int8 quantize) and its same-shaped operands get tiles
MAP_CHAINS chains tall: one map quantizes a K slab for two chains, and their MMs read their rows as
windows of its tile. Costs are unchanged rules of lpuc.cost; only where the row segments start moves.
"""

from __future__ import annotations

import math

import numpy as np

from lpuc.ir.graph import Graph, Node
from lpuc.lowering.builder import default_block_rows, view_of
from lpuc.lowering.matmul import mxm_mode_for
from lpuc.target import Target

# Tile rows are kept a multiple of this (a stacked value's tiles halve them).
ROW_ALIGN = 16
# A map computing a product's activation (the int8 quantize) covers this many chains' rows: each map
# holds its chained ALUs for its rows plus ~100 cycles of latency, so one map per two chains halves
# that overhead; the MMs read their rows as windows of its taller tile. Measured on the int8 GEMM
# [2304x4096]x[4096x320] (eight 288-row chains): 1: 10,464 cycles, 2: 9,827, 3: 11,982, 4: 10,686.
MAP_CHAINS = 2


def plane_rows(graph: Graph, unit_of_node: dict[str, str], target: Target, precision: str) -> dict[str, int]:
    """Value name -> rows per tile for the values of tall products cut to balance the planes (see
    module doc); values with another tiling already (`skip`) are left alone by the caller."""
    producers = {o: n for n in graph.nodes for o in n.outputs if o}
    consumers = graph.consumers()
    rows: dict[str, int] = {}
    for node in graph.nodes:
        if unit_of_node.get(node.name) != "MXM" or node.op not in ("MatMul", "MatMulInteger"):
            continue
        seg = _balanced_rows(node, graph, target, precision)
        if seg is None:
            continue
        names = _cut_with(node, graph, producers, consumers, unit_of_node)
        if names is None:
            continue
        quantized = _map_side(node, graph, producers)
        for name in names:
            want = seg * MAP_CHAINS if name in quantized else seg
            rows[name] = min(want, rows.get(name, want))
    return dict(sorted(rows.items()))


def _map_side(node: Node, graph: Graph, producers: dict[str, Node]) -> set[str]:
    """The product's activation and the same-shaped operands of the map computing it (none when a
    model input feeds the product directly): cut MAP_CHAINS chains tall."""
    a_name = node.inputs[0]
    producer = producers.get(a_name)
    if producer is None:
        return set()
    a_shape = tuple(graph.values[a_name].shape)
    return {a_name, *(i for i in producer.inputs if _same_shaped_value(graph, i, a_shape))}


def _balanced_rows(node: Node, graph: Graph, target: Target, precision: str) -> int | None:
    """Rows per tile that spread the product's chains evenly over the planes, or None."""
    a, w, c = (graph.values[n] for n in (node.inputs[0], node.inputs[1], node.outputs[0]))
    if a.shape is None or w.shape is None or c.shape is None or len(w.shape) != 2:
        return None
    m, k = view_of(tuple(a.shape))
    mode = target.mxm_mode(mxm_mode_for(a.dtype, precision))
    if k <= mode.k_tile:  # one K chunk: weight-stationary groups share the rows among the planes
        return None
    longest = min(default_block_rows(target), target.mxm.acc_rows)
    planes = target.num_mxm
    chains = -(-m // longest)
    if chains <= planes:
        return None
    balanced = -(-m // (-(-chains // planes) * planes))
    balanced = -(-balanced // ROW_ALIGN) * ROW_ALIGN
    default = [min(longest, m - r0) for r0 in range(0, m, longest)]
    cut = [min(balanced, m - r0) for r0 in range(0, m, balanced)]
    if balanced >= longest or _busiest(cut, planes) >= _busiest(default, planes):
        return None
    return balanced


def _busiest(chains: list[int], planes: int) -> int:
    """Rows of the busiest plane, chains placed longest first on the least busy plane."""
    load = [0] * planes
    for r in sorted(chains, reverse=True):
        load[load.index(min(load))] += r
    return max(load)


def _cut_with(
    node: Node, graph: Graph, producers: dict[str, Node], consumers: dict, unit_of_node: dict[str, str]
) -> list[str] | None:
    """The values tiled like the product's activation and result, or None if one of them is read
    or written by anything but a map, the product or the host's copy of a model input/output."""
    a_name, c_name = node.inputs[0], node.outputs[0]
    a_shape = tuple(graph.values[a_name].shape)
    names = [a_name, c_name]
    producer = producers.get(a_name)
    if producer is not None:
        if unit_of_node.get(producer.name) != "MAP":
            return None
        names += [i for i in producer.inputs if _same_shaped_value(graph, i, a_shape)]
    c_shape = tuple(graph.values[c_name].shape)
    for user in consumers.get(c_name, []):
        if unit_of_node.get(user.name) != "MAP":
            return None
        names += [o for o in user.outputs if _same_shaped_value(graph, o, c_shape)]
    names = list(dict.fromkeys(names))
    for name in names:  # each read only by maps or this product, written only by a map (or an input)
        p = producers.get(name)
        if p is not None and p.name != node.name and unit_of_node.get(p.name) != "MAP":
            return None
        if any(u.name != node.name and unit_of_node.get(u.name) != "MAP" for u in consumers.get(name, [])):
            return None
    return names


def _same_shaped_value(graph: Graph, name: str, shape: tuple[int, ...]) -> bool:
    v = graph.values.get(name) if name else None
    return (
        v is not None
        and not v.is_const
        and v.shape is not None
        and tuple(v.shape) == shape
        and np.dtype(v.dtype).kind in "fiu"
        and math.prod(shape) > 0
    )
