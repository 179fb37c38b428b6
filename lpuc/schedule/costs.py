"""Instruction timing from the target: T = N + d_func + d_transport (+ superlane stagger).

N is the number of vectors the unit streams, d_func the unit's functional delay, d_transport the
slices a stream travels between the MEM slice holding a tile and the unit (one slice per cycle), in
and out. MEM read and write delays are added where an operand comes from or goes to SRAM.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

from lpuc.ir.tiled import TileOp
from lpuc.target import Target


def transport(target: Target, unit: str, op: TileOp, slice_of: Mapping[int, int]) -> tuple[int, int]:
    pos = target.position(unit)
    t_in = max((abs(pos - target.position(f"MEM{slice_of[r.buf]}")) for r in op.reads), default=0)
    t_out = max((abs(pos - target.position(f"MEM{slice_of[w.buf]}")) for w in op.writes), default=0)
    return t_in, t_out


def duration(target: Target, unit: str, op: TileOp, slice_of: Mapping[int, int]) -> int:
    if op.unit_class == "HOST":
        return max(1, op.stream)
    mem = target.raw["mem"]
    t_in, t_out = transport(target, unit, op, slice_of)
    lanes = max([r.nlanes for r in op.reads + op.writes], default=1)
    reads = mem["read_delay"] + t_in if op.reads else 0
    writes = mem["write_delay"] + t_out if op.writes else 0
    if op.unit_class == "MXM.LW":
        return op.stream + reads
    if op.unit_class == "MXM":
        install = target.iw_cycles if op.attrs.get("install") else 0
        return install + op.stream + target.delay("MXM") + reads + writes + target.stagger(lanes)
    func = target.delay(op.unit_class) * (op.alus if op.unit_class == "VXM" else 1)
    return max(1, op.stream) + func + reads + writes + target.stagger(lanes)


def estimate(target: Target, op: TileOp) -> int:
    """Duration before slices are known, for scheduling priorities only: every tile is taken to be
    in slice 0 (transport is a guess at that point anyway)."""
    return duration(target, _any_unit(op), op, defaultdict(int))


def _any_unit(op: TileOp) -> str:
    return {"MXM": "MXM0", "MXM.LW": "MXM0.LW", "VXM": "VXM0", "SXM": "SXM0"}.get(op.unit_class, "HOST")
