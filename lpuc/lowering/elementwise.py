"""Elementwise ops and fused expressions -> one VXM map per output tile.

Each operand is read as the matching tile, one broadcast row, or one scalar (legalize_broadcast
guarantees one of these). The expression's ALU ops run as a pipeline over chained ALUs, so a map
holds as many ALUs as its expression has ops (wrapping around when it has more than the VXM).
"""

from __future__ import annotations

import math

import numpy as np

from lpuc.ir.graph import Node
from lpuc.ir.tiled import Ref
from lpuc.jsonable import to_json
from lpuc.lowering.builder import TiledBuilder
from lpuc.ops import ELEMENTWISE, VARIADIC
from lpuc.passes.fuse_elementwise import node_steps
from lpuc.passes.legalize_broadcast import operand_mode


def expression_alu_ops(steps: list[dict]) -> int:
    total = 0
    for s in steps:
        ops = ELEMENTWISE.get(s["op"], 1)
        if s["op"] in VARIADIC:
            ops *= max(1, len(s["args"]) - 1)
        total += ops
    return max(1, total)


def lower_map(b: TiledBuilder, node: Node) -> None:
    steps = node_steps(node, b.graph)
    out = b.define(node.outputs[0])
    operands = [b.tensor(i) if i else None for i in node.inputs]
    modes = [operand_mode(t.shape, out.shape) if t is not None else None for t in operands]
    if None in [m for m, t in zip(modes, operands) if t is not None]:
        raise AssertionError(f"{node.name}: operand broadcast not legalized")
    alu_ops = expression_alu_ops(steps)
    alus = min(alu_ops, b.target.vxm_alus)
    wraps = math.ceil(alu_ops / b.target.vxm_alus)
    widest = max([np.dtype(t.dtype).itemsize for t in operands if t is not None] + [out.dtype.itemsize])
    words = math.ceil(widest / 4)  # the ALUs are 32-bit: 64-bit values take two passes
    # Operand k of the expression is read number positions[k] (missing optional inputs are None).
    positions, count = [], 0
    for t in operands:
        positions.append(None if t is None else count)
        count += t is not None
    attrs = {"expr": to_json(steps), "operands": positions}
    for rb, row in enumerate(out.grid):
        for cb, buf in enumerate(row):
            tile = b.buffers[buf]
            reads = []
            for t, mode in zip(operands, modes):
                if t is None:
                    continue
                if mode == "tile":
                    reads.append(b.whole(t.grid[rb][cb]))
                elif mode == "row":
                    src = b.buffers[t.grid[0][cb]]
                    reads.append(Ref(src.id, 0, 1, 0, src.lanes))
                else:
                    reads.append(Ref(t.grid[0][0], 0, 1, 0, 1))
            b.emit(
                "vxm.map",
                "VXM",
                reads,
                [b.whole(buf)],
                node.name,
                stream=tile.rows * words * wraps,
                alus=alus,
                attrs=attrs,
                elem_ops=tile.rows * tile.lanes * alu_ops,
            )
