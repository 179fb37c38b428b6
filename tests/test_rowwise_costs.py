"""The op table's rules for row-wise kernels (lpuc/ops.py): a softmax, a norm or a reduction streams
its input once per pass of its algorithm and counts its vector ALU ops per vector, per row's lane
trees and per row's statistics, so lpuc.cost lets it hold that many ALUs. Each case compiles one node,
reads the work its instructions carry and checks it against the rule worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import lpuc
from lpuc import cost
from tests.kernels.oracle import IR_VERSION
from tests.models import ort_run

LANES = 320  # tsp-v1


def _one_node(
    op: str, shape: list[int], out_shape: list[int], consts: dict | None = None, disable=(), **attrs
):
    consts = consts or {}
    graph = helper.make_graph(
        [helper.make_node(op, ["x", *consts], ["y"], **attrs)],
        op,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        [numpy_helper.from_array(v, k) for k, v in consts.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=IR_VERSION)
    return lpuc.compile(model, precision="fp32", disable_passes=disable)


def _kernels(program):
    return [i for i in program.instructions if i.opcode == "vxm.kernel"]


def _rows(accesses) -> int:
    return sum(a.nrows for a in accesses)


def test_layernorm_reads_twice_and_holds_alus_for_its_arithmetic():
    width = 768
    consts = {"scale": np.ones(width, np.float32), "bias": np.zeros(width, np.float32)}
    program = _one_node("LayerNormalization", [1, 128, width], [1, 128, width], consts, axis=-1)
    tiles = math.ceil(width / LANES)
    segments = _kernels(program)  # 128 rows: two 64-row segments (lpuc.lowering.row_segments)
    assert [_rows(i.writes) for i in segments] == [64 * tiles] * 2
    for ins in segments:
        rows = _rows(ins.writes) // tiles
        # The data and the scale and bias rows, twice; the result once.
        assert ins.work.vectors == 2 * _rows(ins.reads) + _rows(ins.writes)
        # Per vector: add, mul, add; sub, mul, mul, add. Per row: two 9-step lane trees (log2 320) and 6.
        tree = math.ceil(math.log2(LANES))
        assert ins.work.alu_ops == 7 * rows * tiles + rows * (2 * tree + 6)
        alus = cost.vxm_alus(program.target, "vxm.kernel", ins.work)
        assert alus == math.ceil(ins.work.alu_ops / ins.work.vectors) > 1
        # The old rule charged 5 passes of every vector through one ALU.
        assert cost.unit_cycles(program.target, "vxm.kernel", ins.work) < 5 * (
            _rows(ins.reads) + _rows(ins.writes)
        )
    (whole,) = _kernels(
        _one_node("LayerNormalization", [1, 128, width], [1, 128, width], consts, ("row_segments",), axis=-1)
    )
    assert _rows(whole.writes) == 128 * tiles  # without segments: one slab


@pytest.mark.parametrize("op, per_vector, per_row", [("Softmax", 7, 2), ("LogSoftmax", 6, 4)])
def test_softmax_reads_three_times_per_row_slab(op, per_vector, per_row):
    program = _one_node(op, [1, 4, 128, 128], [1, 4, 128, 128], axis=-1)
    slabs = _kernels(program)
    # 512 rows: one slab per 128-row matrix (320-row tiles would cut the third in two)
    assert [_rows(i.writes) for i in slabs] == [128] * 4
    for ins in slabs:
        rows = _rows(ins.writes)
        assert ins.work.vectors == 3 * _rows(ins.reads) + rows
        # Two 7-step trees (a max and a sum) per pair of 128-wide rows merged into one 320-lane
        # vector (a select per tree for the second row), and the statistics ops once per pair.
        pairs = rows // 2
        assert ins.work.alu_ops == per_vector * rows + pairs * (2 * 7 + per_row) + pairs * 2
        # The unpacked rule (a tree per row) is what rows wider than half a vector still pay.
        assert ins.work.alu_ops < per_vector * rows + rows * (2 * 7 + per_row)


def test_rows_wider_than_half_a_vector_get_a_tree_each():
    program = _one_node("Softmax", [1, 2, 128, 200], [1, 2, 128, 200], axis=-1)
    for ins in _kernels(program):
        rows = _rows(ins.writes)
        assert ins.work.alu_ops == 7 * rows + rows * (2 * 8 + 2)  # 8 steps: 200 lanes


def test_narrow_rows_pack_into_power_of_two_segments():
    # 100-wide rows: 7-step trees over 128-lane segments, two rows a vector (not three).
    program = _one_node("Softmax", [1, 2, 128, 100], [1, 2, 128, 100], axis=-1)
    for ins in _kernels(program):
        rows = _rows(ins.writes)
        packed = -(-rows // 2)
        assert ins.work.alu_ops == 7 * rows + packed * (2 * 7 + 2) + (rows - packed) * 2


@pytest.mark.parametrize("keepdims", [0, 1])
def test_reduction_over_the_last_axis_streams_once(keepdims):
    # keepdims=0 packs the 64 means into the lanes of one vector: still a tree per row.
    axes = {"axes": np.array([-1], np.int64)}
    program = _one_node("ReduceMean", [1, 64, 640], [1, 64, 1][: 3 - (not keepdims)], axes, keepdims=keepdims)
    (ins,) = _kernels(program)
    data_rows = 64 * 2  # two lane tiles per row
    assert ins.work.vectors == _rows(ins.reads) + _rows(ins.writes)
    # One add per data vector, then per row a 9-step lane tree and the mean's 1 / n.
    assert ins.work.alu_ops == data_rows + 64 * (9 + 1)


@pytest.mark.parametrize("keepdims", [0, 1])
def test_reduction_over_rows_has_no_lane_tree(keepdims):
    axes = {"axes": np.array([1], np.int64)}
    out_shape = [2, 640] if not keepdims else [2, 1, 640]
    program = _one_node("ReduceSum", [2, 64, 640], out_shape, axes, keepdims=keepdims)
    (ins,) = _kernels(program)
    # 2 x 64 rows of 2 lane tiles, one add each; the 2 x 2 result vectors need nothing more.
    assert ins.work.alu_ops == 2 * 64 * 2


def _side_by_side(tmp_path, op: str, count: int, shape: list[int], opset: int, shapes=None, **attrs):
    """A model of `count` independent `op` nodes, y{i} = op(x{i}), each [rows, cols] = shape (or
    shapes[i])."""
    shapes = shapes or [shape] * count
    graph = helper.make_graph(
        [helper.make_node(op, [f"x{i}"], [f"y{i}"], **attrs) for i in range(count)],
        op,
        [helper.make_tensor_value_info(f"x{i}", TensorProto.FLOAT, shapes[i]) for i in range(count)],
        [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, shapes[i]) for i in range(count)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=IR_VERSION)
    path = tmp_path / f"{op}.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def test_kernels_side_by_side_hold_fewer_alus_than_keep_pace(tmp_path):
    """Three independent softmaxes on a VXM of 16 ALUs: two of 128 x 256 (3,200 ops over 512 vectors:
    seven ALUs keep pace) and one of 128 x 128 (its rows packed two a vector: 2,048 ops, four keep
    pace). The two take seven each; the third runs beside them on the two left (1,024 cycles)
    instead of waiting for one of them to end (lpuc.cost.held_alus)."""
    names = ["x0", "x1", "x2"]
    shapes = [[128, 256], [128, 256], [128, 128]]
    path = _side_by_side(tmp_path, "Softmax", len(names), [], 18, shapes=shapes, axis=-1)
    program = lpuc.compile(path, precision="fp32", disable_passes=["row_segments"])  # one kernel each
    kernels = _kernels(program)
    assert sorted(k.work.alu_ops for k in kernels) == [2048, 3200, 3200]
    held = sorted(sum(u.startswith("VXM") for u in k.units) for k in kernels)
    assert held == [2, 7, 7]
    assert max(k.start for k in kernels) < min(k.end for k in kernels)  # all three at once
    rng = np.random.default_rng(0)
    feeds = {x: rng.normal(size=shape).astype(np.float32) for x, shape in zip(names, shapes)}
    got = program.run(feeds)
    want = ort_run(path, feeds)
    for name, expected in zip(["y0", "y1", "y2"], want):
        np.testing.assert_allclose(got[name], expected, rtol=1e-5, atol=1e-7)


def test_heavy_maps_side_by_side_wrap_over_fewer_alus(tmp_path):
    """Two independent GELUs (tanh form: ten chained ALU ops each) on a VXM of 16 ALUs: one chains
    its ten, the other runs beside it on the six left, wrapping its chain twice over them (twice
    the cycles per row), rather than waiting for the first to end (lpuc.cost.held_alus)."""
    names = ["x0", "x1"]
    path = _side_by_side(tmp_path, "Gelu", len(names), [128, 320], 20, approximate="tanh")
    program = lpuc.compile(path, precision="fp16")
    maps = [i for i in program.instructions if i.opcode == "vxm.map"]
    assert [m.work.alu_ops for m in maps] == [10, 10]
    assert sorted(sum(u.startswith("VXM") for u in m.units) for m in maps) == [6, 10]
    assert max(m.start for m in maps) < min(m.end for m in maps)  # side by side
    rng = np.random.default_rng(1)
    feeds = {x: rng.normal(size=(128, 320)).astype(np.float32) for x in names}
    got = program.run(feeds)
    for name, expected in zip(["y0", "y1"], ort_run(path, feeds)):
        np.testing.assert_allclose(got[name], expected, rtol=1e-2, atol=1e-3)
