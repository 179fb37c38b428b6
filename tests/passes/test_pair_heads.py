"""pair_heads: two attention heads per Q @ K^T product over block-diagonal K^T, their scores side by
side in one row (SegmentedSoftmax), P @ V reading each head's probabilities by lane offset; checked
against onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

import lpuc
from lpuc.frontend.importer import import_model
from lpuc.ir.model_work import ATTR as MODEL_BLOCKS
from lpuc.kernels.registry import KernelContext, run_kernel
from lpuc.kernels.softmax import softmax
from lpuc.passes.eliminate_dead_code import eliminate_dead_code
from lpuc.passes.legalize_broadcast import legalize_broadcast
from lpuc.passes.pair_heads import pair_heads
from lpuc.passes.pipeline import PIPELINE, run_pipeline
from tests import zoo
from tests.models import export, ort_run
from tests.passes.helpers import CTX, ops, run_pass
from tests.similarity import assert_matches
from tests.test_bert import SMALL

WIDTH, HEADS, CONTEXT = 64, 4, 16  # heads of 16, N = 16: a power of two


@pytest.fixture(scope="module")
def attention_onnx(tmp_path_factory):
    path = tmp_path_factory.mktemp("pairs") / "attention.onnx"
    torch.manual_seed(0)
    module = zoo.CausalSelfAttention(WIDTH, HEADS, CONTEXT)
    return export(module, (torch.zeros(1, CONTEXT, WIDTH),), path, input_names=["x"])


def _before_pair_heads(path):
    upto = [p.name for p in PIPELINE].index("pair_heads")
    return run_pipeline(import_model(onnx.load(path), "attention"), CTX, passes=PIPELINE[:upto])


def _attention_products(graph):
    return [n for n in graph.nodes if n.op == "HeadMatMul"]


def test_heads_pair_over_block_diagonal_keys(attention_onnx):
    graph = _before_pair_heads(attention_onnx)
    (scores, mixed) = _attention_products(graph)
    assert scores.attrs["heads"] == HEADS and scores.attrs["a_lanes"][1] == WIDTH // HEADS
    after = run_pass(eliminate_dead_code, run_pass(pair_heads, graph))
    paired, packed = _attention_products(after)
    d = WIDTH // HEADS
    # Half the products, each over two heads' Q lanes (adjacent) and block-diagonal K^T: the model
    # work is the two diagonal blocks (the zero blocks are multiplied but are not the model's).
    assert paired.attrs["heads"] == HEADS // 2
    assert paired.attrs["a_lanes"] == [scores.attrs["a_lanes"][0], 2 * d]
    assert paired.attrs[MODEL_BLOCKS] == [0, d, 0, CONTEXT, d, 2 * d, CONTEXT, 2 * CONTEXT]
    assert after.values[paired.inputs[1]].shape == (1, HEADS // 2, 2 * d, 2 * CONTEXT)
    assert after.values[paired.outputs[0]].shape == (1, HEADS // 2, CONTEXT, 2 * CONTEXT)
    (soft,) = [n for n in after.nodes if n.op == "SegmentedSoftmax"]
    assert soft.attrs == {"segment": CONTEXT} and "Softmax" not in ops(after)
    assert packed.inputs[0] == soft.outputs[0]
    assert packed.attrs == {**mixed.attrs, "a_packed": 2}
    # K^T: K's rows masked per head parity by one map (K read repeated, not expanded by an SXM
    # copy: attr read_repeated), then one transpose.
    assert ops(after).count("Transpose") == 1
    (halves,) = [n for n in after.nodes if n.op == "Fused"]
    assert halves.attrs["read_repeated"] == [0]
    assert after.values[halves.inputs[0]].shape == (1, 1, CONTEXT, WIDTH)
    assert "Expand" not in ops(run_pass(legalize_broadcast, after))


def test_an_odd_head_count_or_a_context_off_a_power_of_two_stays(tmp_path):
    for width, heads, context in ((48, 3, 16), (64, 4, 24)):
        path = tmp_path / f"a{heads}_{context}.onnx"
        module = zoo.CausalSelfAttention(width, heads, context)
        export(module, (torch.zeros(1, context, width),), path, input_names=["x"])
        graph = _before_pair_heads(path)
        assert run_pass(pair_heads, graph) is graph


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_paired_attention_matches_onnxruntime(attention_onnx, precision):
    x = np.random.default_rng(1).standard_normal((1, CONTEXT, WIDTH)).astype(np.float32)
    (want,) = ort_run(attention_onnx, {"x": x})
    mms = {}
    for disabled in ((), ("pair_heads",)):
        program = lpuc.compile(
            attention_onnx, precision=precision, host_fallback=False, disable_passes=disabled
        )
        (got,) = program.run({"x": x}).values()
        assert_matches(got, want, precision, msg=str(disabled))
        mms[disabled] = sum(
            i.opcode == "mxm.mm" and i.node.endswith("/MatMul") and "proj" not in i.node
            for i in program.instructions
        )
    assert mms[()] == HEADS // 2 and mms[("pair_heads",)] == HEADS  # Q @ K^T products


def test_paired_attention_of_two_sequences_matches_onnxruntime(tmp_path):
    # batch 2: pair j of sequence b is P's rows (b * H/2 + j) * S on (a_packed, lpuc.lowering.matmul)
    torch.manual_seed(0)
    module = zoo.CausalSelfAttention(WIDTH, HEADS, CONTEXT)
    path = export(module, (torch.zeros(2, CONTEXT, WIDTH),), tmp_path / "b2.onnx", input_names=["x"])
    x = np.random.default_rng(4).standard_normal((2, CONTEXT, WIDTH)).astype(np.float32)
    (want,) = ort_run(path, {"x": x})
    program = lpuc.compile(path, precision="fp32", host_fallback=False)
    assert any(i.attrs.get("kernel") == "SegmentedSoftmax" for i in program.instructions)
    (got,) = program.run({"x": x}).values()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_a_computed_mask_keeps_the_heads_apart():
    # BERT's padding mask is computed at run time ([1, 1, S, S] from attention_mask): pairing would
    # tile it per pair at run time, and measured slower on BERT-base (see _pairable_operands).
    graph = _before_pair_heads(zoo.bert_onnx(**SMALL))
    scores = _attention_products(graph)[0::2]
    assert scores and all(n.attrs["heads"] == SMALL["num_attention_heads"] for n in scores)
    assert run_pass(pair_heads, graph) is graph


def test_segmented_softmax_kernel_is_a_softmax_per_run():
    x = np.random.default_rng(2).standard_normal((3, 5, 2 * 8)).astype(np.float32)
    ctx = KernelContext("SegmentedSoftmax", {"segment": 8}, 1, 1, "lpuc")
    (got,) = run_kernel(ctx, [x])
    np.testing.assert_allclose(got[..., :8], softmax(x[..., :8], -1), rtol=1e-6)
    np.testing.assert_allclose(got[..., 8:], softmax(x[..., 8:], -1), rtol=1e-6)


def test_head_matmul_reads_packed_heads_by_lanes():
    rng = np.random.default_rng(3)
    p = rng.standard_normal((1, 2, 4, 2 * 4)).astype(np.float32)  # 4 heads, two a row
    v = rng.standard_normal((1, 4, 4 * 3)).astype(np.float32)  # 4 heads of width 3
    attrs = {"heads": 4, "a_lanes": [], "b_lanes": [0, 3], "merge": 1, "a_packed": 2}
    (got,) = run_kernel(KernelContext("HeadMatMul", attrs, 1, 1, "lpuc"), [p, v])
    for h in range(4):
        probs = p[0, h // 2, :, (h % 2) * 4 : (h % 2 + 1) * 4]
        np.testing.assert_allclose(
            got[0, :, h * 3 : (h + 1) * 3], probs @ v[0, :, h * 3 : (h + 1) * 3], rtol=1e-5
        )
