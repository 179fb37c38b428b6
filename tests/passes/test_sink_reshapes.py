"""sink_reshapes: elementwise ops move above view-preserving reshapes, so bias and activation fuse."""

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
    moves above both reshapes, and the bias adds, sum and ReLU become one map.
    (fuse_elementwise.hoist_over_reshapes moves an op over one reshaped operand only.)"""
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
