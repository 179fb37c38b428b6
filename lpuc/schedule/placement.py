"""Which MEM slice holds each tile, decided before scheduling (transport delays depend on it).

Constant tiles are permanent: identical tiles share one slot (and so do narrow tiles packed side by
side, lpuc.schedule.packing), and slots go to the slice with the least constant data. Other tiles
are placed in program order on a slice with the least data estimated to be live at that point
(lifetimes estimated from program order), so that live data, and with it MEM bandwidth, is spread
evenly; among those, on the one whose tiles are accessed least by ops near this tile's own in program
order: tiles used at the same time on one slice queue on its two ports.
"""

from __future__ import annotations

import heapq
from collections import defaultdict

import numpy as np

from lpuc.ir.tiled import Buffer, TiledProgram
from lpuc.schedule.packing import ConstPacking
from lpuc.target import Target

# Ops this close in program order count as running at the same time. Measured (cycles): 16 suits the
# GPT-2-shaped decoder and ResNet-50 fp16 best; 32 helps ResNet-50 int8 but costs a serial LSTM 4%
# (its neighbours in program order run one after another), 8 misses overlapping conv layers.
NEAR_OPS = 16
# Slices whose estimated live data is within this many words of the least loaded one compete on
# accesses; a wider margin fragments SRAM on models that nearly fill it (GPT-2-shaped 12 layers).
SLACK_WORDS = 64


def place_tiles(
    program: TiledProgram,
    target: Target,
    pinned: dict[int, int] | None = None,
    packing: ConstPacking | None = None,
    spread_accesses: bool = True,
    scratch: bool = False,
    weight_sides: bool = True,
) -> dict[int, int]:
    """Buffer id -> slice index. `pinned` entries (from a previous attempt) are kept; constant
    tiles `packing` puts in one slot share a slice. `spread_accesses`: among the slices with the
    least live data, prefer those accessed least near the tile's own ops. `scratch`: for programs
    that nearly fill SRAM, constants fill most slices to the brim and leave room on a few
    (`scratch_budgets`), so that the free words are not scattered in holes too small for a tile.
    `weight_sides`: the constant tiles a weight load reads go to one side of the VXM (_weight_loads);
    not with `scratch`, whose slices are filled to budgets (one side's could not take them: BERT-base
    fp16 then needed lookup tables in host memory)."""
    packing = packing or ConstPacking()
    pinned = dict(pinned or {})
    n = target.num_slices
    load = np.zeros(n, dtype=np.int64)  # words
    slice_of: dict[int, int] = {}

    const_slot: dict[str, int] = {}
    vxm = target.position("VXM0")
    everywhere = np.arange(n)
    east = np.array([s for s in range(n) if target.slice_positions[s] > vxm])
    west = np.array([s for s in range(n) if target.slice_positions[s] < vxm])
    one_side = weight_sides and not scratch and len(west) and len(east)
    load_of = _weight_loads(program) if one_side else {}
    reloaded = _reloaded_weights(program, target) if one_side else set()
    side_of_load: dict[int, np.ndarray] = {}  # weight load -> the side its tiles go to
    budget = scratch_budgets(program, target, packing) if scratch else None
    # Tables read only by Gathers (an embedding) are cold: read by one op at the start. With scratch
    # room kept, they go to the scratch slices first, so that the weights streamed to the MXMs all
    # through the run do not share those slices' ports with the live data there.
    cold = _gather_tables(program) if budget is not None else set()
    scratch_slices = np.flatnonzero(budget < target.addresses_per_slice) if budget is not None else everywhere
    for buf in program.buffers:
        if not buf.is_const or buf.host:
            continue
        slot = packing.slot(buf.const_key)
        if slot in const_slot:
            slice_of[buf.id] = const_slot[slot]
            continue
        s = pinned.get(buf.id)
        if s is None:
            # Odd copies of a replicated constant go to the VXM's east side, the rest anywhere: maps
            # running side by side then read them over east and west streams alike.
            sides = east if buf.replica % 2 else everywhere
            if buf.id in load_of:  # the side of the least loaded slice, for all of the load's tiles
                lightest = west if target.slice_positions[int(np.argmin(load))] < vxm else east
                sides = side_of_load.setdefault(load_of[buf.id], lightest)
                if buf.id in reloaded:
                    sides = _weight_slices(target, sides, load, buf.words)
            if buf.id in cold and np.any(load[scratch_slices] + buf.words <= budget[scratch_slices]):
                sides = scratch_slices
            elif budget is not None and len(scratch_slices) < n:
                hot = np.setdiff1d(sides, scratch_slices)
                if len(hot) and np.any(load[hot] + buf.words <= budget[hot]):
                    sides = hot
            if budget is not None and np.any(load[sides] + buf.words <= budget[sides]):
                sides = sides[load[sides] + buf.words <= budget[sides]]
            s = int(sides[np.argmin(load[sides])])
        const_slot[slot] = s
        slice_of[buf.id] = s
        load[s] += buf.words

    others = [b for b in program.buffers if not b.is_const and not b.host]
    if all(b.id in pinned for b in others):  # a later round that moves no tile of its own choosing
        slice_of.update((b.id, pinned[b.id]) for b in others)
    else:
        _place_others(program, target, others, pinned, load, slice_of, spread_accesses)
    slice_of.update({b.id: -1 for b in program.buffers if b.host})  # host memory: no slice
    return slice_of


def _weight_loads(program: TiledProgram) -> dict[int, int]:
    """Constant buffer id -> the first weight load (op id) reading it: the tiles one load reads are
    placed on one side of the VXM, so that a plane on that side (two planes at each end of the chip)
    loads them with no more than half the chip's transport (a weight load holds its unit until its
    farthest word arrives: across the chip, that is twice the 40 cycles a K chunk's words take).
    The side is that of the least loaded slice: while slices on the west are empty (a small model),
    constants fill them first, as placement by load alone does, and so leave the activations where
    they were (the side by total load moved a toy ResNet's first Im2Col farther from its SXM: 3%)."""
    load_of: dict[int, int] = {}
    for op in program.ops:
        if op.opcode == "mxm.lw":
            for r in op.reads:
                b = program.buffers[r.buf]
                if b.is_const and not b.host:
                    load_of.setdefault(b.id, op.id)
    return load_of


def _reloaded_weights(program: TiledProgram, target: Target) -> set[int]:
    """Constant tiles read by more weight loads than there are planes (a tall product's weights,
    loaded again for each wave of its accumulation chains, by every plane in turn) whose MMs stream
    activations a VXM map computes (an int8 product's input quantize): those maps hold a bank of each
    slice they touch for hundreds of cycles, and the loads beside them hold both (_weight_slices).
    Not without such maps: the fp16 GEMM [2304x4096]x[4096x320], its input read by the MMs
    directly, ran 31,567 cycles with its weights packed, 31,437 spread."""
    by_map = {w.buf for op in program.ops if op.opcode == "vxm.map" for w in op.writes}
    fed = {op.group for op in program.ops if op.opcode == "mxm.mm" and op.reads and op.reads[0].buf in by_map}
    loads: dict[int, int] = defaultdict(int)
    for op in program.ops:
        if op.opcode == "mxm.lw" and op.group in fed:
            for r in op.reads:
                loads[r.buf] += 1
    return {b for b, n in loads.items() if n > target.num_mxm}


def _weight_slices(target: Target, side: np.ndarray, load: np.ndarray, words: int) -> np.ndarray:
    """The slices of `side` a weight load's tile may go to: the ones nearest the VXM, as many as let
    every plane load at its full rate at once (planes x lw_words_per_cycle / banks: 16 on tsp-v1),
    among those with room for it; the whole side when none has. Weights spread over every slice
    (by least constant data) put a load holding both banks of a slice beside almost every tile:
    the int8 GEMM [2304x4096]x[4096x320]'s quantize maps, each holding one bank of six slices for
    ~660 cycles, waited for loads of the same weight tile by four planes (9,738 -> 9,005 cycles
    packed; the slices farthest from the VXM instead: 11,001)."""
    vxm = target.position("VXM0")
    count = -(-target.num_mxm * target.lw_words_per_cycle // target.mem_banks)
    nearest = sorted(side, key=lambda s: (abs(target.slice_positions[s] - vxm), s))[:count]
    roomy = [s for s in nearest if load[s] + words <= target.addresses_per_slice]
    return np.array(sorted(roomy), dtype=side.dtype) if roomy else side


def _place_others(
    program: TiledProgram,
    target: Target,
    others: list[Buffer],
    pinned: dict[int, int],
    load: np.ndarray,
    slice_of: dict[int, int],
    spread_accesses: bool,
) -> None:
    """Place the tiles that are neither constants nor in host memory (place_tiles), given the
    constants' slices and their words per slice (`load`)."""
    n = target.num_slices
    # Ops (program order) touching each slice: tiles used by ops close in program order likely run
    # at the same time, and two of them on one slice queue on its two ports.
    touches = np.zeros((n, len(program.ops) + 1), dtype=np.int32)
    users = _users(program)
    # The constants' touches, as one scatter-add (each buffer's op ids are distinct).
    placed = [(s, i) for buf_id, s in slice_of.items() for i in users.get(buf_id, ())]
    if placed:
        at = np.array(placed, dtype=np.intp)
        np.add.at(touches, (at[:, 0], at[:, 1]), 1)

    first, last = _program_order_lifetimes(program, users)
    releases: list[tuple[int, int, int, int]] = []  # (release index, buffer id, slice, words)
    live = load.copy()
    order = sorted(others, key=lambda b: (first.get(b.id, -1), b.id))
    cursor = 0
    for buf in order:
        now = first.get(buf.id, -1)
        while releases and releases[0][0] < now:
            _, _, s, words = heapq.heappop(releases)
            live[s] -= words
        s = pinned.get(buf.id)
        if s is None:
            # The fewest accesses near this tile's in program order, then the least live data; ties
            # rotate so equal tiles of one tensor land on different slices.
            roomy = live <= live.min() + (SLACK_WORDS if spread_accesses else 0)
            near = _near(touches, users.get(buf.id, [])) if spread_accesses else np.zeros(n, np.int64)
            near[~roomy] = np.iinfo(np.int64).max
            fewest = near == near.min()
            candidates = np.flatnonzero(fewest & (live == live[fewest].min()))
            s = int(candidates[np.searchsorted(candidates, cursor % n) % len(candidates)])
            cursor = s + 1
        slice_of[buf.id] = s
        touches[s, users.get(buf.id, [])] += 1
        live[s] += buf.words
        end = last.get(buf.id, len(program.ops)) if not buf.is_output else len(program.ops)
        heapq.heappush(releases, (end, buf.id, s, buf.words))


def scratch_budgets(program: TiledProgram, target: Target, packing: ConstPacking) -> np.ndarray:
    """Constant words each slice may take when scratch room is kept: the full slice, except on
    evenly spread slices that keep room for two typical large tiles (`scratch_room`), as many as
    the SRAM the constants leave free allows."""
    n, capacity = target.num_slices, target.addresses_per_slice
    slots = {packing.slot(b.const_key): b.words for b in program.buffers if b.is_const and not b.host}
    free = n * capacity - sum(slots.values())
    room = scratch_room([b.words for b in program.buffers if not b.is_const and not b.host])
    budget = np.full(n, capacity, dtype=np.int64)
    count = min(n, free // room) if room and free > 0 else 0
    if count:
        budget[np.linspace(0, n - 1, count).round().astype(np.int64)] -= room
    return budget


def scratch_room(tile_words: list[int]) -> int:
    """Words each scratch slice keeps: the largest tile beside one of the size that half of the
    live words come in (or larger), so that a largest tile, often live for long (a key's transpose
    through all of a layer's heads), still leaves room for the tiles used meanwhile. Room for two of
    the largest instead leaves fewer slices for live data, whose ports it then shares. BERT-base
    fp16 with stacked products (24 tiles of 640 words the largest, half the words in 256-word
    halves): room for the largest alone (640) left 11 keys' transposes no slice in any round, and
    the lean step failed; 896 fits, 287,570 cycles (768: 296,138, 1,024: 310,559, 1,152: 308,562)."""
    if not tile_words:
        return 0
    sizes = np.sort(np.asarray(tile_words, dtype=np.int64))[::-1]
    half = np.searchsorted(np.cumsum(sizes), sizes.sum() / 2)  # the tile at half the words, from the top
    return int(sizes[0] + sizes[half])


def _gather_tables(program: TiledProgram) -> set[int]:
    """Constant tiles that no op but a Gather reads."""
    gathered: set[int] = set()
    other: set[int] = set()
    for op in program.ops:
        into = gathered if op.attrs.get("kernel") == "Gather" else other
        into.update(r.buf for r in op.reads)
    return {b for b in gathered - other if program.buffers[b].is_const}


def _users(program: TiledProgram) -> dict[int, list[int]]:
    """Buffer id -> the ops that read or write it, in program order."""
    users: dict[int, list[int]] = {}
    for op in program.ops:
        for r in op.reads + op.writes:
            ids = users.setdefault(r.buf, [])
            if not ids or ids[-1] != op.id:
                ids.append(op.id)
    return users


def _near(touches: np.ndarray, ops: list[int]) -> np.ndarray:
    """Per slice: accesses by ops within NEAR_OPS of any of `ops`."""
    total = np.zeros(touches.shape[0], dtype=np.int64)
    for i in ops:
        total += touches[:, max(0, i - NEAR_OPS) : i + NEAR_OPS + 1].sum(axis=1)
    return total


def _program_order_lifetimes(
    program: TiledProgram, users: dict[int, list[int]]
) -> tuple[dict[int, int], dict[int, int]]:
    """Per buffer, the first and last op using it (model inputs: live from before the first op)."""
    first = {b: ids[0] for b, ids in users.items()}
    last = {b: ids[-1] for b, ids in users.items()}
    for buf in program.buffers:
        if buf.is_input:
            first[buf.id] = -1
    return first, last
