"""decompose_lrn: LRN becomes a 1x1 convolution with a band of ones (the MXM sums the squares of each
channel window) and elementwise ops, instead of one whole-tensor VXM kernel."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import helper

import lpuc
from lpuc.passes.decompose_lrn import decompose_lrn
from tests.passes.helpers import assert_matches_onnxruntime, imported, model, ops, rand, run_pass


def _relu_lrn(size: int, channels: int = 12, **attrs):
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("LRN", ["r"], ["y"], size=size, **attrs),
    ]
    shape = [1, channels, 6, 7]
    return model(nodes, {"x": shape}, {"y": shape})


@pytest.mark.parametrize("size", [1, 4, 5])  # even sizes: ONNX allows them, onnxruntime does not
def test_lrn_becomes_a_banded_1x1_conv(size):
    graph = run_pass(decompose_lrn, imported(_relu_lrn(size)))
    assert ops(graph) == ["Relu", "Mul", "Mul", "Conv", "Pow", "Mul"]
    conv = graph.nodes[3]
    band = graph.values[conv.inputs[1]].const[:, :, 0, 0]
    before, after = (size - 1) // 2, size - 1 - (size - 1) // 2
    for c in range(12):  # output channel c sums input channels c - before .. c + after
        want = [1.0 if c - before <= k <= c + after else 0.0 for k in range(12)]
        assert band[c].tolist() == want


@pytest.mark.parametrize(
    "size,attrs", [(5, {}), (7, {"alpha": 0.5, "beta": 0.6, "bias": 2.0}), (3, {"beta": 1.5})]
)
def test_numerics_match_onnxruntime(size, attrs):
    m = _relu_lrn(size, **attrs)
    x = rand(1, 12, 6, 7, seed=size) * 30  # large enough that alpha matters
    program = assert_matches_onnxruntime(m, {"x": x})
    assert "vxm.kernel" not in program.summary["instructions_by_opcode"]


def test_fp16_build_does_not_overflow_on_large_inputs():
    """x up to ~1e3: x^2 would overflow fp16 (65504); scaled by alpha / size first, it does not."""
    m = _relu_lrn(5, channels=16)
    x = rand(1, 16, 6, 7, seed=3) * 400
    got = lpuc.compile(m, precision="fp16").run({"x": x})["y"].astype(np.float64).ravel()
    (want,) = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x}
    )
    want = want.astype(np.float64).ravel()
    assert np.isfinite(got).all() and want.std() > 0
    assert got @ want / (np.linalg.norm(got) * np.linalg.norm(want)) > 0.999
