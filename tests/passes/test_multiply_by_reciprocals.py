"""multiply_by_reciprocals: a float Div by powers of two becomes a Mul by the exact reciprocal."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from onnx import helper

import lpuc
from lpuc.passes.multiply_by_reciprocals import multiply_by_reciprocals
from tests.passes.helpers import imported, model, ops, rand, run_pass

N = helper.make_node


def _div(divisor: np.ndarray):
    return model([N("Div", ["x", "c"], ["y"])], {"x": [4, 8]}, {"y": [4, 8]}, {"c": divisor})


def test_div_by_powers_of_two_becomes_mul_by_reciprocal():
    divisor = np.array([8.0, 0.5, -2.0, 1.0, 2.0**-20, 4.0, 16.0, 1024.0], np.float32)
    g = run_pass(multiply_by_reciprocals, imported(_div(divisor)))
    assert ops(g) == ["Mul"]
    assert np.array_equal(g.values[g.nodes[0].inputs[1]].const, (1 / divisor).astype(np.float32))


def test_other_divisions_are_kept():
    for divisor in (np.float32(3.0), np.array([8.0, 3.0] * 4, np.float32), np.float32(2.0**127)):
        g = run_pass(multiply_by_reciprocals, imported(_div(np.asarray(divisor))))
        assert ops(g) == ["Div"], divisor  # 1/3 rounds; 2**-127 is subnormal in float32
    # A divisor computed at run time.
    m = model([N("Div", ["x", "z"], ["y"])], {"x": [4], "z": [4]}, {"y": [4]})
    assert ops(run_pass(multiply_by_reciprocals, imported(m))) == ["Div"]


def test_scaled_scores_equal_onnxruntime_bit_for_bit():
    """x / 8 and x * 0.125 round the same quotient: the compiled fp32 result equals onnxruntime's."""
    m = _div(np.float32(8.0))
    x = rand(4, 8) * np.float32(1e3)
    got = lpuc.compile(m, precision="fp32", host_fallback=False).run({"x": x})["y"]
    session = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    assert np.array_equal(got, session.run(None, {"x": x})[0])
