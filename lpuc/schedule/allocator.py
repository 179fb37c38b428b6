"""SRAM addresses for every tile, in three layers: liveness -> per-slice requests -> placement.

1. Liveness (liveness.py); identical constant tiles share one slot, and so do narrow constant tiles
   packed side by side (packing.py: each at its own first lane).
2. Each slice gets the requests (words x live interval) of the tiles placed on it.
3. Greedy by size: the largest request first, at the lowest address that overlaps no placed request
   whose interval intersects its own. The no-fragmentation bound (peak of live words) is reported
   beside the result, per slice and for the chip.

    address
      ^   +-----+        +---------+
      |   |  B  |        |    D    |      B and D may share addresses: their
      |   +-----+--------+----+----+      intervals do not intersect.
      |   |        A          |
      +---+-------------------+-------> cycle
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from lpuc.ir.tiled import TiledProgram
from lpuc.schedule.liveness import live_intervals
from lpuc.schedule.packing import ConstPacking
from lpuc.schedule.scheduler import Schedule


@dataclass(frozen=True)
class Lifetime:
    start: int
    end: int  # exclusive

    def intersects(self, other: Lifetime) -> bool:
        return self.start < other.end and other.start < self.end


def lifetimes(program: TiledProgram, sched: Schedule) -> dict[int, Lifetime]:
    accesses = (
        (
            sched.slots[op.id].start,
            sched.slots[op.id].end,
            [r.buf for r in op.reads],
            [w.buf for w in op.writes],
        )
        for op in program.ops
    )
    intervals = live_intervals([b.kind for b in program.buffers], accesses)
    return {i: Lifetime(s, e) for i, (s, e) in enumerate(intervals)}


@dataclass
class Allocation:
    addr: dict[int, int]  # buffer id -> first address in its slice
    lane: dict[int, int]  # buffer id -> first lane in its words (packed constant tiles; else 0)
    failures: list[int]  # buffer ids that did not fit their slice
    peak_words: int  # chip-wide peak of live words (no-fragmentation lower bound)
    slice_peak_words: dict[int, int]  # per slice: highest address used


def allocate(
    program: TiledProgram,
    sched: Schedule,
    slice_of: Mapping[int, int],
    capacity: int,
    packing: ConstPacking | None = None,
    consts_first: bool = False,
) -> Allocation:
    """`consts_first`: each slice's constants take the lowest addresses before the other tiles are
    placed (else all by size): on a slice the constants nearly fill, a small constant placed after
    the live tiles finds no gap free for the whole run (the fit ladder's lean step)."""
    packing = packing or ConstPacking()
    life = lifetimes(program, sched)
    # One request per constant slot (shared by identical and by packed tiles) and per other tile.
    requests: dict[int, list[tuple[int, int, Lifetime]]] = {}  # slice -> [(request id, words, life)]
    slot_of_const: dict[str, int] = {}
    alias: dict[int, int] = {}
    lane: dict[int, int] = {}
    for buf in program.buffers:
        if buf.host:
            continue
        if buf.is_const:
            lane[buf.id] = packing.lane.get(buf.const_key, 0)
            owner = slot_of_const.setdefault(packing.slot(buf.const_key), buf.id)
            if owner != buf.id:
                alias[buf.id] = owner
                continue
        requests.setdefault(slice_of[buf.id], []).append((buf.id, buf.words, life[buf.id]))

    addr: dict[int, int] = {}
    failures: list[int] = []
    slice_peak: dict[int, int] = {}
    for s in sorted(requests):
        first = None
        if consts_first:
            first = frozenset(r[0] for r in requests[s] if program.buffers[r[0]].is_const)
        placed, failed = _place_slice(requests[s], capacity, first)
        addr.update(placed)
        failures += failed
        slice_peak[s] = max((placed[r] + w for r, w, _ in requests[s] if r in placed), default=0)
    for buf_id, owner in alias.items():
        if owner in addr:
            addr[buf_id] = addr[owner]
    addr.update({b.id: -1 for b in program.buffers if b.host})
    return Allocation(addr, lane, sorted(failures), _peak_live_words(requests), slice_peak)


def _place_slice(
    reqs: list[tuple[int, int, Lifetime]], capacity: int, first: frozenset[int] | None = None
) -> tuple[dict[int, int], list[int]]:
    """First fit, largest first (the requests in `first` before all others)."""
    first = first or frozenset()
    order = sorted(reqs, key=lambda r: (r[0] not in first, -r[1], r[2].start, r[0]))
    # What is placed so far, as arrays: finding the placed requests live at the same time as a new
    # one is one vectorized test instead of a Python walk over all of them (a slice holds thousands).
    lo_of, hi_of = np.empty(len(order), dtype=np.int64), np.empty(len(order), dtype=np.int64)
    start_of, end_of = np.empty(len(order), dtype=np.int64), np.empty(len(order), dtype=np.int64)
    n = 0
    out: dict[int, int] = {}
    failed: list[int] = []
    # And as the union of their address ranges (disjoint, in address order), with the latest start
    # and the earliest end among them: a request live at the same time as every placed one (most are
    # constants, live throughout) fits first at the union's lowest gap, found without that test.
    union_lo: list[int] = []
    union_hi: list[int] = []
    # (Requests of no words, placed last, are at address 0 either way.)
    latest_start, earliest_end = -1, None
    for rid, words, life in order:
        if latest_start < life.end and (earliest_end is None or life.start < earliest_end):
            at = _lowest_union_gap(union_lo, union_hi, words)
        else:
            live = (start_of[:n] < life.end) & (life.start < end_of[:n])
            at = lowest_gap(lo_of[:n], hi_of[:n], live, words)
        if at + words > capacity:
            failed.append(rid)
            continue
        out[rid] = at
        lo_of[n], hi_of[n], start_of[n], end_of[n] = at, at + words, life.start, life.end
        n += 1
        _add_range(union_lo, union_hi, at, at + words)
        latest_start = max(latest_start, life.start)
        earliest_end = life.end if earliest_end is None else min(earliest_end, life.end)
    return out, failed


def _lowest_union_gap(union_lo: list[int], union_hi: list[int], words: int) -> int:
    """lowest_gap with every placed range live, from their union: the first gap of `words` words
    below a disjoint range, else its top."""
    below = 0
    for lo, hi in zip(union_lo, union_hi):
        if below + words <= lo:
            return below
        below = hi
    return below


def _add_range(union_lo: list[int], union_hi: list[int], lo: int, hi: int) -> None:
    """Add [lo, hi) to a union of disjoint ranges in address order, merged with those it overlaps
    or touches."""
    i = bisect.bisect_left(union_hi, lo)  # the first range ending at lo or above
    j = bisect.bisect_right(union_lo, hi)  # past the last starting at hi or below
    if i < j:
        lo, hi = min(lo, union_lo[i]), max(hi, union_hi[j - 1])
    union_lo[i:j] = [lo]
    union_hi[i:j] = [hi]


def lowest_gap(lo: np.ndarray, hi: np.ndarray, live: np.ndarray, words: int) -> int:
    """First fit: the lowest address from which `words` words clear every live [lo, hi) range.

    Walking the live ranges in lo order, the candidate address before range i is the highest end
    among ranges 0..i-1 (or 0); the answer is the candidate before the first range it fits below, or
    after the last range. (The order among ranges with one lo does not change the answer: a range of
    the group fits below only the candidate the group starts with.)"""
    lo, hi = lo[live], hi[live]
    order = np.argsort(lo, kind="stable")
    lo, hi = lo[order], hi[order]
    candidate = np.maximum.accumulate(np.concatenate(([0], hi)))
    fits = np.flatnonzero(candidate[:-1] + words <= lo)
    return int(candidate[fits[0]] if len(fits) else candidate[-1])


def _peak_live_words(requests: Mapping[int, list[tuple[int, int, Lifetime]]]) -> int:
    events = [(lf.start, w) for reqs in requests.values() for _, w, lf in reqs]
    events += [(lf.end, -w) for reqs in requests.values() for _, w, lf in reqs]
    if not events:
        return 0
    events.sort(key=lambda e: (e[0], e[1]))  # frees before allocations at the same cycle
    return int(np.max(np.cumsum([w for _, w in events])))
