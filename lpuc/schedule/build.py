"""Tiled IR -> Program: place tiles, schedule, allocate SRAM and assemble (the caller validates).

Placement happens before scheduling because transport delays depend on it; the allocator then
packs each slice with the real lifetimes. When a slice overflows, the tiles that did not fit move
to the slices with the most room and the program is scheduled again (a few rounds at most).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import numpy as np

from lpuc.dtypes import dtype_name, words_per_row
from lpuc.errors import DoesNotFitError
from lpuc.ir.tiled import TiledProgram
from lpuc.program import Access, Binding, Instruction, Program, TileSlot
from lpuc.report import human_bytes
from lpuc.schedule.allocator import Allocation, allocate, lifetimes, lowest_gap
from lpuc.schedule.bounds import compile_facts
from lpuc.schedule.dependencies import dependencies
from lpuc.schedule.fit import check_constants_fit, largest_constants
from lpuc.schedule.packing import ConstPacking, const_words, pack_constants
from lpuc.schedule.placement import place_tiles
from lpuc.schedule.scheduler import Schedule, schedule, upward_ranks
from lpuc.schedule.summary import compile_time_facts, summarize
from lpuc.target import Target

MAX_PLACEMENT_ROUNDS = 4


@dataclass
class BuildResult:
    program: Program
    schedule: Schedule
    allocation: Allocation


def build_program(
    tiled: TiledProgram,
    target: Target,
    where: str,
    options: dict | None = None,
    model_nodes: Collection[str] = (),
    pack: bool = False,
    scratch: bool = False,
    requests: dict | None = None,
    rounds: int = MAX_PLACEMENT_ROUNDS,
) -> Program:
    """Schedule and place `tiled`; `model_nodes` names the model's own nodes (for the SXM bound).
    `pack`: narrow constant tiles share words (lpuc.schedule.packing); `scratch`: constants fill
    most slices and leave room on a few (lpuc.schedule.placement.scratch_budgets). `requests`: the
    scheduler's answers (lpuc.schedule.scheduler.schedule) from earlier builds for the same target,
    kept in the dict for later ones. `rounds`: placement rounds before giving up. The program is not
    validated yet: lpuc.compile does that as a stage of its own."""
    packing = pack_constants(tiled, target.lanes) if pack else ConstPacking()
    check_constants_fit(tiled, target, where, packing)
    pinned: dict[int, int] = {}
    disabled = (options or {}).get("disabled_passes", ())
    spread = "spread_accesses" not in disabled
    sides = "weight_sides" not in disabled
    preds = dependencies(tiled)
    rank = upward_ranks(tiled, preds, target)  # the same for every placement round
    requests = {} if requests is None else requests  # and so are most ops' needs (the scheduler's cache)
    asked: dict = {}  # the same answers by op: kept for the ops whose tiles stay on their slices
    slice_of: dict[int, int] = {}
    sched = None
    for _ in range(rounds):
        before = slice_of
        slice_of = place_tiles(
            tiled, target, pinned, packing, spread_accesses=spread, scratch=scratch, weight_sides=sides
        )
        moved_ops = _forget_moved(asked, tiled, before, slice_of)
        # The last round's placements are booked again up to the first op that reads or writes a
        # moved tile (the same placements: the scheduler takes items in the same order each time).
        again = None if sched is None else (sched, moved_ops)
        sched = schedule(tiled, target, slice_of, preds, rank, requests, asked, again)
        alloc = allocate(tiled, sched, slice_of, target.addresses_per_slice, packing, consts_first=scratch)
        if not alloc.failures:
            break
        pinned = _move_failures(tiled, slice_of, alloc, target, packing, sched, scratch)
    else:
        _raise_does_not_fit(tiled, alloc, target, where, packing)
    sched.placed = []  # only a next round books them again: their units are not kept (RSS)
    program = assemble(tiled, sched, slice_of, alloc, target)
    facts = compile_time_facts(options or {}, compile_facts(tiled, sched.preds, target, set(model_nodes)))
    program.summary = summarize(program, facts)
    return program


def assemble(
    tiled: TiledProgram, sched: Schedule, slice_of: dict[int, int], alloc: Allocation, target: Target
) -> Program:
    tiles = [
        TileSlot(
            b.id,
            b.tensor,
            dtype_name(b.dtype),
            b.rows,
            b.lanes,
            b.r0,
            b.c0,
            slice_of[b.id],
            alloc.addr[b.id],
            b.kind,
            b.const_key,
            alloc.lane.get(b.id, 0),
        )
        for b in tiled.buffers
    ]

    def access(ref) -> Access:
        t = tiles[ref.buf]
        return Access(
            ref.buf,
            t.slice,
            t.addr + ref.row0 * words_per_row(t.np_dtype),
            ref.nrows,
            t.lane + ref.lane0,
            ref.nlanes,
        )

    order = sorted(tiled.ops, key=lambda op: (sched.slots[op.id].start, op.id))
    instructions = []
    for new_id, op in enumerate(order):
        slot = sched.slots[op.id]
        instructions.append(
            Instruction(
                new_id,
                op.opcode,
                slot.units,
                slot.start,
                slot.duration,
                tuple(access(r) for r in op.reads),
                tuple(access(w) for w in op.writes),
                op.node,
                op.attrs,
                op.work,
            )
        )
    used_keys = sorted({b.const_key for b in tiled.buffers if b.is_const})
    consts = {k: tiled.const_data[k] for k in used_keys}

    def binding(name: str) -> Binding:
        t = tiled.tensors[name]
        dtype = tiled.io_dtypes.get(name, t.dtype)  # the model's, where the tiles store another
        return Binding(name, None if t.shape is None else tuple(t.shape), dtype_name(dtype), tuple(t.tiles()))

    return Program(
        target,
        tiled.precision,
        tiled.graph_name,
        instructions,
        tiles,
        consts,
        [binding(n) for n in tiled.inputs],
        [binding(n) for n in tiled.outputs],
    )


def _forget_moved(
    asked: dict, tiled: TiledProgram, before: dict[int, int], after: dict[int, int]
) -> frozenset[int]:
    """Drop the scheduler's answers by op (keyed by op id first) for the ops touching a tile that
    `after` places on another slice than `before` (where it reads or writes decides its costs);
    returns those ops' ids (none in the first round, when `before` is empty)."""
    moved = {b for b, s in after.items() if before.get(b) != s} if before else set()
    if not moved:
        return frozenset()
    stale = frozenset(op.id for op in tiled.ops if any(r.buf in moved for r in (*op.reads, *op.writes)))
    for key in [k for k in asked if k[0] in stale]:
        del asked[key]
    return stale


def _move_failures(
    tiled: TiledProgram,
    slice_of: dict[int, int],
    alloc: Allocation,
    target: Target,
    packing: ConstPacking,
    sched: Schedule,
    scratch: bool,
) -> dict[int, int]:
    """Slices for the next round: every tile stays, except those that did not fit, which go to the
    slice with the most headroom at its peak; with scratch room kept (build_program), where a gap
    holds them while they are live (this round's lifetimes), else so."""
    pinned = dict(slice_of)
    headroom = {
        s: target.addresses_per_slice - alloc.slice_peak_words.get(s, 0) for s in range(target.num_slices)
    }
    sharing: dict[str, list[int]] = {}  # constant slot -> its tiles (identical or packed together)
    for b in tiled.buffers:
        if b.const_key is not None:
            sharing.setdefault(packing.slot(b.const_key), []).append(b.id)
    # With scratch room kept, most slices are full to the brim: the peak-based headroom is about
    # nil everywhere and says nothing, so a tile goes where a gap holds it. Without, the headroom
    # rule places as well (GPT-2 12L fp16: 276,328 cycles; by gaps 277,098).
    gaps = _SliceGaps(tiled, slice_of, alloc, sched, target) if scratch else None
    # (Largest first into the gaps: a small tile then takes no gap only a large one fits.)
    largest_first = sorted(alloc.failures, key=lambda b: (-tiled.buffers[b].words, b))
    order = alloc.failures if gaps is None else largest_first
    for buf_id in order:
        words = tiled.buffers[buf_id].words
        s = gaps.take(buf_id, words) if gaps is not None else None
        if s is None:
            s = max(sorted(headroom), key=lambda k: headroom[k])
        pinned[buf_id] = s
        headroom[s] -= words
        if tiled.buffers[buf_id].is_const:  # the constant tiles of one slot move together
            for b in sharing[packing.slot(tiled.buffers[buf_id].const_key)]:
                pinned[b] = s
    return pinned


class _SliceGaps:
    """Each slice's placed tiles (addresses x this round's lifetimes), to find a slice with a gap
    for a tile that did not fit: among those, the one with the fewest other tiles live meanwhile
    (they share its ports)."""

    def __init__(
        self,
        tiled: TiledProgram,
        slice_of: dict[int, int],
        alloc: Allocation,
        sched: Schedule,
        target: Target,
    ) -> None:
        self.capacity, slices = target.addresses_per_slice, target.num_slices
        self.life = lifetimes(tiled, sched)
        rows: dict[int, list[tuple[int, int, int, int]]] = {}
        failed = set(alloc.failures)
        for b in tiled.buffers:
            s, at = slice_of.get(b.id, -1), alloc.addr.get(b.id)
            if s >= 0 and at is not None and b.id not in failed:
                life = self.life[b.id]
                rows.setdefault(s, []).append((at, at + b.words, life.start, life.end))
        self.placed = {s: np.array(sorted(set(r)), dtype=np.int64).reshape(-1, 4) for s, r in rows.items()}
        for s in range(slices):  # a slice no tile is on yet
            self.placed.setdefault(s, np.zeros((0, 4), dtype=np.int64))

    def take(self, buf_id: int, words: int) -> int | None:
        life = self.life[buf_id]
        best: tuple[int, int, int] | None = None
        for s in sorted(self.placed):
            placed = self.placed[s]
            live = (placed[:, 2] < life.end) & (life.start < placed[:, 3])
            at = lowest_gap(placed[:, 0], placed[:, 1], live, words)
            if at + words <= self.capacity:
                crowd = int(live.sum())
                if best is None or crowd < best[0]:
                    best = (crowd, s, at)
        if best is None:
            return None
        _, s, at = best
        self.placed[s] = np.vstack([self.placed[s], [[at, at + words, life.start, life.end]]])
        return s


def _raise_does_not_fit(
    tiled: TiledProgram, alloc: Allocation, target: Target, where: str, packing: ConstPacking
) -> None:
    peak = alloc.peak_words * target.word_bytes
    if peak > target.sram_bytes:
        consts = const_words(tiled, packing) * target.word_bytes
        raise DoesNotFitError(
            f"{where}: needs {human_bytes(peak)} of SRAM at its peak, target {target.name} has "
            f"{human_bytes(target.sram_bytes)} (over by {human_bytes(peak - target.sram_bytes)}; "
            f"constants {human_bytes(consts)}, largest: {largest_constants(tiled, target)})"
        )
    raise DoesNotFitError(
        f"{where}: peak live data {human_bytes(peak)} fits the {human_bytes(target.sram_bytes)} "
        f"of {target.name}, but "
        f"{len(alloc.failures)} tiles could not be packed into slices (fragmentation)"
    )
