"""Which MEM slice holds each tile, decided before scheduling (transport delays depend on it).

Constant tiles are permanent: identical tiles share one slot (and so do narrow tiles packed side by
side, lpuc.schedule.packing), and slots go to the slice with the least constant data. Other tiles
are placed in program order on the slice with the least data estimated to be live at that point
(lifetimes estimated from program order), so that live data, and with it MEM bandwidth, is spread
evenly.
"""

from __future__ import annotations

import heapq

import numpy as np

from lpuc.ir.tiled import TiledProgram
from lpuc.schedule.packing import ConstPacking
from lpuc.target import Target


def place_tiles(
    program: TiledProgram,
    target: Target,
    pinned: dict[int, int] | None = None,
    packing: ConstPacking | None = None,
) -> dict[int, int]:
    """Buffer id -> slice index. `pinned` entries (from a previous attempt) are kept; constant
    tiles `packing` puts in one slot share a slice."""
    packing = packing or ConstPacking()
    pinned = dict(pinned or {})
    n = target.num_slices
    load = np.zeros(n, dtype=np.int64)  # words
    slice_of: dict[int, int] = {}

    const_slot: dict[str, int] = {}
    for buf in program.buffers:
        if not buf.is_const or buf.host:
            continue
        slot = packing.slot(buf.const_key)
        if slot in const_slot:
            slice_of[buf.id] = const_slot[slot]
            continue
        s = pinned.get(buf.id)
        if s is None:
            s = int(np.argmin(load))
        const_slot[slot] = s
        slice_of[buf.id] = s
        load[s] += buf.words

    first, last = _program_order_lifetimes(program)
    releases: list[tuple[int, int, int, int]] = []  # (release index, buffer id, slice, words)
    live = load.copy()
    order = sorted(
        (b for b in program.buffers if not b.is_const and not b.host),
        key=lambda b: (first.get(b.id, -1), b.id),
    )
    cursor = 0
    for buf in order:
        now = first.get(buf.id, -1)
        while releases and releases[0][0] < now:
            _, _, s, words = heapq.heappop(releases)
            live[s] -= words
        s = pinned.get(buf.id)
        if s is None:
            # Least live data; ties rotate so equal tiles of one tensor land on different slices.
            candidates = np.flatnonzero(live == live.min())
            s = int(candidates[np.searchsorted(candidates, cursor % n) % len(candidates)])
            cursor = s + 1
        slice_of[buf.id] = s
        live[s] += buf.words
        end = last.get(buf.id, len(program.ops)) if not buf.is_output else len(program.ops)
        heapq.heappush(releases, (end, buf.id, s, buf.words))
    slice_of.update({b.id: -1 for b in program.buffers if b.host})  # host memory: no slice
    return slice_of


def _program_order_lifetimes(program: TiledProgram) -> tuple[dict[int, int], dict[int, int]]:
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    for op in program.ops:
        for r in op.reads + op.writes:
            first.setdefault(r.buf, op.id)
            last[r.buf] = op.id
    for buf in program.buffers:
        if buf.is_input:
            first[buf.id] = -1
    return first, last
