"""Narrow constant tiles share words side by side (lpuc.schedule.packing): padding given back,
numerics unchanged, and the validator still refuses what packing must never produce."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import lpuc
from lpuc.program import Program
from tests.models import ort_run
from tests.mutate import refusals

TARGETS = Path(lpuc.__file__).resolve().parent / "targets"


@pytest.fixture(scope="module")
def two_matmuls(tmp_path_factory):
    """x [4, 64] @ w1 [64, 96] @ w2 [96, 96]: on 64-lane tiles both weights end in 32-lane tiles."""
    rng = np.random.default_rng(2)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("MatMul", ["h", "w2"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 96])],
        [
            numpy_helper.from_array(rng.standard_normal((64, 96)).astype(np.float32), "w1"),
            numpy_helper.from_array(rng.standard_normal((96, 96)).astype(np.float32) / 8, "w2"),
        ],
    )
    path = tmp_path_factory.mktemp("packing") / "mm2.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), str(path))
    return path


def tight_mini(directory: Path) -> Path:
    """tsp-mini with 5 slices of 256 addresses (1280 words): tiles of 32 rows; the 10 weight tiles of
    two_matmuls fill it exactly unpacked (no room left for activations), packed they take 8."""
    raw = json.loads((TARGETS / "tsp-mini.json").read_text())
    raw["name"] = "tsp-tight"
    raw["floorplan"] = [["SXM", 1], ["MEM", 2], ["VXM", 1], ["MEM", 3], ["SXM", 1], ["MXM", 1]]
    raw["mem"]["addresses_per_slice"] = 256
    path = directory / "tsp-tight.json"
    path.write_text(json.dumps(raw))
    return path


@pytest.fixture(scope="module")
def packed(two_matmuls) -> Program:
    return lpuc.compile(two_matmuls, target=str(tight_mini(two_matmuls.parent)), precision="fp32")


def test_small_models_are_not_packed(two_matmuls):
    program = lpuc.compile(two_matmuls, target="tsp-mini", precision="fp32")
    assert all(t.lane == 0 for t in program.tiles)
    # Tails of 32 empty lanes: w1's (64 rows) and w2's two (64 and 32 rows), 4 bytes a value.
    assert program.summary["sram_const_padding_bytes"] == (64 + 64 + 32) * 32 * 4


def test_narrow_tiles_of_one_row_count_share_a_slot(packed):
    const = [t for t in packed.tiles if t.kind == "const"]
    slots: dict[tuple[int, int], list] = {}
    for t in const:
        slots.setdefault((t.slice, t.addr), []).append(t)
    shared = [ts for ts in slots.values() if len({t.lane for t in ts}) > 1]
    assert shared, "no two tails packed"
    for ts in slots.values():
        by_lane = {t.lane: t for t in ts}  # identical tiles may also share (same lane)
        assert len({(t.rows, t.dtype) for t in ts}) == 1
        spans = sorted((t.lane, t.lane + t.lanes) for t in by_lane.values())
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])) and spans[-1][1] <= 64
    assert all(t.lane == 0 for t in packed.tiles if t.kind != "const")
    # Constant bytes are the slots' words; padding is what their lanes leave empty (64 lanes, fp32).
    s = packed.summary
    words = {(t.slice, t.addr): t.rows * 4 for t in const}
    assert s["sram_const_bytes"] == sum(words.values()) * 64
    empty = {
        key: (64 - len({lane for t in ts for lane in range(t.lane, t.lane + t.lanes)})) * ts[0].rows * 4
        for key, ts in slots.items()
    }
    assert s["sram_const_padding_bytes"] == sum(empty.values())
    unpacked = (64 + 64 + 32) * 32 * 4  # three tails of 32 empty lanes (see the test above)
    assert s["sram_const_padding_bytes"] < unpacked


def test_packed_program_matches_onnxruntime_and_round_trips(packed, two_matmuls, tmp_path):
    feeds = {"x": np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)}
    expected = ort_run(two_matmuls, feeds)[0]
    np.testing.assert_allclose(packed.run(feeds)["y"], expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(packed.run(feeds, interpret=True)["y"], expected, rtol=1e-4, atol=1e-5)
    packed.save(tmp_path / "p.lpu")
    loaded = lpuc.load(tmp_path / "p.lpu")
    assert [t.lane for t in loaded.tiles] == [t.lane for t in packed.tiles]
    np.testing.assert_array_equal(loaded.run(feeds)["y"], packed.run(feeds)["y"])


def _with_tile(p: Program, tile_id: int, **changes) -> Program:
    tiles = list(p.tiles)
    tiles[tile_id] = dataclasses.replace(tiles[tile_id], **changes)
    return dataclasses.replace(p, tiles=tiles)


def test_validator_refuses_overlapping_lanes_and_shifted_computed_tiles(packed):
    upper = next(t for t in packed.tiles if t.kind == "const" and t.lane == 32)
    # Moved onto its neighbour's lanes: two live tiles share values.
    problems = refusals(_with_tile(packed, upper.id, lane=upper.lane - 16))
    assert any("overlap in slice" in p for p in problems), problems
    # Past the last lane of the word.
    problems = refusals(_with_tile(packed, upper.id, lane=48))
    assert any("lanes [48, 80)" in p for p in problems), problems
    # A computed tile never starts past lane 0 (instructions write whole words).
    temp = next(t for t in packed.tiles if t.kind in ("temp", "output") and t.lanes < 64)
    problems = refusals(_with_tile(packed, temp.id, lane=64 - temp.lanes))
    assert any("only constant tiles" in p for p in problems), problems
