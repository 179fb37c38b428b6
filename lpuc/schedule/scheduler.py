"""List scheduling: every tile op gets its unit(s), a start cycle and a duration.

Priority is the longest path to the end of the program (upward rank; the ops of a weight group or
accumulation chain follow one another on their plane, so the path goes through the next one). Ready
ops are taken in priority order and placed at the earliest time their inputs have arrived and their
unit is free; VXM, SXM and host timelines accept ops into earlier gaps (insertion scheduling).

MXM weight groups (one LW and the MMs that use its weights) are placed as a whole on one plane, in
time order per plane, honouring double buffering: an LW fills the plane's shadow weights while the
previous group computes, but only after that group installed its weights (IW).

Besides its unit, every op books what lpuc.cost says it holds for its whole duration: VXM ALUs, ports
on the MEM slices it reads and writes, and east/west stream ids. An op starts at the earliest cycle
at which all of them are free, so no slice or stream is oversubscribed in any cycle.
"""

from __future__ import annotations

import heapq
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from lpuc import cost
from lpuc.cost import Stream
from lpuc.dtypes import words_per_row
from lpuc.ir.tiled import TiledProgram, TileOp
from lpuc.schedule.dependencies import dependencies
from lpuc.target import Target

# Ops that walk tensors tile by tile, which may book one port per slice (place).
_KERNELS = frozenset({"sxm.kernel", "vxm.kernel"})


def _banded_im2col(op: TileOp) -> bool:
    """A copy of a banded Im2Col (passes/band_conv_rows) reading its bands' windows, several in a tile
    of the image: it books one port per slice. With both banks (it writes its rows a little
    faster so) each copy locks the image's slices from the copy beside it, and the greedy placement
    ran every copy on one SXM (light SqueezeNet fp16 41,318 cycles with one port, 42,130 with both)."""
    inner = op.attrs.get("attrs") or {}
    banded = op.attrs.get("kernel") == "Im2Col" and bool(inner.get("row_bands"))
    return banded and len(op.reads) > len({r.buf for r in op.reads})  # (not one read of each tile)


# A resource request: candidate units, how many of them, and for how many cycles.
Pool = tuple[Sequence[str], int, int]


@dataclass(frozen=True)
class Slot:
    units: tuple[str, ...]  # the first is the unit whose queue holds the instruction
    start: int
    duration: int

    @property
    def end(self) -> int:
        return self.start + self.duration


class Timeline:
    """Busy intervals of one unit, kept sorted and disjoint; touching intervals are merged (the unit is
    busy over their union either way, and the lists stay short)."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.horizon = 0  # the last busy cycle + 1: from here on the unit is free

    def is_free(self, t: int, dur: int) -> bool:
        """Whether the unit is free for [t, t + dur)."""
        if t >= self.horizon:  # most ops are placed after everything booked so far
            return True
        i = bisect_right(self.starts, t)
        return (i == 0 or self.ends[i - 1] <= t) and (i == len(self.starts) or self.starts[i] >= t + dur)

    def earliest(self, t: int, dur: int) -> int:
        if t >= self.horizon:
            return t
        i = bisect_right(self.starts, t) - 1
        if i >= 0 and self.ends[i] > t:
            t = self.ends[i]
        i += 1
        while i < len(self.starts) and self.starts[i] < t + dur:
            t = max(t, self.ends[i])
            i += 1
        return t

    def reserve(self, t: int, dur: int) -> None:
        end = t + dur
        starts, ends = self.starts, self.ends
        if t >= self.horizon:  # after everything booked (nine in ten bookings): no search
            if ends and ends[-1] == t:
                ends[-1] = end
            else:
                starts.append(t)
                ends.append(end)
            self.horizon = end
            return
        if end > self.horizon:
            self.horizon = end
        i = bisect_right(starts, t)
        if i > 0 and ends[i - 1] == t:  # continues the interval before it
            ends[i - 1] = end
            if i < len(starts) and starts[i] == end:  # and closes the gap to the next one
                ends[i - 1] = ends.pop(i)
                starts.pop(i)
        elif i < len(starts) and starts[i] == end:  # ends where the next one starts
            starts[i] = t
        else:
            starts.insert(i, t)
            ends.insert(i, end)

    def release(self, t: int, dur: int) -> None:
        """Undo reserve(t, dur): [t, t + dur) leaves the busy interval holding it (merged with its
        neighbours or not), which keeps what lies before and after."""
        end = t + dur
        starts, ends = self.starts, self.ends
        i = bisect_right(starts, t) - 1
        if starts[i] == t:
            if ends[i] == end:
                del starts[i], ends[i]
            else:
                starts[i] = end
        elif ends[i] == end:
            ends[i] = t
        else:  # from the middle: split in two
            starts.insert(i + 1, end)
            ends.insert(i + 1, ends[i])
            ends[i] = t
        self.horizon = ends[-1] if ends else 0


# What placing one scheduling item decided: the item, its ops' slots with the units and cycles each
# holds (in the item's op order), and for a weight group or chain its plane and that plane's state
# after it (lw_free, plane_free, installed_at); None for a single op.
Placed = tuple[int, tuple[tuple[Slot, tuple[tuple[str, int], ...]], ...], tuple[int, tuple] | None]


@dataclass
class Schedule:
    slots: list[Slot]  # indexed by tile op id
    makespan: int
    preds: list[set[int]]
    placed: list[Placed] = field(default_factory=list)  # in the order the items were placed


def schedule(
    program: TiledProgram,
    target: Target,
    slice_of: Mapping[int, int],
    preds: list[set[int]] | None = None,
    rank: list[int] | None = None,
    requests: dict | None = None,
    asked: dict | None = None,
    again: tuple[Schedule, frozenset[int]] | None = None,
) -> Schedule:
    """`preds` (lpuc.schedule.dependencies) and `rank` (upward_ranks) depend on the program only: a
    caller that schedules one program several times may compute them once and pass them, and the
    same dict as `requests` (what ops need, by what the answer depends on) to each schedule. So may
    `asked` (the same answers by op, unit and port mode), once it dropped the entries of the ops
    whose tiles changed slices (their answers differ).

    `again`: an earlier schedule of this program and the ids of the ops whose tiles have changed
    slices since. Items are taken in the same order every time (ranks and dependencies only), so
    until the first item holding such an op, each finds the units as the earlier schedule left them
    and places as it did: those placements are booked again as they were, without fitting them."""
    ops = program.ops
    preds = dependencies(program) if preds is None else preds
    # A scheduling item is an accumulation chain, a weight group, or a single op; chains and groups
    # (ids >= 0, a chain named by its first group) are placed whole on one plane, singles are < 0.
    item_of = [op.chain if op.chain >= 0 else op.group if op.group >= 0 else -1 - op.id for op in ops]
    groups: dict[int, list[int]] = {}
    for op in ops:
        if item_of[op.id] >= 0:
            groups.setdefault(item_of[op.id], []).append(op.id)
    members = {**{g: m for g, m in groups.items()}, **{-1 - op.id: [op.id] for op in ops if op.group < 0}}

    rank = upward_ranks(program, preds, target) if rank is None else rank
    item_preds: dict[int, set[int]] = {}
    item_succs: dict[int, set[int]] = {}
    for item, ids in members.items():
        ps = {item_of[p] for i in ids for p in preds[i]} - {item}
        item_preds[item] = ps
        for p in ps:
            item_succs.setdefault(p, set()).add(item)
    pending = {item: len(ps) for item, ps in item_preds.items()}
    heap = [
        (-max(rank[i] for i in ids), min(ids), item) for item, ids in members.items() if pending[item] == 0
    ]
    heapq.heapify(heap)

    state = _UnitState(target, program, slice_of, requests, asked)
    slots: list[Slot | None] = [None] * len(ops)
    earlier, moved_ops = (again[0].placed, again[1]) if again is not None else ([], frozenset())
    placed: list[Placed] = []
    while heap:
        _, _, item = heapq.heappop(heap)
        ids = members[item]
        k = len(placed)
        if k < len(earlier) and earlier[k][0] == item and moved_ops.isdisjoint(ids):
            state.book_again(earlier[k], ids, slots)
            placed.append(earlier[k])
        else:
            earlier = []  # from here on, items may find other units free: each is fitted
            if item >= 0:
                plan, plane = state.place_group([ops[i] for i in ids], preds, slots)
            else:
                op = ops[ids[0]]
                slot, held = state.place(op, _ready(op.id, preds, slots))
                slots[op.id], plan, plane = slot, ((slot, held),), None
            placed.append((item, tuple(plan), plane))
        for s in sorted(item_succs.get(item, ())):
            pending[s] -= 1
            if pending[s] == 0:
                heapq.heappush(heap, (-max(rank[i] for i in members[s]), min(members[s]), s))
    if any(s is None for s in slots):
        raise AssertionError("scheduler left ops unplaced (dependency cycle)")
    makespan = max((s.end for s in slots), default=0)
    return Schedule(slots, makespan, preds, placed)


def _ready(op_id: int, preds: list[set[int]], slots: list[Slot | None]) -> int:
    return max([slots[p].end for p in preds[op_id]], default=0)


def plane_order_successors(ops: list[TileOp], planes: int = 0) -> dict[int, int]:
    """Op id -> the next op of its weight-stationary group (an LW and the MMs streaming row tiles past
    its weights) or accumulation chain (groups of one MM each, summing K chunks): they run in order
    on one plane, so an op's path to the end also goes through that next op (a slab the item's first
    MM reads is wanted first). Not along the chains of a K-split product's parts, which a map adds
    up and which are meant to run side by side: ranked as one chain each, the 2304x4096x320 GEMM lost
    5% of its MXM utilization in fp16 (91.0% -> 86.6%) and 8% in int8."""
    stationary = {op.group for op in ops if op.opcode == "mxm.mm" and op.chain < 0}
    k_parts = {op.chain for op in ops if op.attrs.get("k_part")}
    successor: dict[int, int] = {}
    last_of_item: dict[int, int] = {}
    for op in reversed(ops):
        key = op.group if op.group in stationary else -1 if op.chain in k_parts else op.chain
        if key >= 0:
            if key in last_of_item:
                successor[op.id] = last_of_item[key]
            last_of_item[key] = op.id
    if planes:
        successor.update(_chain_waves(ops, stationary, k_parts, planes))
    return successor


def _chain_waves(ops: list[TileOp], stationary: set[int], k_parts: set[int], planes: int) -> dict[int, int]:
    """A product with more accumulation chains than planes, each over rows of its own (a tall
    product's row segments), runs them in waves, `planes` at a time: chain j's last op is followed
    on its plane by chain j + planes's first. Ranked so, the first wave's inputs (a quantize map per
    K slab and row segment) are wanted before the second's; ranked as side by side, the maps went K
    slab by K slab over every chain and each plane's second chain waited for the last map (int8 GEMM
    [2304x4096]x[4096x320]: 14,288 cycles, 13,677 in waves). Not for chains sharing their rows (a
    short product's N chunks), which read the same activations anyway: ranked in waves, GPT-2 12L
    int8 went from 220,128 to 223,090 cycles and BERT-base fp16 from 301,875 to 304,249."""
    successor: dict[int, int] = {}
    for ordered in _waved_chains(ops, stationary, k_parts, planes):
        for before, after in zip(ordered, ordered[planes:]):
            successor[before[-1].id] = after[0].id
    return successor


def _waved_chains(
    ops: list[TileOp], stationary: set[int], k_parts: set[int], planes: int
) -> list[list[list[TileOp]]]:
    """Per product run in waves (_chain_waves), its chains in order, each as its ops."""
    chains: dict[str, dict[int, list[TileOp]]] = defaultdict(dict)
    for op in ops:
        if op.chain >= 0 and op.group not in stationary and op.chain not in k_parts:
            chains[op.node].setdefault(op.chain, []).append(op)
    waved = []
    for by_chain in chains.values():
        ordered = [by_chain[c] for c in sorted(by_chain)]
        if len(ordered) > planes and _own_rows(ordered):
            waved.append(ordered)
    return waved


def _maps_ahead_of_their_wave(program: TiledProgram, rank: list[int], planes: int) -> None:
    """Raise the ranks of the maps computing a wave's activations (_chain_waves: an int8 product's
    input quantize) above the ranks of that wave's chains, keeping their order among themselves.

    A chain is placed whole, with its weight loads, once the maps it reads are placed; the maps of a
    wave's other chains, ranked lower (the last K slabs' maps have little path left), were placed
    after it and had to fit around its loads, which hold both banks of their slices: a map reading
    a slice with weights waited for a gap of its whole duration between them (the int8 GEMM
    [2304x4096]x[4096x320]'s last map ended at 8,535 of 8,963 cycles; with this 7,946, and 1536 rows:
    7,829 -> 7,506 cycles). Ranked so, a wave's maps are all placed before its chains. Only maps
    writing 1-byte (quantized) activations, as meant: a float build's BatchNorm/ReLU maps lifted too
    were placed ahead of longer paths (DenseNet-121 fp16 350,713 -> 353,191 cycles; lifting them
    helped only Inception v1 fp16, 94,655 -> 94,231)."""
    ops = program.ops
    stationary = {op.group for op in ops if op.opcode == "mxm.mm" and op.chain < 0}
    k_parts = {op.chain for op in ops if op.attrs.get("k_part")}
    waved = _waved_chains(ops, stationary, k_parts, planes)
    if not waved:
        return
    writers: dict[int, list[int]] = defaultdict(list)
    for op in ops:
        if op.opcode == "vxm.map":
            for w in op.writes:
                if program.buffers[w.buf].dtype.itemsize == 1:
                    writers[w.buf].append(op.id)
    original = list(rank)
    for ordered in waved:
        for w0 in range(0, len(ordered), planes):
            wave = ordered[w0 : w0 + planes]
            top = max(original[op.id] for chain in wave for op in chain)
            reads = {op.reads[0].buf for chain in wave for op in chain if op.opcode == "mxm.mm"}
            maps = sorted({m for buf in reads for m in writers.get(buf, ())})
            if not maps:
                continue
            lift = top + 1 - min(original[m] for m in maps)
            for m in maps:
                rank[m] = max(rank[m], original[m] + lift)


def _own_rows(chains: list[list[TileOp]]) -> bool:
    """Whether no two chains' MMs read the same activation rows."""
    seen: set[tuple[int, int]] = set()
    for chain in chains:
        rows = {(op.reads[0].buf, op.reads[0].row0) for op in chain if op.opcode == "mxm.mm"}
        if rows & seen:
            return False
        seen |= rows
    return True


def upward_ranks(program: TiledProgram, preds: list[set[int]], target: Target) -> list[int]:
    """Longest path to the end of the program, with durations estimated before slices are known
    (every tile taken to be in slice 0)."""
    ops = program.ops
    succ_best = [0] * len(ops)
    rank = [0] * len(ops)
    anywhere = defaultdict(int)
    next_in_item = plane_order_successors(ops, target.num_mxm)
    for op in reversed(ops):
        if op.id in next_in_item:
            succ_best[op.id] = max(succ_best[op.id], rank[next_in_item[op.id]])
        unit = {"MXM": "MXM0", "MXM.LW": "MXM0.LW", "VXM": "VXM0", "SXM": "SXM0"}.get(op.unit_class, "HOST")
        reads, writes = op_streams(program, op, anywhere)
        precision = op.attrs.get("precision", program.precision)
        estimate = cost.duration(target, op.opcode, unit, op.work, reads, writes, precision)
        rank[op.id] = estimate + succ_best[op.id]
        for p in preds[op.id]:
            if rank[op.id] > succ_best[p]:
                succ_best[p] = rank[op.id]
    _maps_ahead_of_their_wave(program, rank, target.num_mxm)
    return rank


class _UnitState:
    def __init__(
        self,
        target: Target,
        program: TiledProgram,
        slice_of: Mapping[int, int],
        requests: dict | None = None,
        asked: dict | None = None,
    ):
        self.target = target
        self.program = program
        self.slice_of = slice_of
        self.timelines = {u: Timeline() for u in target.units()}
        self.vxm = [f"VXM{i}" for i in range(target.vxm_alus)]
        self.sxm = [f"SXM{i}" for i in range(target.num_sxm)]
        self.east = stream_units(target, "E")
        self.west = stream_units(target, "W")
        n = target.num_mxm
        self.plane_free = [0] * n
        self.lw_free = [0] * n
        self.installed_at = [-target.iw_cycles] * n
        self._planes = range(n)
        # Plane unit names made once: a fresh string hashes anew at every request it keys.
        self._mm_unit = [f"MXM{p}" for p in self._planes]
        self._lw_unit = [f"MXM{p}.LW" for p in self._planes]
        self._stream_cache: dict[int, tuple[tuple[Stream, ...], tuple[Stream, ...]]] = {}
        # _request's answers by what they depend on: ops of repeated layers ask the same questions,
        # and so does each placement round of one program.
        self._request_cache: dict[tuple, tuple[int, int, list[Pool]]] = {} if requests is None else requests
        # The same answers by op, unit, port mode and ALUs held (slices are fixed while scheduling): an
        # MXM op asks again per plane tried, and this key is cheap to hash (the one above hashes the
        # work record).
        self._asked: dict[tuple, tuple[int, int, list[Pool]]] = {} if asked is None else asked
        # _answer's N and port pools by all but the unit, its stream ids by the unit's side.
        self._ports: dict[tuple, tuple[int, list[tuple[list[str], int]]]] = {}
        self._side: dict[str, tuple[int, int, bool]] = {}
        self._streams_needed: dict[tuple, tuple[int, int]] = {}
        self._mm_busy: dict[int, int] = {}  # MM op id -> cycles it holds its plane, on any plane (_tails)

    # -- what an op needs -------------------------------------------------------------------------
    def _streams(self, op: TileOp) -> tuple[tuple[Stream, ...], tuple[Stream, ...]]:
        # Asked once per plane an MXM op is tried on; the slices do not change while scheduling.
        found = self._stream_cache.get(op.id)
        if found is None:
            reads, writes = op_streams(self.program, op, self.slice_of)
            found = self._stream_cache[op.id] = (tuple(reads), tuple(writes))
        return found

    def _request(
        self, op: TileOp, unit: str, one_port: bool = False, alus: int | None = None
    ) -> tuple[int, int, list[Pool]]:
        """Duration and occupancy of `op` on `unit`, and the resource pools it books (one_port: a
        single port on each slice, streaming more slowly, rather than what its rate could use;
        alus: the ALUs a VXM kernel holds, None: as many as keep up with its stream).
        The pools are shared between the ops that ask the same question: do not modify them."""
        asked = (op.id, unit, one_port, alus)
        found = self._asked.get(asked)
        if found is not None:
            return found
        reads, writes = self._streams(op)
        precision = op.attrs.get("precision", self.program.precision)
        install = bool(op.attrs.get("install"))
        # Everything the answer depends on (keep in step with _answer).
        key = (op.opcode, unit, op.work, reads, writes, precision, install, one_port, alus)
        found = self._request_cache.get(key)
        if found is None:
            found = self._request_cache[key] = self._answer(*key)
        self._asked[asked] = found
        return found

    def _answer(
        self,
        opcode: str,
        unit: str,
        work: cost.Work,
        reads: tuple[Stream, ...],
        writes: tuple[Stream, ...],
        precision: str,
        install: bool,
        one_port: bool,
        alus: int | None,
    ) -> tuple[int, int, list[Pool]]:
        # Ports, N and the port pools do not depend on the unit: an MXM op asks on every plane, and
        # only its latency (and, by side, its streams) differs between them.
        same_ports = (opcode, work, reads, writes, precision, one_port, alus)
        shared = self._ports.get(same_ports)
        if shared is None:
            target = self.target
            n_unit = cost.unit_cycles(target, opcode, work, precision, alus)
            ports = cost.port_needs(target, opcode, [*reads, *writes], n_unit)
            if one_port:
                ports = {s: 1 for s in ports}
            n = cost.streaming_cycles(target, opcode, work, reads, writes, precision, ports, alus)
            port_pools = [(port_units(target, s), k) for s, k in ports.items()]
            shared = self._ports[same_ports] = (n, port_pools)  # (shared by the answers: read only)
        n, port_pools = shared
        d = cost.duration_after_streaming(self.target, opcode, unit, work, reads, writes, install, n)
        busy = d if opcode != "mxm.mm" else cost.mm_occupancy(self.target, install, n)
        pools: list[Pool] = []
        if opcode.startswith("vxm."):
            pools.append((self.vxm, cost.held_alus(self.target, opcode, work, alus), d))
        else:
            pools.append(([unit], 1, busy))
            if cost.has_epilogue(opcode, work):  # the fused map's ALUs, for the whole duration
                pools.append((self.vxm, cost.epilogue_alus(self.target, work, precision), d))
        pools += [(units, k, d) for units, k in port_pools]
        side = self._side.get(unit)
        if side is None:
            side = self._side[unit] = cost.stream_side(self.target, unit)
        # (one_port and alus change no stream: keyed without them)
        same_streams = (opcode, side, work, reads, writes)
        found = self._streams_needed.get(same_streams)
        if found is None:
            found = cost.stream_needs.__wrapped__(self.target, opcode, unit, reads, writes, work)
            self._streams_needed[same_streams] = found
        east, west = found
        if east:
            pools.append((self.east, east, d))
        if west:
            pools.append((self.west, west, d))
        return d, busy, pools

    def _fit(self, pools: list[Pool], t: int) -> tuple[int, tuple[tuple[str, int], ...]]:
        """Earliest start >= t at which every pool has its count of units free for its cycles; the
        units chosen (the first free ones of each pool, in pool order), each with the cycles it is held.

        A pool short of units at t stays short until its k-th soonest free unit is free, so jumping
        there skips no feasible start: the answer is the least feasible start, whatever order the
        pools are checked in. Pools are checked round-robin from the one that last failed, until all
        of them pass at the same t (the last len(pools) checks: so each entry of `chosen` is from t)."""
        timelines = self.timelines
        n = len(pools)
        chosen: list[list[str]] = [[]] * n
        i = passed = 0
        while passed < n:
            names, k, d = pools[i]
            end = t + d
            free: list[str] = []
            for u in names:  # stops at the first k units free at t: the common case
                line = timelines[u]
                if t < line.horizon:  # Timeline.is_free, inline: the hottest test of a compile
                    starts = line.starts
                    j = bisect_right(starts, t)
                    if (j and line.ends[j - 1] > t) or (j < len(starts) and starts[j] < end):
                        continue
                free.append(u)
                if len(free) == k:
                    break
            else:  # fewer than k free at t: on to when the k-th of them is, the same pool again
                later = sorted([e for u in names if (e := timelines[u].earliest(t, d)) != t])
                t = later[k - len(free) - 1]
                passed = 0
                continue
            chosen[i] = free
            passed += 1
            i = i + 1 if i + 1 < n else 0
        return t, tuple([(u, d) for (_, _, d), units in zip(pools, chosen) for u in units])

    def _reserve(self, start: int, held: tuple[tuple[str, int], ...]) -> None:
        timelines = self.timelines
        for u, d in held:
            line = timelines[u]
            if start >= line.horizon:  # Timeline.reserve's common case, inline (after all it holds)
                end, ends = start + d, line.ends
                if ends and ends[-1] == start:
                    ends[-1] = end
                else:
                    line.starts.append(start)
                    ends.append(end)
                line.horizon = end
            else:
                line.reserve(start, d)

    def _release(self, start: int, held: tuple[tuple[str, int], ...]) -> None:
        timelines = self.timelines
        for u, d in held:
            timelines[u].release(start, d)

    # -- placing ops --------------------------------------------------------------------------------
    def place(self, op: TileOp, ready: int) -> tuple[Slot, tuple[tuple[str, int], ...]]:
        """The op's slot, and the units it holds with their cycles (booked)."""
        units = {"VXM": self.vxm[:1], "SXM": self.sxm}.get(op.unit_class, ["HOST"])
        best: tuple[Slot, tuple] | None = None
        # A kernel may also book a single port per slice, streaming more slowly where its words are
        # many; tried first, so that on a tie it leaves the other bank to the ops beside it (Im2Col
        # slabs of an NCHW image read three plane windows of one tile: with both banks each, they
        # ran one after another).
        port_modes = (True, False) if op.opcode in _KERNELS else (False,)
        if _banded_im2col(op):
            port_modes = (True,)
        for u in units:  # VXM ALUs are interchangeable: the pool picks them
            for alus in self._alu_options(op):
                for one_port in port_modes:
                    d, _, pools = self._request(op, u, one_port, alus)
                    if best is not None and ready + d >= best[0].end:
                        continue  # it starts at `ready` at the soonest: it cannot end first
                    t, held = self._fit(pools, ready)
                    if best is None or t + d < best[0].end:
                        best = (Slot(tuple(name for name, _ in held), t, d), held)
        self._reserve(best[0].start, best[1])
        return best

    def _alu_options(self, op: TileOp) -> list[int | None]:
        """ALUs a VXM kernel or map may hold: as many as keep up with its stream or chain its ops
        (None), or fewer, down to half of them, streaming more slowly (lpuc.cost.held_alus; the
        placement that ends first wins): a softmax that wants six of sixteen ALUs runs beside two
        others on the four left, not after them. Only maps holding over half the ALUs (GPT-2's
        GELU, 11): a light map wrapped to start sooner held its ports and streams longer than it
        gained (int8 GEMM 2304x4096x320: 14,414 cycles, 15,026 with every map)."""
        if op.opcode not in ("vxm.kernel", "vxm.map"):
            return [None]
        want = cost.vxm_alus(self.target, op.opcode, op.work)
        if op.opcode == "vxm.map" and 2 * want <= self.target.vxm_alus:
            return [None]
        return [None, *range(want - 1, (want + 1) // 2 - 1, -1)]

    def place_group(
        self, item: list[TileOp], preds, slots: list[Slot | None]
    ) -> tuple[list[tuple[Slot, tuple]], tuple[int, tuple[int, int, int]]]:
        """A weight group, or an accumulation chain of them, on the plane where it ends first. Returns
        its ops' slots with the units they hold (booked), and the plane with its state after it."""
        groups: list[list[TileOp]] = []
        for op in item:  # in id order: each group's LW, then its MMs
            if op.opcode == "mxm.lw":
                groups.append([])
            groups[-1].append(op)
        # The plan that ends first wins, the lowest plane on a tie. Planes are tried from the one that
        # could end soonest, and a plane is given up once it can no longer win (lower bounds below):
        # the same plan wins as if every plane were planned in full, with fewer plans made.
        mms = [op for op in item if op.opcode == "mxm.mm"]
        tails = {p: self._tails(p, mms) if mms and item[-1] is mms[-1] else None for p in self._planes}
        lw_ready = _ready(groups[0][0].id, preds, slots)
        first = {p: self._first_mm_bound(p, groups[0][0], lw_ready) for p in self._planes}
        if mms:  # nor before its activations are in, on any plane (its ops in other items are placed)
            arrived = max([slots[q].end for q in preds[mms[0].id] if slots[q] is not None], default=0)
            first = {p: max(t, arrived) for p, t in first.items()}
        bound = {p: first[p] + tails[p][0] if tails[p] else 0 for p in self._planes}
        best = None
        booked: list[tuple[Slot, tuple]] = []  # the latest plan, still reserved
        for p in sorted(self._planes, key=lambda p: (bound[p], p)):
            if best is not None and (bound[p], p) > best[0]:
                break  # neither can any plane after it
            for slot, held in booked:  # tried, not taken (yet)
                self._release(slot.start, held)
            plan, state = self._plan_groups(p, groups, preds, slots, tails[p], best and best[0])
            booked = plan
            if state is not None and (best is None or (plan[-1][0].end, p) < best[0]):
                best = ((plan[-1][0].end, p), plan, state)
        (_, p), plan, state = best
        if booked is not plan:  # else the winner, planned last, is reserved already
            for slot, held in booked:
                self._release(slot.start, held)
            for slot, held in plan:
                self._reserve(slot.start, held)
        for op, (slot, _) in zip(item, plan):
            slots[op.id] = slot
        self.lw_free[p], self.plane_free[p], self.installed_at[p] = state
        return plan, (p, state)

    def book_again(self, placed: Placed, ids: list[int], slots: list[Slot | None]) -> None:
        """Book an item as an earlier schedule placed it (`ids`: its ops, in the item's order)."""
        _, plan, plane = placed
        for op_id, (slot, held) in zip(ids, plan):
            self._reserve(slot.start, held)
            slots[op_id] = slot
        if plane is not None:
            p, state = plane
            self.lw_free[p], self.plane_free[p], self.installed_at[p] = state

    def _tails(self, p: int, mms: list[TileOp]) -> list[int]:
        """Per MM of an item on plane p: cycles from its start to the end of the item's last MM at
        the least (each MM starts once the plane has taken in the previous one's rows)."""
        unit, asked, held = self._mm_unit[p], self._asked, self._mm_busy
        # _request, its cache looked up inline: asked for every plane of every item. Only the last
        # MM's duration depends on the plane; the others' plane time is the same on every plane
        # (lpuc.cost.occupancy: rows streaming in), so a plane never planned costs one answer.
        last = asked.get((mms[-1].id, unit, False, None)) or self._request(mms[-1], unit)
        tail = [last[0]]
        for mm in reversed(mms[:-1]):
            busy = held.get(mm.id)
            if busy is None:
                busy = held[mm.id] = (asked.get((mm.id, unit, False, None)) or self._request(mm, unit))[1]
            tail.append(tail[-1] + busy)
        return tail[::-1]

    def _first_mm_bound(self, p: int, lw: TileOp, lw_ready: int) -> int:
        """The earliest an item's first MM could start on plane p: after its plane is free and its
        weights (inputs ready at `lw_ready`) are loaded at the faster of the two rates _plan_groups
        tries: the full one (one port per slice streams the same words through no more ports, and
        lpuc.cost charges the same latency; so a plane never planned costs one answer, not two)."""
        installed = self.installed_at[p] + self.target.iw_cycles
        ready = max(lw_ready, self.lw_free[p], installed)
        load = self._request(lw, self._lw_unit[p], False)[0]
        return max(self.plane_free[p], ready + load)

    def _plan_groups(
        self, p, groups, preds, slots, tail: list[int] | None = None, beat: tuple[int, int] | None = None
    ) -> tuple[list[tuple[Slot, tuple]], tuple[int, int, int] | None]:
        """The groups on plane p, in order: each LW fills the shadow buffer once the previous group
        installed its weights; its MMs follow once the weights are loaded, each as soon as the plane
        has taken in the previous one's rows. Reserves what it plans (the caller releases it).
        Gives up (state None) once the plan cannot end before `beat` (end, plane), by `tail` (_tails)."""
        lw_unit, mm_unit = self._lw_unit[p], self._mm_unit[p]
        lw_free, plane_free, installed_at = self.lw_free[p], self.plane_free[p], self.installed_at[p]
        plan = []
        j = 0  # the item's MMs planned so far
        for lw, *mms in groups:
            ready = max(_ready(lw.id, preds, slots), lw_free, installed_at + self.target.iw_cycles)
            # A load at full rate, or at one port per slice if that finishes first (ports are taken).
            options = []
            for one_port in (False, True):
                d, _, pools = self._request(lw, lw_unit, one_port)
                if options and (ready + d > options[0][0] or pools == options[0][4]):
                    break  # the slower load cannot finish first, or books the same: not worth a fit
                start, held = self._fit(pools, ready)
                options.append((start + d, start, d, held, pools))
            _, start, d, held, _ = min(options, key=lambda o: o[:2])
            plan.append((Slot(_names(held), start, d), held))
            self._reserve(start, held)  # later ops of the item overlap it in time
            lw_free = start + d
            t = max(plane_free, lw_free)
            # Its next MM starts at t or later: the plan may lose here, before fitting it.
            if beat is not None and tail is not None and mms and (t + tail[j], p) > beat:
                return plan, None
            for k, mm in enumerate(mms):
                d, busy, pools = self._request(mm, mm_unit)
                t, held = self._fit(pools, max(t, _ready(mm.id, preds, slots)))
                plan.append((Slot(_names(held), t, d), held))
                self._reserve(t, held)
                if beat is not None and tail is not None and (t + tail[j], p) > beat:
                    return plan, None
                j += 1
                if k == 0:
                    installed_at = t
                t += busy
            plane_free = t
        return plan, (lw_free, plane_free, installed_at)


def _names(held: tuple[tuple[str, int], ...]) -> tuple[str, ...]:
    return tuple(name for name, _ in held)


def op_streams(
    program: TiledProgram, op: TileOp, slice_of: Mapping[int, int]
) -> tuple[list[Stream], list[Stream]]:
    """The cost model's view of an op's windows once its tiles have slices."""
    buffers = program.buffers

    def where(r) -> tuple[int, int]:
        return slice_of[r.buf], words_per_row(buffers[r.buf].dtype)

    return cost.window_streams(op.opcode, op.attrs, op.reads, op.writes, where)


def port_units(target: Target, slice_index: int) -> list[str]:
    """The bank ports of one MEM slice (a shared list: do not modify it)."""
    key = (slice_index, target.mem_banks)  # all a name depends on (a Target hashes slowly)
    names = _PORT_UNITS.get(key)
    if names is None:
        names = _PORT_UNITS[key] = [f"MEM{slice_index}.p{j}" for j in range(target.mem_banks)]
    return names


_PORT_UNITS: dict[tuple[int, int], list[str]] = {}


def stream_units(target: Target, direction: str) -> list[str]:
    return [f"S{direction}{j}" for j in range(target.streams_per_direction)]
