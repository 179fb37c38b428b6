"""List scheduling: every tile op gets its unit(s), a start cycle and a duration.

Priority is the longest path to the end of the program (upward rank). Ready ops are taken in
priority order and placed at the earliest time their inputs have arrived and their unit is free;
VXM, SXM and host timelines accept ops into earlier gaps (insertion scheduling).

MXM weight groups (one LW and the MMs that use its weights) are placed as a whole on one plane, in
time order per plane, honouring double buffering: an LW fills the plane's shadow weights while the
previous group computes, but only after that group installed its weights (IW).
"""

from __future__ import annotations

import heapq
from bisect import bisect_right
from collections.abc import Mapping
from dataclasses import dataclass

from lpuc.ir.tiled import TiledProgram, TileOp
from lpuc.schedule.costs import duration, estimate
from lpuc.schedule.dependencies import dependencies
from lpuc.target import Target


@dataclass(frozen=True)
class Slot:
    units: tuple[str, ...]  # the first is the unit whose queue holds the instruction
    start: int
    duration: int

    @property
    def end(self) -> int:
        return self.start + self.duration


class Timeline:
    """Busy intervals of one unit, kept sorted and disjoint."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []

    def earliest(self, t: int, dur: int) -> int:
        i = bisect_right(self.starts, t) - 1
        if i >= 0 and self.ends[i] > t:
            t = self.ends[i]
        i += 1
        while i < len(self.starts) and self.starts[i] < t + dur:
            t = max(t, self.ends[i])
            i += 1
        return t

    def reserve(self, t: int, dur: int) -> None:
        i = bisect_right(self.starts, t)
        self.starts.insert(i, t)
        self.ends.insert(i, t + dur)


@dataclass
class Schedule:
    slots: list[Slot]  # indexed by tile op id
    makespan: int
    preds: list[set[int]]


def schedule(program: TiledProgram, target: Target, slice_of: Mapping[int, int]) -> Schedule:
    ops = program.ops
    preds = dependencies(program)
    groups: dict[int, list[int]] = {}
    for op in ops:
        if op.group >= 0:
            groups.setdefault(op.group, []).append(op.id)
    item_of = [op.group if op.group >= 0 else -1 - op.id for op in ops]  # groups >= 0, singles < 0
    members = {**{g: m for g, m in groups.items()}, **{-1 - op.id: [op.id] for op in ops if op.group < 0}}

    rank = _upward_ranks(ops, preds, target)
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

    state = _UnitState(target)
    slots: list[Slot | None] = [None] * len(ops)
    while heap:
        _, _, item = heapq.heappop(heap)
        ids = members[item]
        if item >= 0:
            state.place_group([ops[i] for i in ids], preds, slots, slice_of)
        else:
            op = ops[ids[0]]
            slots[op.id] = state.place(op, _ready(op.id, preds, slots), slice_of)
        for s in sorted(item_succs.get(item, ())):
            pending[s] -= 1
            if pending[s] == 0:
                heapq.heappush(heap, (-max(rank[i] for i in members[s]), min(members[s]), s))
    if any(s is None for s in slots):
        raise AssertionError("scheduler left ops unplaced (dependency cycle)")
    makespan = max((s.end for s in slots), default=0)
    return Schedule(slots, makespan, preds)


def _ready(op_id: int, preds: list[set[int]], slots: list[Slot | None]) -> int:
    return max((slots[p].end for p in preds[op_id]), default=0)


def _upward_ranks(ops: list[TileOp], preds: list[set[int]], target: Target) -> list[int]:
    succ_best = [0] * len(ops)
    rank = [0] * len(ops)
    for op in reversed(ops):
        rank[op.id] = estimate(target, op) + succ_best[op.id]
        for p in preds[op.id]:
            if rank[op.id] > succ_best[p]:
                succ_best[p] = rank[op.id]
    return rank


class _UnitState:
    def __init__(self, target: Target):
        self.target = target
        self.timelines = {u: Timeline() for u in target.units()}
        self.vxm = [f"VXM{i}" for i in range(target.vxm_alus)]
        self.sxm = [f"SXM{i}" for i in range(target.num_sxm)]
        n = target.num_mxm
        self.plane_free = [0] * n
        self.lw_free = [0] * n
        self.installed_at = [-target.iw_cycles] * n

    def place(self, op: TileOp, ready: int, slice_of: Mapping[int, int]) -> Slot:
        if op.unit_class == "VXM":
            return self._place_vxm(op, ready, slice_of)
        units = self.sxm if op.unit_class == "SXM" else ["HOST"]
        best = None
        for u in units:
            d = duration(self.target, u, op, slice_of)
            t = self.timelines[u].earliest(ready, d)
            if best is None or t + d < best[0] + best[1]:
                best = (t, d, u)
        t, d, u = best
        self.timelines[u].reserve(t, d)
        return Slot((u,), t, d)

    def _place_vxm(self, op: TileOp, ready: int, slice_of: Mapping[int, int]) -> Slot:
        k = min(op.alus, len(self.vxm))
        d = duration(self.target, self.vxm[0], op, slice_of)
        t = ready
        while True:
            free = sorted((self.timelines[u].earliest(t, d), i) for i, u in enumerate(self.vxm))
            t_k = free[k - 1][0]
            if t_k == t:
                chosen = sorted(i for start, i in free if start == t)[:k]
                break
            t = t_k
        for i in chosen:
            self.timelines[self.vxm[i]].reserve(t, d)
        return Slot(tuple(self.vxm[i] for i in chosen), t, d)

    def place_group(self, group: list[TileOp], preds, slots: list[Slot | None], slice_of) -> None:
        lw, mms = group[0], group[1:]
        best = None
        for p in range(len(self.plane_free)):
            plan = self._plan_group(p, lw, mms, preds, slots, slice_of)
            if best is None or plan[-1].end < best[1][-1].end:
                best = (p, plan)
        p, plan = best
        for op, slot in zip(group, plan):
            slots[op.id] = slot
            self.timelines[slot.units[0]].reserve(slot.start, slot.duration)
        self.lw_free[p] = plan[0].end
        self.plane_free[p] = plan[-1].end
        self.installed_at[p] = plan[1].start

    def _plan_group(self, p, lw, mms, preds, slots, slice_of) -> list[Slot]:
        lw_unit, mm_unit = f"MXM{p}.LW", f"MXM{p}"
        d = duration(self.target, lw_unit, lw, slice_of)
        start = max(
            _ready(lw.id, preds, slots), self.lw_free[p], self.installed_at[p] + self.target.iw_cycles
        )
        plan = [Slot((lw_unit,), start, d)]
        t = max(self.plane_free[p], start + d)
        for mm in mms:
            t = max(t, _ready(mm.id, preds, slots))
            d = duration(self.target, mm_unit, mm, slice_of)
            plan.append(Slot((mm_unit,), t, d))
            t += d
        return plan
