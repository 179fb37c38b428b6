"""Narrow constant tiles share words side by side (lpuc.schedule.packing): padding given back,
numerics unchanged, and the validator still refuses what packing must never produce."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import lpuc
from lpuc.program import Program
from tests.models import ort_run
from tests.mutate import refusals


@pytest.fixture(scope="module")
def two_matmuls(tmp_path_factory):
    """x [4, 64] @ w1 [64, 96] @ w2 [96, 96]: on tsp-mini's 64-lane tiles both weights end in a
    32-lane tile; w1's (64 rows) and w2's first (64 rows) can share one slot, w2's second (32 rows)
    has no partner of its row count."""
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


@pytest.fixture(scope="module")
def packed(two_matmuls) -> Program:
    return lpuc.compile(two_matmuls, target="tsp-mini", precision="fp32")


def test_narrow_tiles_of_one_row_count_share_a_slot(packed):
    const = {(t.tensor, t.r0, t.c0): t for t in packed.tiles if t.kind == "const"}
    w1_tail, w2_tail, w2_short_tail = const[("w1", 0, 64)], const[("w2", 0, 64)], const[("w2", 64, 64)]
    assert (w1_tail.slice, w1_tail.addr) == (w2_tail.slice, w2_tail.addr)
    assert {w1_tail.lane, w2_tail.lane} == {0, 32}
    assert w2_short_tail.lane == 0
    assert all(t.lane == 0 for t in packed.tiles if t.kind != "const")
    # Words (fp32: 4 per row): w1 64 rows x 1 full tile + the shared slot (64 rows), w2 64 + 32 rows
    # of full tiles + its 32-row tail alone; only that tail pads: 32 rows x 32 lanes x 4 bytes.
    s = packed.summary
    assert s["sram_const_bytes"] == (64 + 64 + 64 + 32 + 32) * 4 * 64
    assert s["sram_const_padding_bytes"] == 32 * 32 * 4


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
    const = {(t.tensor, t.r0, t.c0): t for t in packed.tiles if t.kind == "const"}
    upper = max(const[("w1", 0, 64)], const[("w2", 0, 64)], key=lambda t: t.lane)
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
