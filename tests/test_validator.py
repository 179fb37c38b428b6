"""The validator proves schedules legal: a hand-corrupted schedule is rejected, one rule per test."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import lpuc
from lpuc.dtypes import words_per_row
from lpuc.errors import ScheduleError
from lpuc.program import Program
from lpuc.schedule.validator import tile_lifetimes, validate
from tests.mutate import refusals, with_instruction


@pytest.fixture(scope="module")
def program(mlp_onnx) -> Program:
    return lpuc.compile(mlp_onnx, target="tsp-mini", precision="fp32")


def _relocate(p: Program, tile_id: int, slice_: int, addr: int) -> Program:
    """Move a tile's slot and every access to it consistently."""
    old = p.tiles[tile_id]
    tiles = list(p.tiles)
    tiles[tile_id] = dataclasses.replace(old, slice=slice_, addr=addr)

    def move(a):
        return dataclasses.replace(a, slice=slice_, addr=addr + a.addr - old.addr) if a.buf == tile_id else a

    instructions = [
        dataclasses.replace(i, reads=tuple(map(move, i.reads)), writes=tuple(map(move, i.writes)))
        for i in p.instructions
    ]
    return dataclasses.replace(p, tiles=tiles, instructions=instructions)


def test_compiled_program_is_valid(program):
    validate(program)


def test_rejects_double_booked_unit(program):
    first, second = _two_on_one_unit(program)
    start = program.instructions[first].start
    problems = refusals(with_instruction(program, second, start=start))
    assert any("double-booked" in p for p in problems), problems


def test_rejects_read_before_write_completes(program):
    k, ins, producer = next(
        (k, i, w)
        for k, i in enumerate(program.instructions)
        for a in i.reads
        if program.tiles[a.buf].kind == "temp"
        for w in program.instructions
        if w.id < i.id and any(x.buf == a.buf for x in w.writes)
    )
    problems = refusals(with_instruction(program, k, start=producer.end - 1))
    assert any("comes before it" in p for p in problems), problems


def test_rejects_overlapping_sram_slots(program):
    life = tile_lifetimes(program)
    temps = [t for t in program.tiles if t.kind == "temp"]
    a, b = next(
        (a, b)
        for a in temps
        for b in temps
        if a.id < b.id and life[a.id][0] < life[b.id][1] and life[b.id][0] < life[a.id][1]
    )
    problems = refusals(_relocate(program, b.id, a.slice, a.addr))
    assert any("overlap in slice" in p for p in problems), problems


def test_rejects_address_past_capacity(program):
    tile = next(t for t in program.tiles if t.kind == "temp")
    capacity = program.target.addresses_per_slice
    moved = _relocate(program, tile.id, tile.slice, capacity - words_per_row(tile.np_dtype))
    problems = refusals(moved)
    assert any("exceeds the slice capacity" in p for p in problems), problems


def test_rejects_mm_without_loaded_weights(program):
    k = next(k for k, i in enumerate(program.instructions) if i.opcode == "mxm.lw")
    instructions = [i for j, i in enumerate(program.instructions) if j != k]
    problems = refusals(dataclasses.replace(program, instructions=instructions))
    assert any("no LW loaded" in p or "no installed weights" in p for p in problems), problems


def test_rejects_unknown_opcode(program):
    problems = refusals(with_instruction(program, 0, opcode="vxm.teleport"))
    assert any("unknown opcode 'vxm.teleport'" in p for p in problems), problems


def test_runtime_implements_exactly_the_instruction_set():
    from lpuc.program import OPCODES
    from lpuc.runtime.isa import HANDLERS

    assert set(HANDLERS) == set(OPCODES)


def test_a_changed_copy_is_validated_again_before_it_runs(program):
    """Programs are checked once per object; a copy made with dataclasses.replace is a new object."""
    assert program.validated
    first, second = _two_on_one_unit(program)
    broken = with_instruction(program, second, start=program.instructions[first].start)
    assert not broken.validated
    with pytest.raises(ScheduleError, match="double-booked"):
        broken.run({b.name: np.zeros(b.shape, np.float32) for b in broken.inputs})


def _two_on_one_unit(p: Program) -> tuple[int, int]:
    by_unit: dict[str, list[int]] = {}
    for k, ins in enumerate(p.instructions):
        by_unit.setdefault(ins.unit, []).append(k)
    return tuple(next(v for v in by_unit.values() if len(v) >= 2)[:2])


def test_sram_overlap_sweep_agrees_with_every_pair():
    """The validator's n log n sweep for tiles live at once in overlapping addresses gives the answer
    of the all-pairs check on random slices (shared constant slots included), or defers to it."""
    from lpuc.program import TileSlot
    from lpuc.schedule.validator import _live_overlap_by_pairs, _live_overlap_by_sweep

    rng = np.random.default_rng(0)
    answers = {True: 0, False: 0, None: 0}
    for case in range(400):
        n = int(rng.integers(1, 12))
        tiles, life = [], []
        for i in range(n):
            shared = case % 3 == 0 and i and rng.random() < 0.3  # a copy of an earlier constant
            if shared:
                src = tiles[int(rng.integers(0, i))]
                tiles.append(dataclasses.replace(src, id=i))
                life.append(life[src.id])
                continue
            const = rng.random() < 0.3
            rows = int(rng.integers(1, 8))
            tiles.append(
                TileSlot(
                    i,
                    f"t{i}",
                    "float16",
                    rows,
                    32,
                    0,
                    0,
                    0,
                    int(rng.integers(0, 40)),
                    "const" if const else "temp",
                    f"k{i}" if const else None,
                )
            )
            start = 0 if const else int(rng.integers(0, 30))
            life.append((start, 60 if const else start + int(rng.integers(1, 20))))
        swept = _live_overlap_by_sweep(tiles, life)
        answers[swept] += 1
        if swept is not None:
            assert swept == _live_overlap_by_pairs(tiles, life), (tiles, life)
    assert answers[True] > 50 and answers[False] > 50  # both answers were exercised
