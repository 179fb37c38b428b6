"""Recurrent and attention kernels against onnxruntime on random weights.

ONNX's node tests cover few configurations of these ops (one direction, batch 1, default
activations); here each configuration is a single-node model run by both onnxruntime and the kernel.
"""

from __future__ import annotations

import numpy as np
import pytest

from lpuc.kernels.interpreter import evaluate_model
from tests.kernels.oracle import assert_outputs_close, feeds, run_onnxruntime, single_node_model

pytest.importorskip("onnxruntime")


def _run_both(
    op: str, inputs: dict[str, np.ndarray | None], num_outputs: int, opset: int, **attrs
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(outputs of the model run by lpuc's interpreter, onnxruntime's) of a single-node model."""
    model = single_node_model(op, inputs, attrs, opset, num_outputs)
    return evaluate_model(model, feeds(inputs)), run_onnxruntime(model, feeds(inputs))


def _assert_close(actual: list[np.ndarray], expected: list[np.ndarray]) -> None:
    assert_outputs_close(actual, expected, rtol=1e-4, atol=1e-5)


def _assert_matches_onnxruntime(
    op: str, inputs: dict[str, np.ndarray | None], num_outputs: int, opset: int, **attrs
) -> None:
    _assert_close(*_run_both(op, inputs, num_outputs, opset, **attrs))


def _rnn_inputs(
    rng: np.random.Generator, gates: int, seq: int, batch: int, size: int, hidden: int, directions: int
) -> dict[str, np.ndarray]:
    """Seq-major (layout 0) inputs of a recurrent op with `gates` gates."""
    return {
        "X": rng.standard_normal((seq, batch, size)).astype(np.float32),
        "W": rng.standard_normal((directions, gates * hidden, size)).astype(np.float32) * 0.5,
        "R": rng.standard_normal((directions, gates * hidden, hidden)).astype(np.float32) * 0.5,
        "B": rng.standard_normal((directions, 2 * gates * hidden)).astype(np.float32) * 0.5,
        "sequence_lens": rng.integers(1, seq + 1, batch).astype(np.int32),
        "initial_h": rng.standard_normal((directions, batch, hidden)).astype(np.float32),
    }


DIRECTIONS = {"forward": 1, "reverse": 1, "bidirectional": 2}


@pytest.mark.parametrize("direction", list(DIRECTIONS))
def test_lstm_with_peepholes_and_sequence_lengths(direction: str) -> None:
    rng = np.random.default_rng(0)
    dirs = DIRECTIONS[direction]
    inputs = _rnn_inputs(rng, 4, seq=5, batch=3, size=4, hidden=6, directions=dirs)
    inputs["initial_c"] = rng.standard_normal(inputs["initial_h"].shape).astype(np.float32)
    inputs["P"] = rng.standard_normal((dirs, 18)).astype(np.float32)
    _assert_matches_onnxruntime("LSTM", inputs, 3, 14, hidden_size=6, direction=direction)


def test_lstm_clip_input_forget_and_activations() -> None:
    rng = np.random.default_rng(1)
    inputs = _rnn_inputs(rng, 4, seq=4, batch=2, size=3, hidden=5, directions=2)
    _assert_matches_onnxruntime(
        "LSTM",
        inputs,
        3,
        14,
        hidden_size=5,
        direction="bidirectional",
        clip=0.7,
        input_forget=1,
        activations=["HardSigmoid", "Tanh", "Softsign", "Sigmoid", "LeakyRelu", "Tanh"],
        activation_alpha=[0.3, 0.05],
        activation_beta=[0.4],
    )


@pytest.mark.parametrize("direction", list(DIRECTIONS))
@pytest.mark.parametrize("linear_before_reset", [0, 1])
def test_gru(direction: str, linear_before_reset: int) -> None:
    rng = np.random.default_rng(2)
    inputs = _rnn_inputs(rng, 3, seq=6, batch=4, size=3, hidden=5, directions=DIRECTIONS[direction])
    _assert_matches_onnxruntime(
        "GRU", inputs, 2, 14, hidden_size=5, direction=direction, linear_before_reset=linear_before_reset
    )


@pytest.mark.parametrize("direction", list(DIRECTIONS))
def test_rnn_relu(direction: str) -> None:
    rng = np.random.default_rng(3)
    dirs = DIRECTIONS[direction]
    inputs = _rnn_inputs(rng, 1, seq=5, batch=2, size=3, hidden=4, directions=dirs)
    _assert_matches_onnxruntime(
        "RNN", inputs, 2, 14, hidden_size=4, direction=direction, activations=["Relu"] * dirs
    )


@pytest.mark.parametrize(("op", "gates", "num_outputs"), [("RNN", 1, 2), ("GRU", 3, 2), ("LSTM", 4, 3)])
def test_batch_major_layout(op: str, gates: int, num_outputs: int) -> None:
    """onnxruntime has no layout=1, so compare with its seq-major result on transposed tensors."""
    rng = np.random.default_rng(4)
    inputs = _rnn_inputs(rng, gates, seq=4, batch=3, size=2, hidden=3, directions=2)
    _, expected = _run_both(op, inputs, num_outputs, 14, hidden_size=3, direction="bidirectional")
    batch_major = dict(
        inputs, X=inputs["X"].transpose(1, 0, 2), initial_h=inputs["initial_h"].transpose(1, 0, 2)
    )
    attrs = {"hidden_size": 3, "direction": "bidirectional", "layout": 1}
    model = single_node_model(op, batch_major, attrs, 14, num_outputs)
    actual = evaluate_model(model, batch_major)
    y, *final_states = expected
    _assert_close(actual, [y.transpose(2, 0, 1, 3), *(s.transpose(1, 0, 2) for s in final_states)])


def _qkv(
    rng: np.random.Generator, batch: int, q_heads: int, kv_heads: int, q_len: int, kv_len: int, size: int
):
    return (
        rng.standard_normal((batch, q_heads, q_len, size)).astype(np.float32),
        rng.standard_normal((batch, kv_heads, kv_len, size)).astype(np.float32),
        rng.standard_normal((batch, kv_heads, kv_len, size)).astype(np.float32),
    )


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
@pytest.mark.parametrize("is_causal", [0, 1])
def test_attention_gqa_with_kv_cache(kv_heads: int, is_causal: int) -> None:
    rng = np.random.default_rng(4)
    q, k, v = _qkv(rng, batch=2, q_heads=4, kv_heads=kv_heads, q_len=3, kv_len=3, size=8)
    past_key, past_value, _ = _qkv(
        rng, batch=2, q_heads=kv_heads, kv_heads=kv_heads, q_len=5, kv_len=5, size=8
    )
    inputs = {"Q": q, "K": k, "V": v, "attn_mask": None, "past_key": past_key, "past_value": past_value}
    _assert_matches_onnxruntime("Attention", inputs, 3, 23, is_causal=is_causal)


@pytest.mark.parametrize("mask_dtype", [np.bool_, np.float32])
def test_attention_3d_masked_softcapped(mask_dtype: type) -> None:
    rng = np.random.default_rng(5)
    q = rng.standard_normal((2, 4, 6 * 8)).astype(np.float32)
    k = rng.standard_normal((2, 5, 2 * 8)).astype(np.float32)
    v = rng.standard_normal((2, 5, 2 * 8)).astype(np.float32)
    if mask_dtype is np.bool_:
        mask = rng.random((2, 1, 4, 5)) > 0.3
        mask[..., 0] = True  # keep every row attending something
    else:
        mask = rng.standard_normal((4, 5)).astype(np.float32)
    _assert_matches_onnxruntime(
        "Attention",
        {"Q": q, "K": k, "V": v, "attn_mask": mask},
        1,
        23,
        q_num_heads=6,
        kv_num_heads=2,
        softcap=2.5,
        scale=0.3,
    )


def test_attention_qk_matmul_output_modes() -> None:
    rng = np.random.default_rng(6)
    q, k, v = _qkv(rng, batch=1, q_heads=2, kv_heads=2, q_len=4, kv_len=4, size=8)
    mask = rng.standard_normal((4, 4)).astype(np.float32)
    for mode in range(4):
        inputs = {"Q": q, "K": k, "V": v, "attn_mask": mask, "past_key": None, "past_value": None}
        attrs = {"qk_matmul_output_mode": mode, "softcap": 3.0}
        model = single_node_model("Attention", inputs, attrs, 23, 4)
        model.graph.node[0].output[1:3] = ["", ""]
        del model.graph.output[1:3]
        present = feeds(inputs)
        _assert_close(evaluate_model(model, present), run_onnxruntime(model, present))


def test_attention_external_cache_with_padding() -> None:
    rng = np.random.default_rng(7)
    q, k, v = _qkv(rng, batch=3, q_heads=4, kv_heads=2, q_len=2, kv_len=6, size=8)
    nonpad = np.array([6, 4, 3], dtype=np.int64)
    inputs = {
        "Q": q,
        "K": k,
        "V": v,
        "attn_mask": None,
        "past_key": None,
        "past_value": None,
        "nonpad": nonpad,
    }
    _assert_matches_onnxruntime("Attention", inputs, 1, 24, is_causal=1)


@pytest.mark.parametrize("interleaved", [0, 1])
@pytest.mark.parametrize("rotary_embedding_dim", [0, 4])
def test_rotary_embedding_3d(interleaved: int, rotary_embedding_dim: int) -> None:
    rng = np.random.default_rng(8)
    half = (rotary_embedding_dim or 8) // 2
    inputs = {
        "X": rng.standard_normal((2, 5, 3 * 8)).astype(np.float32),
        "cos_cache": rng.standard_normal((16, half)).astype(np.float32),
        "sin_cache": rng.standard_normal((16, half)).astype(np.float32),
        "position_ids": rng.integers(0, 16, (2, 5)).astype(np.int64),
    }
    _assert_matches_onnxruntime(
        "RotaryEmbedding",
        inputs,
        1,
        23,
        num_heads=3,
        interleaved=interleaved,
        rotary_embedding_dim=rotary_embedding_dim,
    )
