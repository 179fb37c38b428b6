"""The scheduler's resource search against brute force: Timeline answers and _fit's pick (the least
start at which every pool has its count of units free for its own duration, and the first free units
of each pool) on random bookings."""

from __future__ import annotations

import random

import pytest

from lpuc.schedule.scheduler import Timeline, _UnitState


def _busy(intervals: list[tuple[int, int]], t: int, d: int) -> bool:
    return any(s < t + d and t < e for s, e in intervals)


def _random_bookings(rng: random.Random, n: int) -> list[tuple[int, int]]:
    """Disjoint [start, end) intervals, some touching (merged by Timeline), in random order."""
    out, t = [], 0
    for _ in range(n):
        t += rng.choice([0, 0, 1, 3, 10])
        d = rng.randint(1, 12)
        out.append((t, t + d))
        t += d
    rng.shuffle(out)
    return out


@pytest.mark.parametrize("seed", range(20))
def test_timeline_answers_like_its_intervals(seed):
    rng = random.Random(seed)
    booked = _random_bookings(rng, rng.randint(0, 30))
    line = Timeline()
    for s, e in booked:
        line.reserve(s, e - s)
    assert all(s < e for s, e in zip(line.starts, line.ends))
    assert all(e < s for e, s in zip(line.ends, line.starts[1:])), "touching intervals are merged"
    for t in range(0, 200, 3):
        for d in (1, 2, 5, 17):
            expected = next(x for x in range(t, 10_000) if not _busy(booked, x, d))
            assert line.earliest(t, d) == expected
            assert line.is_free(t, d) == (not _busy(booked, t, d))


@pytest.mark.parametrize("seed", range(20))
def test_release_undoes_reserve(seed):
    """A tried-and-dropped booking (place_group tries every plane) leaves the timeline as it was, also
    when it was merged with the intervals it touches."""
    rng = random.Random(seed)
    booked = _random_bookings(rng, rng.randint(1, 30))
    kept, tried = booked[: len(booked) // 2], booked[len(booked) // 2 :]
    line, reference = Timeline(), Timeline()
    for s, e in kept:
        line.reserve(s, e - s)
        reference.reserve(s, e - s)
    for s, e in tried:
        line.reserve(s, e - s)
    for s, e in reversed(tried) if seed % 2 else tried:
        line.release(s, e - s)
    assert (line.starts, line.ends, line.horizon) == (reference.starts, reference.ends, reference.horizon)


class _Pools(_UnitState):
    """Only the timelines of a _UnitState: what _fit reads."""

    def __init__(self, names: list[str]) -> None:
        self.timelines = {u: Timeline() for u in names}


def _brute_fit(booked: dict[str, list[tuple[int, int]]], pools, t: int):
    for start in range(t, 100_000):
        chosen = []
        for names, k, d in pools:
            free = [u for u in names if not _busy(booked[u], start, d)][:k]
            if len(free) < k:
                break
            chosen += [(u, d) for u in free]
        else:
            return start, tuple(chosen)
    raise AssertionError("no start found")


@pytest.mark.parametrize("seed", range(40))
def test_fit_finds_the_least_start_and_the_first_free_units(seed):
    rng = random.Random(seed)
    groups = {g: [f"{g}{i}" for i in range(n)] for g, n in (("A", 1), ("P", 2), ("S", 6), ("V", 4))}
    state = _Pools([u for names in groups.values() for u in names])
    booked: dict[str, list[tuple[int, int]]] = {}
    for u, line in state.timelines.items():
        booked[u] = _random_bookings(rng, rng.randint(0, 12))
        for s, e in booked[u]:
            line.reserve(s, e - s)
    for _ in range(10):
        # Each pool with its own duration (an MXM unit may be held for less than its ports / streams).
        pools = [
            (groups[g], rng.randint(1, len(groups[g])), rng.randint(1, 20))
            for g in rng.sample(sorted(groups), rng.randint(1, 4))
        ]
        t = rng.randint(0, 150)
        assert state._fit(pools, t) == _brute_fit(booked, pools, t)
