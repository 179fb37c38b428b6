"""fold_score_scale: attention's power-of-two score scale moves into the Q projection's weights."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from onnx import helper

import lpuc
from lpuc.passes.fold_score_scale import fold_score_scale
from lpuc.passes.lower_gemm import lower_gemm
from tests.passes.helpers import assert_matches_onnxruntime, imported, model, ops, rand, run_pass
from tests.similarity import cosine

N = helper.make_node
S, W, H = 8, 16, 2  # sequence, width, heads


def _attention(scale_op: str = "Mul", scale: float = 0.125, q_readers: int = 1):
    """One attention head group: Q = x @ Wq + bq, K = x @ Wk, scores = Q @ K^T scaled, softmax."""
    nodes = [
        N("MatMul", ["x", "wq"], ["q0"]),
        N("Add", ["bq", "q0"], ["q1"]),
        N("Reshape", ["q1", "heads"], ["q2"]),
        N("Transpose", ["q2"], ["q"], perm=[0, 2, 1, 3]),
        N("MatMul", ["x", "wk"], ["k0"]),
        N("Reshape", ["k0", "heads"], ["k1"]),
        N("Transpose", ["k1"], ["kt"], perm=[0, 2, 3, 1]),
        N("MatMul", ["q", "kt"], ["scores"]),
        N(scale_op, ["scores", "c"], ["scaled"]),
        N("Softmax", ["scaled"], ["y"], axis=-1),
    ]
    outputs = {"y": [1, H, S, S]}
    if q_readers > 1:  # Q also an output: its unscaled values must stay
        outputs["q1"] = [1, S, W]
    inits = {
        "wq": rand(W, W, seed=1),
        "bq": rand(W, seed=2),
        "wk": rand(W, W, seed=3),
        "heads": np.array([1, S, H, W // H], np.int64),
        "c": np.float32(scale if scale_op == "Mul" else 1 / scale),
    }
    return model(nodes, {"x": [1, S, W]}, outputs, inits)


def test_scale_moves_into_query_weights_and_bias():
    m = _attention()
    g = run_pass(fold_score_scale, imported(m))
    assert ops(g) == [
        "MatMul",
        "Add",
        "Reshape",
        "Transpose",
        "MatMul",
        "Reshape",
        "Transpose",
        "MatMul",
        "Softmax",
    ]
    wq, bq = (g.values[g.nodes[k].inputs[i]].const for k, i in ((0, 1), (1, 0)))
    np.testing.assert_array_equal(wq, rand(W, W, seed=1) * np.float32(0.125))
    np.testing.assert_array_equal(bq, rand(W, seed=2) * np.float32(0.125))
    assert g.nodes[-2].outputs == ("scaled",) and g.nodes[-1].inputs == ("scaled",)


def test_div_by_eight_folds_like_mul_by_an_eighth():
    g = run_pass(fold_score_scale, imported(_attention("Div")))
    assert "Div" not in ops(g)
    np.testing.assert_array_equal(g.values[g.nodes[0].inputs[1]].const, rand(W, W, seed=1) / np.float32(8))


def test_scale_is_kept_when_it_is_not_a_power_of_two():
    g = run_pass(fold_score_scale, imported(_attention(scale=0.125 * 1.5)))
    assert "Mul" in ops(g)
    assert np.array_equal(g.values[g.nodes[0].inputs[1]].const, rand(W, W, seed=1))


def test_scale_goes_to_keys_when_queries_have_other_readers():
    g = run_pass(fold_score_scale, imported(_attention(q_readers=2)))
    assert "Mul" not in ops(g)
    np.testing.assert_array_equal(g.values[g.nodes[0].inputs[1]].const, rand(W, W, seed=1))
    np.testing.assert_array_equal(
        g.values[g.nodes[4].inputs[1]].const, rand(W, W, seed=3) * np.float32(0.125)
    )


def test_gemm_projection_folds_once_lowered():
    """A Gemm Q projection (transB, as Hugging Face exports Conv1D/Linear sometimes do)."""
    nodes = [
        N("Gemm", ["x2", "wq", "bq"], ["q"], transB=1),
        N("Gemm", ["x2", "wk", "bk"], ["k"], transB=1),
        N("Transpose", ["k"], ["kt"], perm=[1, 0]),
        N("MatMul", ["q", "kt"], ["scores"]),
        N("Mul", ["c", "scores"], ["y"]),
    ]
    inits = {"wq": rand(W, W, seed=1), "bq": rand(W, seed=2), "wk": rand(W, W, seed=3), "bk": rand(W, seed=4)}
    m = model(nodes, {"x2": [S, W]}, {"y": [S, S]}, {**inits, "c": np.float32(0.25)})
    g = run_pass(fold_score_scale, run_pass(lower_gemm, imported(m)))
    assert "Mul" not in ops(g)
    assert_matches_onnxruntime(m, {"x2": rand(S, W, seed=5)})


def test_folded_attention_matches_onnxruntime_fp32_and_fp16():
    for m in (_attention(), _attention("Div")):
        x = rand(1, S, W, seed=7)
        program = assert_matches_onnxruntime(m, {"x": x})
        assert "fold_score_scale" not in program.summary.get("disabled", [])
        want = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            None, {"x": x}
        )
        got = lpuc.compile(m, precision="fp16", host_fallback=False).run({"x": x})["y"]
        assert cosine(got, want[0]) >= 0.999
