"""inline_mask_selects: a mask's select of two scalar constants is computed by each map reading it."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from onnx import helper

import lpuc
from lpuc.passes.inline_mask_selects import inline_mask_selects
from lpuc.passes.pipeline import PassContext
from lpuc.target import load_target
from tests.passes.helpers import imported, model, ops, rand, run_pass
from tests.similarity import cosine

N = helper.make_node
LOWEST = np.float32(np.finfo(np.float32).min)


def _masked_scores(branch: np.ndarray = LOWEST):
    """BERT's shape of it: Q @ K^T per head plus Where(mask > 0, 0, finfo.min), one mask for both
    heads, then a softmax; and a second reader of the mask (an Add of another value)."""
    nodes = [
        N("Greater", ["m", "zero"], ["keep"]),
        N("Where", ["keep", "zero", "lowest"], ["bias"]),
        N("MatMul", ["q", "kt"], ["scores"]),
        N("Add", ["scores", "bias"], ["masked"]),
        N("Softmax", ["masked"], ["p"], axis=-1),
        N("Add", ["x", "bias"], ["y"]),
    ]
    inputs = {"q": [1, 2, 16, 32], "kt": [1, 2, 32, 16], "m": [1, 1, 16, 16], "x": [1, 2, 16, 16]}
    consts = {"zero": np.float32(0.0), "lowest": np.asarray(branch, np.float32)}
    return model(nodes, inputs, {"p": [1, 2, 16, 16], "y": [1, 2, 16, 16]}, consts)


def _feeds() -> dict[str, np.ndarray]:
    mask = rand(1, 1, 16, 16, seed=1)
    mask[..., 0] = 1.0  # every row keeps a key
    q, kt, x = rand(1, 2, 16, 32, seed=2), rand(1, 2, 32, 16, seed=3), rand(1, 2, 16, 16, seed=4)
    return {"q": q, "kt": kt, "m": mask, "x": x}


def test_each_reader_selects_from_the_bool_mask():
    g = run_pass(inline_mask_selects, imported(_masked_scores()))
    assert ops(g) == ["Greater", "MatMul", "Fused", "Softmax", "Fused"]
    for fused in (n for n in g.nodes if n.op == "Fused"):
        assert [s["op"] for s in fused.attrs["expr"]] == ["Where", "Add"]
        assert g.values[fused.inputs[0]].dtype == np.bool_  # the 1-byte condition, not the select


def test_selects_it_would_not_help_are_kept():
    # A branch that is not a scalar constant: each reader would read it as well.
    wide = rand(1, 1, 16, 16)
    g = run_pass(inline_mask_selects, imported(_masked_scores(wide)))
    assert "Where" in ops(g)
    # A reader that is not a map (the select feeds a MatMul).
    m = model(
        [N("Greater", ["m", "zero"], ["keep"]), N("Where", ["keep", "zero", "one"], ["w"])]
        + [N("MatMul", ["x", "w"], ["y"])],
        {"m": [8, 8], "x": [4, 8]},
        {"y": [4, 8]},
        {"zero": np.float32(0.0), "one": np.float32(1.0)},
    )
    assert "Where" in ops(run_pass(inline_mask_selects, imported(m)))


def test_masked_attention_matches_onnxruntime():
    m, feeds = _masked_scores(), _feeds()
    session = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = session.run(None, feeds)
    got = lpuc.compile(m, precision="fp32", host_fallback=False).run(feeds)
    for (name, value), want in zip(got.items(), expected):
        np.testing.assert_allclose(value, want, rtol=1e-4, atol=1e-6, err_msg=name)
    got = lpuc.compile(m, precision="fp16", host_fallback=False).run(feeds)
    for (name, value), want in zip(got.items(), expected):
        assert cosine(value, want) >= 0.999, name


def test_int8_builds_keep_the_select():
    """int8 streams a row a cycle: the select would hold one more ALU in each map."""
    int8 = PassContext(load_target("tsp-v1"), "int8")
    assert "Where" in ops(inline_mask_selects(imported(_masked_scores()), int8))
