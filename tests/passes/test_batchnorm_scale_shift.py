"""fold_batchnorm: a BatchNormalization with no Conv to fold into becomes x * s + t (two elementwise
ops that fuse into a VXM map), not a whole-tensor kernel."""

from __future__ import annotations

import numpy as np
from onnx import helper

from lpuc.passes.fold_batchnorm import fold_batchnorm
from tests.passes.helpers import assert_matches_onnxruntime, imported, model, ops, rand, run_pass


def _relu_bn(eps: float):
    rng = np.random.default_rng(0)
    stats = {
        "gamma": rng.uniform(0.5, 1.5, 6).astype(np.float32),
        "beta": rng.standard_normal(6).astype(np.float32),
        "mean": rng.standard_normal(6).astype(np.float32),
        "var": rng.uniform(0.1, 1.0, 6).astype(np.float32),
    }
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("BatchNormalization", ["r", "gamma", "beta", "mean", "var"], ["y"], epsilon=eps),
    ]
    return model(nodes, {"x": [2, 6, 5, 5]}, {"y": [2, 6, 5, 5]}, stats)


def test_unfoldable_batchnorm_becomes_scale_and_shift():
    graph = run_pass(fold_batchnorm, imported(_relu_bn(1e-5)))
    assert ops(graph) == ["Relu", "Mul", "Add"]
    scale = graph.values[graph.nodes[1].inputs[1]]
    assert scale.shape == (6, 1, 1)


def test_numerics_with_an_epsilon_that_matters():
    m = _relu_bn(0.5)
    program = assert_matches_onnxruntime(m, {"x": rand(2, 6, 5, 5, seed=1)})
    assert "vxm.kernel" not in program.summary["instructions_by_opcode"]
