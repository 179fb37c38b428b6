"""Elementwise ops and fused expressions -> one VXM map per output tile.

Each operand is read as the matching tile, one broadcast row, or one scalar (legalize_broadcast
guarantees one of these). The expression's ALU ops run as a pipeline over chained ALUs (lpuc.cost
charges it: one ALU per op, wrapping around when it has more than a lane's ALUs).
"""

from __future__ import annotations

import math

import numpy as np

from lpuc.cost import Work
from lpuc.ir.graph import Node
from lpuc.ir.tiled import Ref, TensorTiles
from lpuc.jsonable import to_json
from lpuc.lowering.builder import TiledBuilder, split_range
from lpuc.ops import expression_alu_ops
from lpuc.passes.fuse_elementwise import node_steps
from lpuc.passes.legalize_broadcast import operand_mode, repeated_rows


def lower_map(b: TiledBuilder, node: Node) -> None:
    steps = node_steps(node, b.graph)
    out = b.define(node.outputs[0])
    operands = [_operand(b, i, out) if i else None for i in node.inputs]
    modes = [operand_mode(t.shape, out.shape) if t is not None else None for t in operands]
    if None in [m for m, t in zip(modes, operands) if t is not None]:
        raise AssertionError(f"{node.name}: operand broadcast not legalized")
    alu_ops = expression_alu_ops(steps)
    widest = max([np.dtype(t.dtype).itemsize for t in operands if t is not None] + [out.dtype.itemsize])
    words = math.ceil(widest / 4)  # the ALUs are 32-bit: 64-bit values take two passes
    expr = to_json(steps)
    # Tiles of a stacked value (lpuc.lowering.stacked_rows) that divide the result's are read side by
    # side by one map; operands cut into other tiles (row segments) are read window by window.
    stacked = {
        name
        for name, t, mode in zip(node.inputs, operands, modes)
        if mode == "tile"
        and name in b.stacked_values
        and t.block_rows < out.block_rows
        and out.block_rows % t.block_rows == 0
    }
    # Maps of different tiles run side by side on different ALUs; a broadcast constant (a bias row,
    # a scalar) they all read is copied so that they do not queue for one slice's ports.
    tiles = len(out.grid) * len(out.grid[0]) if out.grid else 0
    replicas = min(tiles, -(-b.target.vxm_alus // b.target.mem_banks))
    replicas = replicas if b.enabled("constant_replicas") else 1
    edges = [
        t.block_rows
        for name, t, mode in zip(node.inputs, operands, modes)
        if mode == "tile" and t.block_rows != out.block_rows and name not in stacked
    ]
    # A repeated operand's rows restart every `period` result rows; windows end there and at its tiles' edges.
    periods = {
        name: (repeated_rows(t.shape, out.shape), t.block_rows)
        for name, t, mode in zip(node.inputs, operands, modes)
        if mode == "repeat"
    }
    layouts: dict[str, dict] = {}
    for rb, row in enumerate(out.grid):
        for cb, buf in enumerate(row):
            tile = b.buffers[buf]
            span = range(tile.r0, tile.r0 + tile.rows)
            restarts = [[r for r in span if (r % p) % block == 0] for p, block in periods.values()]
            for r0, r1 in split_range(tile.r0, tile.r0 + tile.rows, *edges, *restarts):
                c0, c1 = tile.c0, tile.c0 + tile.lanes
                reads: list[Ref] = []
                # Operand k of the expression is read number positions[k], or the reads listed there
                # stacked row after row (missing optional inputs are None).
                positions: list[int | list[int] | None] = []
                for name, t, mode in zip(node.inputs, operands, modes):
                    if t is None:
                        positions.append(None)
                        continue
                    replica = (rb * len(row) + cb) % replicas if replicas else 0
                    if mode != "tile" and b.graph.values[name].is_const and replica:
                        t = b.const_tensor(name, t.dtype, replica=replica)
                    if mode == "tile":
                        windows = (
                            b.windows(t, r0, r1, c0, c1) if name in stacked else [b.window(t, r0, r1, c0, c1)]
                        )
                    elif mode == "repeat":
                        at_row = r0 % periods[name][0]
                        windows = [b.window(t, at_row, at_row + r1 - r0, c0, c1)]
                    elif mode == "row":
                        src = b.buffers[t.grid[0][cb]]
                        windows = [Ref(src.id, 0, 1, 0, src.lanes)]
                    else:
                        windows = [Ref(t.grid[0][0], 0, 1, 0, 1)]
                    at = list(range(len(reads), len(reads) + len(windows)))
                    positions.append(at if len(at) > 1 else at[0])
                    reads.extend(windows)
                # One attrs object per distinct operand layout (most maps share it).
                attrs = layouts.setdefault(repr(positions), {"expr": expr, "operands": positions})
                rows = r1 - r0
                b.emit(
                    "vxm.map",
                    "VXM",
                    reads,
                    [b.window(out, r0, r1, c0, c1)],
                    node.name,
                    Work(vectors=rows * words, alu_ops=alu_ops, elem_ops=rows * tile.lanes * alu_ops),
                    attrs=attrs,
                )


def _operand(b: TiledBuilder, name: str, out: TensorTiles) -> TensorTiles:
    """The tiles a map reads operand `name` from. A whole-tensor constant (an attention mask) is
    stored in the result's tiles: cut at tile edges of its own, it would split the result's windows
    (and the map would no longer fuse into the MM that writes its other operand)."""
    v = b.graph.values[name]
    if (
        v.is_const
        and name not in b.host_tables
        and out.block_rows != b.block_rows
        and operand_mode(tuple(v.shape), out.shape) == "tile"
    ):
        return b.const_tensor(name, v.dtype, block_rows=out.block_rows)
    return b.tensor(name)
