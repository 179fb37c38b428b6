"""Issue 2 acceptance: torch-exported models compile, run as instruction streams, match onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest

import lpuc
from tests.models import ort_run, random_feeds

# (rtol, atol): atol only absorbs rounding of values near 0 (fp16 unit roundoff is 9.8e-4).
TOLERANCE = {"fp32": (1e-4, 1e-6), "fp16": (2e-2, 1e-3)}


CASES = [
    ("mlp_onnx", "tsp-v1"),
    ("residual_onnx", "tsp-v1"),
    ("mlp_onnx", "tsp-mini"),  # 128-wide layers: two 64-lane blocks, K split across tiles
    ("small_residual_onnx", "tsp-mini"),  # the full block needs 658 KiB, tsp-mini has 512 KiB
]


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize(("model", "target"), CASES)
def test_matches_onnxruntime(model, target, precision, request):
    path = request.getfixturevalue(model)
    program = lpuc.compile(path, target=target, precision=precision)
    feeds = random_feeds(path)
    (expected,) = ort_run(path, feeds)
    (name,) = [b.name for b in program.outputs]
    got = program.run(feeds)[name]
    rtol, atol = TOLERANCE[precision]
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol)
    assert program.summary["host_ops"] == 0


def test_residual_uses_batched_operand(residual_onnx):
    program = lpuc.compile(residual_onnx, precision="fp32")
    assert program.inputs[0].shape == (2, 64, 256)
    # 128 activation rows x 256 features: two K chunks and one N tile per Linear, on the MXM
    assert program.summary["instructions_by_opcode"]["mxm.mm"] >= 4


def test_fp16_rounds_mxm_inputs(mlp_onnx):
    """fp16 mode must differ from exact fp32 (inputs rounded), but stay within 2e-2 of it."""
    feeds = random_feeds(mlp_onnx)
    exact = lpuc.compile(mlp_onnx, precision="fp32").run(feeds)["y"]
    rounded = lpuc.compile(mlp_onnx, precision="fp16").run(feeds)["y"]
    assert not np.array_equal(exact, rounded)
    np.testing.assert_allclose(rounded, exact, rtol=2e-2, atol=1e-3)


def test_does_not_fit(residual_onnx):
    with pytest.raises(lpuc.errors.DoesNotFitError, match="over by"):
        lpuc.compile(residual_onnx, target="tsp-mini", precision="fp32")
