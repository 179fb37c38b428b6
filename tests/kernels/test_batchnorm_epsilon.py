"""BatchNormalization honours epsilon, in the kernel and where it is folded into the Conv before it.

Epsilon is 0.5 and the variances lie in [0.1, 1], so an epsilon dropped (or replaced by the 1e-5
default) changes every output far beyond the tolerance.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import lpuc
from tests.kernels.oracle import IR_VERSION, assert_matches_onnxruntime, run_onnxruntime

pytest.importorskip("onnxruntime")

EPSILON = 0.5
C = 4


def _statistics(seed: int) -> list[np.ndarray]:
    """scale, bias, mean, var of C channels (variances positive and comparable to EPSILON)."""
    rng = np.random.default_rng(seed)
    scale, bias, mean = (rng.standard_normal(C).astype(np.float32) for _ in range(3))
    return [scale, bias, mean, rng.uniform(0.1, 1.0, C).astype(np.float32)]


def test_kernel_honours_epsilon():
    x = np.random.default_rng(0).standard_normal((2, C, 3, 3)).astype(np.float32)
    assert_matches_onnxruntime(
        "BatchNormalization", [x, *_statistics(1)], {"epsilon": EPSILON}, opset=15, rtol=1e-5, atol=1e-6
    )


def _conv_bn() -> onnx.ModelProto:
    """Conv (constant weights and bias) -> BatchNormalization (constant statistics): foldable."""
    rng = np.random.default_rng(2)
    consts = {
        "w": (rng.standard_normal((C, 3, 3, 3)) / np.sqrt(27)).astype(np.float32),
        "b": rng.standard_normal(C).astype(np.float32),
        **dict(zip(["scale", "bias", "mean", "var"], _statistics(3))),
    }
    f = TensorProto.FLOAT
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node(
                "BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["y"], epsilon=EPSILON
            ),
        ],
        "conv_bn",
        [helper.make_tensor_value_info("x", f, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", f, [1, C, 8, 8])],
        [numpy_helper.from_array(v, n) for n, v in consts.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)], ir_version=IR_VERSION)


def test_folded_batchnorm_honours_epsilon():
    model = _conv_bn()
    feeds = {"x": np.random.default_rng(4).standard_normal((1, 3, 8, 8)).astype(np.float32)}
    got = lpuc.compile(model, precision="fp32").run(feeds)["y"]
    (want,) = run_onnxruntime(model, feeds)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
