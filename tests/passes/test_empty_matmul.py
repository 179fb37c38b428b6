"""A MatMul over an empty inner dimension (K = 0) sums nothing: its result is zeros, as onnxruntime says."""

from __future__ import annotations

import numpy as np
from onnx import helper

from lpuc.passes.canonicalize_matmul import canonicalize_matmul
from tests.passes.helpers import assert_matches_onnxruntime, imported, model, ops, run_pass


def test_empty_inner_dimension_is_zeros():
    m = model(
        [helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Relu", ["y"], ["z"])],
        {"x": [3, 0], "w": [0, 4]},
        {"z": [3, 4]},
    )
    assert "MatMul" not in ops(run_pass(canonicalize_matmul, imported(m)))
    feeds = {"x": np.zeros((3, 0), np.float32), "w": np.zeros((0, 4), np.float32)}
    assert_matches_onnxruntime(m, feeds)
