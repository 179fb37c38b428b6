"""The compile-time shortcuts of scheduling and allocation give the answers of the long way:
giving up on MXM planes that cannot end first picks the plans a full search over every plane picks
(and the bounds it gives up by hold on every plane),
answers cached across placement rounds change no schedule (nor do answers by op kept for the ops whose
tiles stay put), a round that pins every tile keeps them where pinned, the allocator's first fit is
the lowest free address (against brute force), and its union of placed ranges, used for requests live
with every placed one, gives the addresses the test against each placed request gives."""

from __future__ import annotations

import random

import numpy as np
import pytest

import lpuc
import lpuc.api
from lpuc import cost
from lpuc.schedule import scheduler
from lpuc.schedule.allocator import Lifetime, _place_slice, lowest_gap
from lpuc.schedule.build import _forget_moved
from lpuc.schedule.dependencies import dependencies
from lpuc.schedule.placement import place_tiles
from lpuc.target import load_target
from tests.golden import models


def _tiled(path, monkeypatch):
    """The tiled program lpuc.compile schedules for `path` (tsp-v1, fp16)."""
    seen = {}
    build = lpuc.api.build_program

    def spy(tiled, target, *args, **kwargs):
        seen.setdefault("tiled", tiled)
        return build(tiled, target, *args, **kwargs)

    monkeypatch.setattr(lpuc.api, "build_program", spy)
    lpuc.compile(path, target="tsp-v1", precision="fp16")
    monkeypatch.undo()
    return seen["tiled"]


@pytest.fixture(scope="module", params=["mlp", "encoder", "gpt"])
def tiled(request, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    try:
        return _tiled(models.model_path(request.param, tmp_path_factory.mktemp("onnx")), mp)
    finally:
        mp.undo()


def test_planes_given_up_change_no_plan(tiled, monkeypatch):
    target = load_target("tsp-v1")
    slice_of = place_tiles(tiled, target)
    preds = dependencies(tiled)
    plan_groups, plans = scheduler._UnitState._plan_groups, []

    def counted(self, *args):
        plans.append(len(args[1]))
        return plan_groups(self, *args)

    monkeypatch.setattr(scheduler._UnitState, "_plan_groups", counted)
    pruned = scheduler.schedule(tiled, target, slice_of, preds)
    made = len(plans)
    # Without tails there are no bounds: every plane is planned in full, in plane order.
    monkeypatch.setattr(scheduler._UnitState, "_tails", lambda self, p, mms: None)
    full = scheduler.schedule(tiled, target, slice_of, preds)
    assert made < len(plans) - made, "planes were given up"
    assert pruned.slots == full.slots


def test_plane_bounds_hold_on_every_plane(tiled):
    """The plane bounds ask less than they bound: an MM's plane time (the rows streaming in) is the
    same on every plane (_tails asks it once), and an LW loading through one port per slice is never
    faster than at full rate (_first_mm_bound asks only that one)."""
    target = load_target("tsp-v1")
    state = scheduler._UnitState(target, tiled, place_tiles(tiled, target))
    planes = range(target.num_mxm)
    for op in tiled.ops:
        if op.opcode == "mxm.mm":
            assert len({state._request(op, f"MXM{p}")[1] for p in planes}) == 1, op
        elif op.opcode == "mxm.lw":
            for p in planes:
                full, one_port = (state._request(op, f"MXM{p}.LW", mode)[0] for mode in (False, True))
                assert one_port >= full, op


def _two_rounds(tiled):
    """The target, dependencies, a first round's slices, and a second round's with some tiles on
    other slices (as after an allocation failure)."""
    target = load_target("tsp-v1")
    first = place_tiles(tiled, target)
    moved = {b: (s + 1) % target.num_slices if b % 3 == 0 and s >= 0 else s for b, s in first.items()}
    return target, dependencies(tiled), first, moved


def test_answers_shared_by_rounds_change_no_schedule(tiled):
    target, preds, first, moved = _two_rounds(tiled)
    shared: dict = {}
    scheduler.schedule(tiled, target, first, preds, requests=shared)
    warm = scheduler.schedule(tiled, target, moved, preds, requests=shared)
    cold = scheduler.schedule(tiled, target, moved, preds)
    assert warm.slots == cold.slots


def test_answers_shared_by_planes_are_the_cost_models_per_unit(tiled):
    """_answer works out ports and N once for every unit, and stream ids once per side of the slices
    (lpuc.cost.stream_side): each answer is what lpuc.cost gives when asked for that very unit."""
    target = load_target("tsp-v1")
    slice_of = place_tiles(tiled, target, {})
    requests: dict = {}
    scheduler.schedule(tiled, target, slice_of, dependencies(tiled), requests=requests)
    units = {unit for _, unit, *_ in requests}
    assert {"MXM0", "MXM3"} <= units  # (MXM ops asked on planes of both sides)
    for (opcode, unit, work, reads, writes, precision, install, one_port, alus), answer in requests.items():
        d, busy, pools = answer
        n_unit = cost.unit_cycles(target, opcode, work, precision, alus)
        ports = cost.port_needs(target, opcode, [*reads, *writes], n_unit)
        ports = {s: 1 for s in ports} if one_port else ports
        args = (target, opcode, unit, work, reads, writes, precision, install, ports, alus)
        assert d == cost.duration.__wrapped__(*args)
        assert busy == (cost.occupancy.__wrapped__(*args) if opcode == "mxm.mm" else d)
        east, west = cost.stream_needs.__wrapped__(target, opcode, unit, reads, writes, work)
        names = {"SE0": east, "SW0": west}
        for first, want in names.items():
            assert [k for u, k, _ in pools if u[0] == first] == ([want] if want else [])


def _brute_first_fit(ranges: list[tuple[int, int]], words: int) -> int:
    starts = [0, *(hi for _, hi in ranges)]  # the lowest fit starts at 0 or where a range ends
    return min(a for a in starts if all(a + words <= lo or hi <= a for lo, hi in ranges))


@pytest.mark.parametrize("seed", range(30))
def test_lowest_gap_is_first_fit(seed):
    rng = random.Random(seed)
    n = rng.randint(0, 25)
    lo = np.array([rng.randrange(0, 60) for _ in range(n)], dtype=np.int64)
    hi = lo + np.array([rng.randint(1, 12) for _ in range(n)], dtype=np.int64)
    live = np.array([rng.random() < 0.7 for _ in range(n)], dtype=bool)
    words = rng.randint(1, 10)
    ranges = [(int(a), int(b)) for a, b, x in zip(lo, hi, live) if x]
    assert lowest_gap(lo, hi, live, words) == _brute_first_fit(ranges, words)


def test_answers_by_op_kept_for_unmoved_ops_change_no_schedule(tiled):
    target, preds, first, moved = _two_rounds(tiled)
    asked: dict = {}
    scheduler.schedule(tiled, target, first, preds, asked=asked)
    kept = len(asked)
    _forget_moved(asked, tiled, first, moved)
    assert 0 < len(asked) < kept, "some answers kept, those of ops on moved tiles dropped"
    warm = scheduler.schedule(tiled, target, moved, preds, asked=asked)
    cold = scheduler.schedule(tiled, target, moved, preds)
    assert warm.slots == cold.slots


def test_round_pinning_every_tile_keeps_them(tiled):
    target = load_target("tsp-v1")
    first = place_tiles(tiled, target)
    # Tiles other than constants moved (constants keep their slots' slices), all of them pinned.
    pinned = {
        b.id: (first[b.id] + 1) % target.num_slices if not b.is_const and not b.host else first[b.id]
        for b in tiled.buffers
    }
    assert place_tiles(tiled, target, pinned) == pinned


def _place_slice_long_way(reqs, capacity):
    """The allocator's loop with every request tested against each placed one (no union)."""
    order = sorted(reqs, key=lambda r: (-r[1], r[2].start, r[0]))
    lo, hi, start, end = (np.zeros(0, dtype=np.int64) for _ in range(4))
    out, failed = {}, []
    for rid, words, life in order:
        at = lowest_gap(lo, hi, (start < life.end) & (life.start < end), words)
        if at + words > capacity:
            failed.append(rid)
            continue
        out[rid] = at
        lo, hi = np.append(lo, at), np.append(hi, at + words)
        start, end = np.append(start, life.start), np.append(end, life.end)
    return out, failed


@pytest.mark.parametrize("seed", range(40))
def test_union_first_fit_is_the_long_way(seed):
    rng = random.Random(seed)
    end = 100
    reqs = []
    for rid in range(rng.randint(0, 60)):
        words = rng.choice([0, 1, 2, 4, 8, 8, 16, 16, 32]) if seed % 4 == 0 else rng.choice([1, 2, 4, 8, 16])
        if rng.random() < 0.6:  # a constant: live throughout
            life = Lifetime(0, end)
        else:
            a = rng.randrange(0, end - 1)
            life = Lifetime(a, rng.randint(a + 1, end))
        reqs.append((rid, words, life))
    capacity = rng.choice([64, 128, 256])
    assert _place_slice(reqs, capacity) == _place_slice_long_way(reqs, capacity)


def test_rounds_booked_again_change_no_schedule(tiled, monkeypatch):
    """A round books the last round's placements again up to the first item with an op on a moved
    tile: the same slots as scheduling it afresh, with fewer fits."""
    target = load_target("tsp-v1")
    preds = dependencies(tiled)
    first_slices = place_tiles(tiled, target)
    first = scheduler.schedule(tiled, target, first_slices, preds)
    # The tiles written by the items placed in the second half move (as after an allocation failure).
    later = {item for item, _, _ in first.placed[len(first.placed) // 2 :]}
    written = {
        w.buf
        for op in tiled.ops
        if (op.chain if op.chain >= 0 else op.group if op.group >= 0 else -1 - op.id) in later
        for w in op.writes
        if not tiled.buffers[w.buf].is_const
    }
    moved = {b: (s + 1) % target.num_slices if b in written else s for b, s in first_slices.items()}
    stale = _forget_moved({}, tiled, first_slices, moved)
    assert stale
    fit, fits = scheduler._UnitState._fit, []

    def counted(self, pools, t):
        fits.append(t)
        return fit(self, pools, t)

    monkeypatch.setattr(scheduler._UnitState, "_fit", counted)
    cold = scheduler.schedule(tiled, target, moved, preds)
    cold_fits = len(fits)
    again = scheduler.schedule(tiled, target, moved, preds, again=(first, stale))
    assert again.slots == cold.slots
    assert again.placed == cold.placed
    assert 0 < len(fits) - cold_fits < cold_fits, "the first half booked again, the rest fitted"
    assert cold.slots != first.slots, "the moves change the schedule (else nothing is tested)"


class _EveryOption(scheduler._UnitState):
    """place() fitting every unit, ALU count and port mode, also those that cannot end first."""

    def place(self, op, ready):
        units = {"VXM": self.vxm[:1], "SXM": self.sxm}.get(op.unit_class, ["HOST"])
        port_modes = (True, False) if op.opcode in scheduler._KERNELS else (False,)
        best = None
        for u in units:
            for alus in self._alu_options(op):
                for one_port in port_modes:
                    d, _, pools = self._request(op, u, one_port, alus)
                    t, held = self._fit(pools, ready)
                    if best is None or t + d < best[0].end:
                        best = (scheduler.Slot(tuple(name for name, _ in held), t, d), held)
        self._reserve(best[0].start, best[1])
        return best


def test_options_that_cannot_end_first_change_no_slot(tiled, monkeypatch):
    target = load_target("tsp-v1")
    slice_of = place_tiles(tiled, target)
    preds = dependencies(tiled)
    short = scheduler.schedule(tiled, target, slice_of, preds)
    monkeypatch.setattr(scheduler, "_UnitState", _EveryOption)
    assert scheduler.schedule(tiled, target, slice_of, preds).slots == short.slots
