"""decompose_attention: the Attention op as chip ops."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import lpuc
from lpuc.frontend.importer import import_model
from lpuc.passes.decompose_attention import decompose_attention
from tests.conformance.cases import assert_outputs_match, conformance_cases, normalize


def attention_model(
    q: tuple[int, ...],
    k: tuple[int, ...],
    v: tuple[int, ...],
    mask: tuple[tuple[int, ...], int] | None = None,
    past: tuple[tuple[int, ...], tuple[int, ...]] | None = None,
    nonpad: int = 0,
    qk_output: bool = False,
    **attrs,
) -> onnx.ModelProto:
    """An opset-23 (24 with nonpad) model of one Attention node; output shapes from onnx's inference."""
    f = TensorProto.FLOAT
    inputs = [helper.make_tensor_value_info(n, f, s) for n, s in (("Q", q), ("K", k), ("V", v))]
    names = ["Q", "K", "V", "", "", "", ""]
    if mask is not None:
        inputs.append(helper.make_tensor_value_info("attn_mask", mask[1], mask[0]))
        names[3] = "attn_mask"
    if past is not None:
        inputs += [helper.make_tensor_value_info(n, f, s) for n, s in zip(("past_key", "past_value"), past)]
        names[4:6] = ["past_key", "past_value"]
    if nonpad:
        inputs.append(helper.make_tensor_value_info("nonpad_kv_seqlen", TensorProto.INT64, [nonpad]))
        names[6] = "nonpad_kv_seqlen"
    outputs = ["Y", "present_key" if past else "", "present_value" if past else "", "qk" if qk_output else ""]
    while not names[-1]:
        names.pop()
    while not outputs[-1]:
        outputs.pop()
    node = helper.make_node("Attention", names, outputs, name="attn", **attrs)
    graph = helper.make_graph(
        [node], "attention", inputs, [helper.make_tensor_value_info(o, f, None) for o in outputs if o]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 24 if nonpad else 23)])
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def ops_after(model: onnx.ModelProto, pass_fn=decompose_attention) -> list[str]:
    return [n.op for n in pass_fn(import_model(model, "test")).nodes]


def random_feeds(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for vi in model.graph.input:
        shape = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        kind = vi.type.tensor_type.elem_type
        if kind == TensorProto.BOOL:
            feeds[vi.name] = rng.random(shape) < 0.7
        elif kind == TensorProto.INT64:
            feeds[vi.name] = rng.integers(1, 7, size=shape).astype(np.int64)
        else:
            feeds[vi.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


# -- IR ------------------------------------------------------------------------------------------


def test_gqa_causal_is_two_matmuls_without_repeating_kv_heads():
    model = attention_model((1, 8, 16, 32), (1, 2, 16, 32), (1, 2, 16, 32), is_causal=1)
    ops = ops_after(model)
    assert "Attention" not in ops
    assert ops.count("MatMul") == 2 and ops.count("Softmax") == 1
    assert not {"Expand", "Tile", "Concat"} & set(ops)  # query heads are stacked, K/V never copied
    assert "Where" in ops  # the causal block is one constant condition
    assert "ReduceMax" not in ops  # a plain causal mask never hides a whole row: no zero-row guard


def test_grouped_queries_meet_one_transposed_key_per_kv_head():
    graph = decompose_attention(
        import_model(attention_model((1, 8, 16, 32), (1, 2, 16, 32), (1, 2, 16, 32)), "t")
    )
    qk = next(n for n in graph.nodes if n.op == "MatMul")
    assert graph.values[qk.inputs[0]].shape == (1, 2, 4 * 16, 32)
    assert graph.values[qk.inputs[1]].shape == (1, 2, 32, 16)


def test_bool_mask_gets_the_fully_masked_row_guard():
    model = attention_model((1, 2, 4, 8), (1, 2, 6, 8), (1, 2, 6, 8), mask=((4, 6), TensorProto.BOOL))
    ops = ops_after(model)
    assert {"ReduceMax", "Equal", "Where", "Softmax"} <= set(ops)


def test_past_key_value_concatenate_into_the_present_outputs():
    past = ((2, 3, 5, 8), (2, 3, 5, 8))
    model = attention_model((2, 4, 24), (2, 6, 24), (2, 6, 24), past=past, q_num_heads=3, kv_num_heads=3)
    graph = decompose_attention(import_model(model, "test"))
    producers = graph.producers()
    assert producers["present_key"].op == "Concat" and producers["present_value"].op == "Concat"
    assert producers["present_key"].inputs[0] == "past_key"
    assert graph.values["present_key"].shape == (2, 3, 11, 8)


def test_nonpad_kv_seqlen_blocks_keys_with_runtime_comparisons():
    model = attention_model((2, 2, 3, 8), (2, 2, 6, 8), (2, 2, 6, 8), nonpad=2, is_causal=1)
    ops = ops_after(model)
    assert {"GreaterOrEqual", "Greater", "Or", "Where", "ReduceMax"} <= set(ops)


def test_node_names_derive_from_the_attention_node():
    graph = decompose_attention(import_model(attention_model((1, 2, 4, 8), (1, 2, 4, 8), (1, 2, 4, 8)), "t"))
    assert all(n.name.startswith("attn/") for n in graph.nodes)


def test_head_counts_that_do_not_divide_stay_on_the_host():
    assert ops_after(attention_model((1, 3, 4, 8), (1, 2, 6, 8), (1, 2, 6, 8))) == ["Attention"]


# -- numerics on the chip -----------------------------------------------------------------------

ORT_MODELS = {
    "gqa_causal": lambda: attention_model((1, 8, 64, 32), (1, 2, 64, 32), (1, 2, 64, 32), is_causal=1),
    "mha_float_mask_softcap_scale": lambda: attention_model(
        (2, 4, 16, 8),
        (2, 4, 24, 8),
        (2, 4, 24, 16),
        mask=((16, 24), TensorProto.FLOAT),
        softcap=3.0,
        scale=0.2,
    ),
    "bool_mask_4d_qk_output": lambda: attention_model(
        (2, 2, 5, 8), (2, 2, 7, 8), (2, 2, 7, 8), mask=((2, 2, 5, 7), TensorProto.BOOL), qk_output=True
    ),
    "3d_gqa_past_causal": lambda: attention_model(
        (2, 4, 48),
        (2, 4, 16),
        (2, 4, 24),
        past=((2, 2, 6, 8), (2, 2, 6, 12)),
        is_causal=1,
        q_num_heads=6,
        kv_num_heads=2,
    ),
}


@pytest.mark.parametrize("name", sorted(ORT_MODELS))
def test_matches_onnxruntime_on_the_chip(name):
    model = ORT_MODELS[name]()
    feeds = random_feeds(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    want = session.run(None, feeds)
    got = lpuc.compile(model, precision="fp32", host_fallback=False).run(feeds)
    for output, expected in zip(model.graph.output, want):
        np.testing.assert_allclose(got[output.name], expected, rtol=1e-4, atol=1e-5)


NODE_CASES = [
    c for c in conformance_cases() if c.model.graph.node[0].op_type in ("Attention", "RotaryEmbedding")
]


@pytest.mark.parametrize("case", NODE_CASES, ids=[c.name for c in NODE_CASES])
def test_onnx_node_cases_on_the_chip(case):
    """Every Attention and RotaryEmbedding node test compiles with no host op and matches onnx
    (RotaryEmbedding as one VXM kernel)."""
    program = lpuc.compile(case.model, precision="fp32", host_fallback=False)
    names = [i.name for i in case.model.graph.input]
    for inputs, expected in case.data_sets:
        outputs = program.run({n: normalize(x) for n, x in zip(names, inputs)})
        assert_outputs_match(case, [outputs[o.name] for o in case.model.graph.output], expected)


def test_no_attention_node_case_is_left_for_the_host():
    left = [c.name for c in NODE_CASES if "Attention" in ops_after(c.model)]
    assert left == []
