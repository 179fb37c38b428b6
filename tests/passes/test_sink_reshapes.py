"""sink_reshapes: elementwise ops move above the reshapes that feed them, so bias, activation (and
int8 requantization) fuse into one map."""

from __future__ import annotations

import numpy as np
from onnx import helper

import lpuc
from lpuc.passes.sink_reshapes import sink_reshapes
from tests.passes.helpers import assert_matches_onnxruntime, imported, model, ops, rand, run_pass

_N = helper.make_node


def _conv_like(activation_inputs=("r",), shape_after=(1, 8, 8, 32)):
    """[64, 32] rows + bias -> Reshape to NHWC -> Relu (+ a second reshaped operand)."""
    nodes = [
        _N("Add", ["x", "b"], ["a"]),
        _N("Reshape", ["a", "s"], ["r"]),
        _N("Relu", list(activation_inputs), ["y"]),
    ]
    inits = {"b": rand(32, seed=1), "s": np.array(shape_after, np.int64)}
    return model(nodes, {"x": [64, 32]}, {"y": list(shape_after)}, inits)


def test_relu_moves_above_the_reshape():
    graph = run_pass(sink_reshapes, imported(_conv_like()))
    assert ops(graph) == ["Add", "Relu", "Reshape"]
    relu = next(n for n in graph.nodes if n.op == "Relu")
    assert graph.values[relu.outputs[0]].shape == (64, 32) and relu.inputs[0] == "a"


def test_residual_sum_fused_into_one_map_and_matches_onnxruntime():
    """Two bias adds, each reshaped to NHWC, summed and activated (a residual block's end): the sum
    moves above both reshapes, and the bias adds, sum and ReLU become one map."""
    shape = np.array([1, 8, 8, 32], np.int64)
    nodes = [
        _N("Add", ["x", "b"], ["a"]),
        _N("Add", ["z", "c"], ["d"]),
        _N("Reshape", ["a", "s"], ["ra"]),
        _N("Reshape", ["d", "s"], ["rd"]),
        _N("Add", ["ra", "rd"], ["t"]),
        _N("Relu", ["t"], ["y"]),
    ]
    inits = {"b": rand(32, seed=1), "c": rand(32, seed=4), "s": shape}
    m = model(nodes, {"x": [64, 32], "z": [64, 32]}, {"y": [1, 8, 8, 32]}, inits)
    program = lpuc.compile(m, precision="fp32")
    assert sum(i.opcode == "vxm.map" for i in program.instructions) == 1
    unsunk = lpuc.compile(m, precision="fp32", disable_passes=["sink_reshapes"])
    assert sum(i.opcode == "vxm.map" for i in unsunk.instructions) > 1
    assert_matches_onnxruntime(m, {"x": rand(64, 32, seed=2), "z": rand(64, 32, seed=3)})


def test_a_constant_over_more_than_the_last_dim_stays():
    """A [8, 1, 32] constant broadcasts over rows differently before the reshape: no move."""
    nodes = [
        _N("Add", ["x", "b"], ["a"]),
        _N("Reshape", ["a", "s"], ["r"]),
        _N("Mul", ["r", "c"], ["y"]),
    ]
    inits = {"b": rand(32, seed=1), "s": np.array([1, 8, 8, 32], np.int64), "c": rand(8, 1, 32, seed=3)}
    m = model(nodes, {"x": [64, 32]}, {"y": [1, 8, 8, 32]}, inits)
    assert ops(run_pass(sink_reshapes, imported(m))) == ["Add", "Reshape", "Mul"]
    assert_matches_onnxruntime(m, {"x": rand(64, 32, seed=2)})


def test_a_reshape_that_changes_the_rows_view_stays():
    """[64, 32] -> [1, 8, 256]: the last dim changes, so the reshape moves data; nothing moves."""
    m = _conv_like(shape_after=(1, 8, 256))
    assert ops(run_pass(sink_reshapes, imported(m))) == ["Add", "Reshape", "Relu"]
    assert_matches_onnxruntime(m, {"x": rand(64, 32, seed=2)})


def test_a_row_constant_is_repeated_over_a_reshape_that_unpacks_rows():
    """[8, 256] (8 rows of 32 packed side by side) -> Reshape [64, 32] -> + bias[32]: the add runs on
    [8, 256] with the bias repeated 8 times, and the Reshape follows it."""
    nodes = [_N("Relu", ["x"], ["a"]), _N("Reshape", ["a", "s"], ["r"]), _N("Add", ["r", "b"], ["y"])]
    inits = {"s": np.array([64, 32], np.int64), "b": rand(32, seed=1)}
    m = model(nodes, {"x": [8, 256]}, {"y": [64, 32]}, inits)
    graph = run_pass(sink_reshapes, imported(m))
    assert ops(graph) == ["Relu", "Add", "Reshape"]
    add = next(n for n in graph.nodes if n.op == "Add")
    assert graph.values[add.inputs[1]].shape == (256,)
    assert_matches_onnxruntime(m, {"x": rand(8, 256, seed=2)})


def test_reshape_of_reshape_merges_unless_a_zero_copies_a_middle_dim():
    merged = model(
        [_N("Reshape", ["x", "s1"], ["a"]), _N("Reshape", ["a", "s2"], ["y"])],
        {"x": [4, 6]},
        {"y": [3, 8]},
        {"s1": np.array([2, 12], np.int64), "s2": np.array([3, 8], np.int64)},
    )
    assert ops(run_pass(sink_reshapes, imported(merged))) == ["Reshape"]
    assert_matches_onnxruntime(merged, {"x": rand(4, 6, seed=2)})
    copying = model(
        [_N("Reshape", ["x", "s1"], ["a"]), _N("Reshape", ["a", "s2"], ["y"])],
        {"x": [4, 6]},
        {"y": [2, 3, 4]},
        {"s1": np.array([2, 12], np.int64), "s2": np.array([0, 3, 4], np.int64)},  # 0: a's first dim
    )
    assert ops(run_pass(sink_reshapes, imported(copying))) == ["Reshape", "Reshape"]
    assert_matches_onnxruntime(copying, {"x": rand(4, 6, seed=2)})
