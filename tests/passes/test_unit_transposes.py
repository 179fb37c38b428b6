"""unit_transposes: a Transpose that only moves dims of size 1, and a Flatten, become Reshapes, so a
CNN head's pooled row is not copied into a row per channel and back."""

from __future__ import annotations

import numpy as np
from onnx import helper

from lpuc.passes.unit_transposes import unit_transposes
from tests.passes.helpers import assert_matches_onnxruntime, imported, model, ops, rand, run_pass

_N = helper.make_node


def _head():
    """Global average pool of an NHWC map, Transpose to NCHW, Flatten, classifier."""
    nodes = [
        _N("ReduceMean", ["x", "axes"], ["p"], keepdims=1),
        _N("Transpose", ["p"], ["t"], perm=[0, 3, 1, 2]),
        _N("Flatten", ["t"], ["f"], axis=1),
        _N("MatMul", ["f", "w"], ["y"]),
    ]
    inits = {"axes": np.array([1, 2], np.int64), "w": rand(64, 10, seed=1)}
    return model(nodes, {"x": [1, 7, 7, 64]}, {"y": [1, 10]}, inits)


def test_a_transpose_of_unit_dims_and_a_flatten_become_reshapes():
    graph = run_pass(unit_transposes, imported(_head()))
    assert ops(graph) == ["ReduceMean", "Reshape", "Reshape", "MatMul"]


def test_a_transpose_reordering_real_dims_stays():
    nchw = model([_N("Transpose", ["x"], ["y"], perm=[0, 3, 1, 2])], {"x": [1, 1, 3, 4]}, {"y": [1, 4, 1, 3]})
    graph = run_pass(unit_transposes, imported(nchw))
    assert ops(graph) == ["Transpose"]


def test_the_head_matches_onnxruntime_without_copies_on_the_sxm():
    """After the rewrite the head's reshapes are views: no SXM instruction copies the pooled row."""
    x = rand(1, 7, 7, 64, seed=2)
    program = assert_matches_onnxruntime(_head(), {"x": x})
    assert not [i.node for i in program.instructions if i.opcode == "sxm.kernel"]
