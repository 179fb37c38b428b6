"""address_heads: the head split / merge Reshape + Transpose chains of multi-head attention become
lane addressing of lpuc.HeadMatMul (and one 2-D transpose for K^T); checked against onnxruntime."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
import torch

import lpuc
from lpuc.frontend.importer import import_model
from lpuc.passes.address_heads import address_heads
from lpuc.passes.eliminate_dead_code import eliminate_dead_code
from lpuc.passes.pipeline import PIPELINE, run_pipeline
from tests import zoo
from tests.models import export, ort_run
from tests.passes.helpers import CTX, ops, run_pass

WIDTH, HEADS, CONTEXT = 64, 4, 24


@pytest.fixture(scope="module", params=[1, 2], ids=["batch1", "batch2"])
def attention_onnx(request, tmp_path_factory):
    batch = request.param
    path = tmp_path_factory.mktemp("heads") / f"attention_b{batch}.onnx"
    module = zoo.CausalSelfAttention(WIDTH, HEADS, CONTEXT)
    return export(module, (torch.zeros(batch, CONTEXT, WIDTH),), path, input_names=["x"]), batch


def _before_address_heads(path):
    """The graph as address_heads receives it in the pipeline."""
    upto = [p.name for p in PIPELINE].index("address_heads")
    return run_pipeline(import_model(onnx.load(path), "attention"), CTX, passes=PIPELINE[:upto])


def test_head_split_and_merge_become_addressing(attention_onnx):
    path, batch = attention_onnx
    graph = _before_address_heads(path)
    assert ops(graph).count("Transpose") == 4 and ops(graph).count("MatMul") == 4
    after = run_pass(eliminate_dead_code, run_pass(address_heads, graph))
    heads = [n for n in after.nodes if n.op == "HeadMatMul"]
    assert [n.domain for n in heads] == ["lpuc", "lpuc"]
    scores, mixed = heads
    # K's and V's columns of the QKV projection became projections of their own (K to be transposed
    # alone, V so that its lanes start at 0); Q is the rest: no Split is left.
    assert "Split" not in ops(after) and ops(after).count("MatMul") == 4  # Q, K, V, output projection
    # Q @ K^T: Q is read from lanes [16 h, 16 h + 16); K^T is one 2-D transpose whose head view is a
    # Reshape that keeps the [rows, lanes] layout.
    width = WIDTH // HEADS
    assert scores.attrs == {"heads": HEADS, "a_lanes": [0, width], "b_lanes": [], "merge": 0}
    k_heads = next(n for n in after.nodes if n.outputs[0] == scores.inputs[1])
    assert k_heads.op == "Reshape"
    assert after.values[k_heads.outputs[0]].shape == (batch, HEADS, width, CONTEXT)
    # probs @ V: head h's weights, lanes [16 h, 16 h + 16) of V, sit where its result goes in the
    # merged output.
    assert mixed.attrs == {"heads": HEADS, "a_lanes": [], "b_lanes": [0, width], "merge": 1}
    assert after.values[mixed.outputs[0]].shape == (batch, CONTEXT, WIDTH)
    assert ops(after).count("Transpose") == 1  # K^T only


@pytest.fixture(scope="module")
def wide_attention_onnx(tmp_path_factory):
    """GPT-2's attention widths (768 = 12 heads of 64) over a short context."""
    path = tmp_path_factory.mktemp("heads") / "attention_w768.onnx"
    module = zoo.CausalSelfAttention(768, 12, 16)
    return export(module, (torch.zeros(1, 16, 768),), path, input_names=["x"])


def test_values_join_the_queries_where_that_saves_column_chunks(wide_attention_onnx):
    # V's 768 columns and Q's 768 projected apart take 3 + 3 column chunks of 320 lanes; together
    # (V's first, from lane 0, a tile boundary) 5: one projection of V and Q, read by both
    # HeadMatMuls (Q from lane 768 on). Without the strategy, V and Q are projections of their own.
    graph = _before_address_heads(wide_attention_onnx)
    after = run_pass(eliminate_dead_code, run_pass(address_heads, graph))
    assert "Split" not in ops(after) and ops(after).count("MatMul") == 3  # K, V+Q, output projection
    scores, mixed = (n for n in after.nodes if n.op == "HeadMatMul")
    assert scores.inputs[0] == mixed.inputs[1]
    assert after.values[scores.inputs[0]].shape == (1, 16, 1536)
    assert scores.attrs["a_lanes"] == [768, 64] and mixed.attrs["b_lanes"] == [0, 64]
    ctx = dataclasses.replace(CTX, disabled=frozenset({"values_with_queries"}))
    apart = eliminate_dead_code(address_heads(graph, ctx), ctx)
    assert "Split" not in ops(apart) and ops(apart).count("MatMul") == 4  # Q, K, V, output projection
    scores, mixed = (n for n in apart.nodes if n.op == "HeadMatMul")
    assert scores.attrs["a_lanes"] == [0, 64] and mixed.attrs["b_lanes"] == [0, 64]


def test_values_with_queries_matches_onnxruntime(wide_attention_onnx):
    x = np.random.default_rng(0).standard_normal((1, 16, 768)).astype(np.float32)
    (want,) = ort_run(wide_attention_onnx, {"x": x})
    chunks = {}
    for disabled in ((), ("values_with_queries",)):
        # (pair_heads off: where Q's head pairs cross a lane tile depends on Q's offset)
        program = lpuc.compile(
            wide_attention_onnx, precision="fp16", disable_passes=(*disabled, "pair_heads")
        )
        (got,) = program.run({"x": x}).values()
        cosine = np.dot(got.ravel(), want.ravel()) / np.linalg.norm(got) / np.linalg.norm(want)
        assert cosine >= 0.999, disabled
        chunks[disabled] = sum(i.opcode == "mxm.mm" for i in program.instructions)
    # K, V+Q, output: (3 + 5 + 3) column chunks x 5 K chunks; apart (3 + 3 + 3 + 3) x 5 (+ heads).
    assert chunks[("values_with_queries",)] - chunks[()] == 5


def test_attention_matches_onnxruntime_with_less_data_movement(attention_onnx):
    path, batch = attention_onnx
    x = np.random.default_rng(batch).standard_normal((batch, CONTEXT, WIDTH)).astype(np.float32)
    (want,) = ort_run(path, {"x": x})
    results = {}
    for disabled in ((), ("address_heads",)):
        program = lpuc.compile(path, precision="fp32", host_fallback=False, disable_passes=disabled)
        (got,) = program.run({"x": x}).values()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
        results[disabled] = program.summary
    addressed, moved = results[()], results[("address_heads",)]
    sxm = "sxm.kernel"
    assert addressed["instructions_by_opcode"][sxm] < moved["instructions_by_opcode"][sxm]
    assert addressed["cycles"] < moved["cycles"]


def test_a_split_head_read_elsewhere_stays(attention_onnx):
    # The head-split Q is also a graph output: the Transpose stays for it, the MatMul still addresses.
    path, _ = attention_onnx
    graph = _before_address_heads(path)
    matmul = next(n for n in graph.nodes if n.op == "MatMul" and len(graph.values[n.inputs[0]].shape) == 4)
    graph.outputs.append(matmul.inputs[0])
    after = run_pass(eliminate_dead_code, run_pass(address_heads, graph))
    assert matmul.inputs[0] in {o for n in after.nodes for o in n.outputs if n.op == "Transpose"}
    assert ops(after).count("HeadMatMul") == 2


def test_weights_off_a_tile_boundary_are_not_read_by_heads(attention_onnx):
    # The QKV projection is also a graph output, so K keeps its Split: V's lanes start at 128, not
    # on a tile boundary of tsp-v1 (320 lanes), and its results could not land in place.
    path, _ = attention_onnx
    graph = _before_address_heads(path)
    split = next(n for n in graph.nodes if n.op == "Split")
    graph.outputs.append(split.inputs[0])
    after = run_pass(eliminate_dead_code, run_pass(address_heads, graph))
    heads = [n.attrs for n in after.nodes if n.op == "HeadMatMul"]
    assert heads == [{"heads": HEADS, "a_lanes": [0, WIDTH // HEADS], "b_lanes": [], "merge": 0}]
    assert ops(after).count("Transpose") == 3  # K^T, V's head split, the merge


def test_nothing_to_do_returns_the_graph():
    graph = import_model(_plain_matmul_model(), "plain")
    assert address_heads(graph, CTX) is graph


def _plain_matmul_model() -> onnx.ModelProto:
    from onnx import TensorProto, helper

    shape = [1, 2, 3, 4]
    return helper.make_model(
        helper.make_graph(
            [helper.make_node("MatMul", ["a", "b"], ["y"], "mm")],
            "plain",
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in ("a",)]
            + [helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 2, 4, 3])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 3, 3])],
        ),
        opset_imports=[helper.make_opsetid("", 18)],
    )


def _cross_attention_model() -> onnx.ModelProto:
    """Queries given, keys and values split from one projection without bias: x @ W -> Split(K, V)."""
    from onnx import helper

    from tests.passes.helpers import model

    n = helper.make_node
    s, w, h, d = 8, 32, 4, 8
    c = {f"shape{k}": np.array(v, np.int64) for k, v in {"h": [1, s, h, d], "y": [1, s, w]}.items()}
    nodes = [
        n("MatMul", ["x", "wkv"], ["kv"], "proj"),
        n("Split", ["kv", "sizes"], ["k", "v"], "split", axis=-1),
        *[n("Reshape", [v, "shapeh"], [f"{v}4"], f"r_{v}") for v in ("q", "k", "v")],
        n("Transpose", ["q4"], ["qh"], "t_q", perm=[0, 2, 1, 3]),
        n("Transpose", ["k4"], ["kt"], "t_k", perm=[0, 2, 3, 1]),
        n("Transpose", ["v4"], ["vh"], "t_v", perm=[0, 2, 1, 3]),
        n("MatMul", ["qh", "kt"], ["scores"], "qk"),
        n("Softmax", ["scores"], ["probs"], "softmax", axis=-1),
        n("MatMul", ["probs", "vh"], ["o"], "pv"),
        n("Transpose", ["o"], ["o2"], "t_o", perm=[0, 2, 1, 3]),
        n("Reshape", ["o2", "shapey"], ["y"], "merge"),
    ]
    consts = {"wkv": np.random.default_rng(0).standard_normal((w, 2 * w)).astype(np.float32) / 4, **c}
    consts["sizes"] = np.array([w, w], np.int64)
    return model(nodes, {"x": [1, s, w], "q": [1, s, w]}, {"y": [1, s, w]}, consts)


def test_keys_of_a_two_way_split_without_bias():
    from tests.passes.helpers import assert_matches_onnxruntime, imported, rand

    m = _cross_attention_model()
    after = run_pass(eliminate_dead_code, run_pass(address_heads, imported(m)))
    # K's projection, V's (the rest, no Split left), K^T, its head view, the attention.
    assert ops(after) == ["MatMul", "MatMul", "Transpose", "Reshape", "HeadMatMul", "Softmax", "HeadMatMul"]
    assert [n.attrs["b_lanes"] for n in after.nodes if n.op == "HeadMatMul"] == [[], [0, 8]]
    program = assert_matches_onnxruntime(m, {"x": rand(1, 8, 32), "q": rand(1, 8, 32, seed=1)})
    assert "sxm.kernel" in program.summary["instructions_by_opcode"]  # the K^T transpose only
    moves = [i.attrs["kernel"] for i in program.instructions if i.opcode == "sxm.kernel"]
    assert moves == ["Transpose"]


@pytest.mark.parametrize(
    "columns",
    [[3, 4, 5, 6], [0, 1, 2, 9, 10, 11], [5, 1, 2, 9], list(range(12))],
    ids=["one run", "two runs", "scattered", "all"],
)
def test_projection_columns_are_the_gathered_ones_read_only(columns):
    from lpuc.passes.address_heads import _columns_of

    weights = np.arange(5 * 12, dtype=np.float32).reshape(5, 12)
    for a in (weights, weights[0]):  # a weight's columns and a bias's
        got = _columns_of(a, np.array(columns))
        expected = a[..., columns]
        assert got.dtype == expected.dtype and got.flags.c_contiguous
        np.testing.assert_array_equal(got, expected)
        if got.base is None:  # a copy of our own: the graph takes it as is (read-only)
            assert not got.flags.writeable
    assert weights.flags.writeable  # the source is left alone
