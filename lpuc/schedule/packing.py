"""Narrow constant tiles share words: lane padding given back.

A tile narrower than a word (320 lanes) still fills whole words: a 768-wide weight is tiles of 320,
320 and 128 lanes, and the 128-lane one leaves 192 lanes of every word it takes empty. Constant
tiles of one dtype and row count whose lanes add up to at most a word's lanes sit side by side in
one slot (same slice and addresses, each at its own first lane): two 128-lane tails share a slot,
and a 3072-wide weight's 192-lane tail fills one up with a 128-lane tail. Only constants are packed:
they are written once, when the program is loaded, so no instruction ever writes part of a word.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from lpuc.ir.tiled import Buffer, TiledProgram


@dataclass(frozen=True)
class ConstPacking:
    owner: dict[str, str] = field(default_factory=dict)  # const key -> key of the slot's first tile
    lane: dict[str, int] = field(default_factory=dict)  # const key -> its first lane in the slot

    def slot(self, key: str) -> str:
        return self.owner.get(key, key)


def pack_constants(program: TiledProgram, lanes: int, float_itemsize: int | None = None) -> ConstPacking:
    """Best fit, widest tiles first, within each (dtype, rows) group of narrow constant tiles.

    `float_itemsize` packs as if float constants were stored at that size (for what-if sizes)."""
    # Copies of a constant (lowering strategy constant_replicas) exist to sit on different slices, so
    # that maps side by side book different ports: a slot holds tiles of one copy index only.
    groups: dict[tuple[int, str, int, int], list[Buffer]] = defaultdict(list)
    for b in _const_slots(program):
        if b.lanes < lanes:
            groups[(*_stored(b, float_itemsize), b.rows, b.replica)].append(b)
    packing = ConstPacking()
    for group in sorted(groups):
        # Slots with room, by free lanes: [owner key, first free lane] (at most `lanes` distinct keys).
        free: dict[int, list[list]] = defaultdict(list)
        for b in sorted(groups[group], key=lambda b: (-b.lanes, b.id)):
            room = min((r for r in free if r >= b.lanes and free[r]), default=None)
            slot = free[room].pop(0) if room is not None else [b.const_key, 0]
            packing.owner[b.const_key], packing.lane[b.const_key] = slot[0], slot[1]
            slot[1] += b.lanes
            if lanes - slot[1] > 0:
                free[lanes - slot[1]].append(slot)
    return packing


def const_words(program: TiledProgram, packing: ConstPacking, float_itemsize: int | None = None) -> int:
    """SRAM words of the constant slots (identical tiles share one; packed tiles share one)."""
    return sum(
        {
            packing.slot(b.const_key): b.rows * _stored(b, float_itemsize)[0] for b in _const_slots(program)
        }.values()
    )


def _stored(b: Buffer, float_itemsize: int | None) -> tuple[int, str]:
    """(itemsize, kind) of a constant tile as stored: floats at `float_itemsize` if given and smaller."""
    if float_itemsize is not None and b.dtype.kind == "f" and float_itemsize < b.dtype.itemsize:
        return float_itemsize, "f"
    return b.dtype.itemsize, b.dtype.str


def _const_slots(program: TiledProgram) -> list[Buffer]:
    """The first buffer of every distinct SRAM constant tile, in buffer order."""
    first: dict[str, Buffer] = {}
    for b in program.buffers:
        if b.is_const and not b.host:
            first.setdefault(b.const_key, b)
    return list(first.values())
