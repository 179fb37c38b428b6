"""The compile-time shortcuts of scheduling and allocation give the answers of the long way:
giving up on MXM planes that cannot end first picks the plans a full search over every plane picks,
answers cached across placement rounds change no schedule, and the allocator's first fit is the
lowest free address (against brute force)."""

from __future__ import annotations

import random

import numpy as np
import pytest

import lpuc
import lpuc.api
from lpuc.schedule import scheduler
from lpuc.schedule.allocator import _lowest_gap
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


def test_answers_shared_by_rounds_change_no_schedule(tiled):
    target = load_target("tsp-v1")
    preds = dependencies(tiled)
    first = place_tiles(tiled, target)
    # A second round with some tiles on other slices, as after an allocation failure.
    moved = {b: (s + 1) % target.num_slices if b % 3 == 0 and s >= 0 else s for b, s in first.items()}
    shared: dict = {}
    scheduler.schedule(tiled, target, first, preds, requests=shared)
    warm = scheduler.schedule(tiled, target, moved, preds, requests=shared)
    cold = scheduler.schedule(tiled, target, moved, preds)
    assert warm.slots == cold.slots


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
    assert _lowest_gap(lo, hi, live, words) == _brute_first_fit(ranges, words)
