"""Recently added sequence-model ops: FlexAttention (ai.onnx.preview), LinearAttention,
CausalConvWithState and SwiGLU (ai.onnx 27+)."""

from __future__ import annotations

import math

import numpy as np
import onnx

from lpuc.kernels._common import compute_dtype, onnx_dtype, sigmoid
from lpuc.kernels.attention import masked_softmax, merge_heads, repeat_kv_heads, split_heads
from lpuc.kernels.interpreter import evaluate_graph
from lpuc.kernels.registry import KernelContext, kernel


def _silu(x: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    return x * sigmoid(x.dtype.type(alpha) * x)


def _apply_modifier(ctx: KernelContext, graph: onnx.GraphProto | None, x: np.ndarray) -> np.ndarray:
    """Run a one-input, one-output modifier subgraph (FlexAttention's score_mod / prob_mod)."""
    if graph is None:
        return x
    (out,) = evaluate_graph(graph, {graph.input[0].name: x}, ctx.opsets, outer=ctx.outer)
    return out.astype(x.dtype)


@kernel("FlexAttention", domain="ai.onnx.preview")
def flex_attention(ctx: KernelContext, q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    precision = ctx.attr("softmax_precision")
    if precision is not None:
        dtype = onnx_dtype(int(precision))
    else:
        dtype = np.dtype(np.float64 if q.dtype == np.float64 else np.float32)
    q_heads, head_size = q.shape[1], q.shape[-1]
    scale = ctx.attr("scale")
    scale = 1.0 / math.sqrt(head_size) if scale is None else scale
    compute = compute_dtype(dtype)
    keys = repeat_kv_heads(k.astype(compute), q_heads, "FlexAttention")
    values = repeat_kv_heads(v.astype(compute), q_heads, "FlexAttention")
    scores = ((q.astype(compute) @ np.swapaxes(keys, -1, -2)) * compute.type(scale)).astype(dtype)
    scores = _apply_modifier(ctx, ctx.attr("score_mod"), scores)
    probs = masked_softmax(scores.astype(compute)).astype(dtype)
    probs = _apply_modifier(ctx, ctx.attr("prob_mod"), probs)
    return (probs.astype(compute) @ values).astype(q.dtype)


_LINEAR_ATTENTION_RULES = ("linear", "gated", "delta", "gated_delta")


def _per_head(x: np.ndarray, kv_heads: int, width: int) -> np.ndarray:
    """A gate packed as (B, T, H*width), per head (B, T, H) or shared (B, T, 1), as (B, H, T, width|1)."""
    batch, steps, packed = x.shape
    if packed == kv_heads * width:
        return x.reshape(batch, steps, kv_heads, width).transpose(0, 2, 1, 3)
    return np.broadcast_to(x[..., None], (batch, steps, kv_heads, 1)).transpose(0, 2, 1, 3)


@kernel("LinearAttention")
def linear_attention(
    ctx: KernelContext,
    query: np.ndarray,
    key: np.ndarray,
    value: np.ndarray,
    past_state: np.ndarray | None = None,
    decay: np.ndarray | None = None,
    beta: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    rule = ctx.attr("update_rule", "gated_delta")
    if rule not in _LINEAR_ATTENTION_RULES:
        raise ValueError(f"LinearAttention: unsupported update_rule {rule!r}")
    gated, delta = rule in ("gated", "gated_delta"), rule in ("delta", "gated_delta")
    if (gated and decay is None) or (delta and beta is None):
        raise ValueError(f"LinearAttention: update_rule {rule!r} needs its decay/beta inputs")
    q_heads, kv_heads = int(ctx.attr("q_num_heads", 0)), int(ctx.attr("kv_num_heads", 0))
    dtype = compute_dtype(query.dtype)
    # (B, H, T, d) per head; queries are grouped onto their K/V head's state.
    q = split_heads(query.astype(dtype), q_heads, "LinearAttention")
    k = split_heads(key.astype(dtype), kv_heads, "LinearAttention")
    v = split_heads(value.astype(dtype), kv_heads, "LinearAttention")
    batch, _, steps, key_size = k.shape
    value_size = v.shape[-1]
    scale = float(ctx.attr("scale", 0.0)) or 1.0 / math.sqrt(query.shape[-1] // q_heads)
    if past_state is None:
        state = np.zeros((batch, kv_heads, key_size, value_size), dtype)
    else:
        state = past_state.astype(dtype)
    decays = np.exp(_per_head(decay.astype(dtype), kv_heads, key_size)) if gated else None
    betas = _per_head(beta.astype(dtype), kv_heads, 1) if delta else None

    outputs = np.empty((batch, q_heads, steps, value_size), dtype)
    for t in range(steps):
        k_t, v_t = k[:, :, t], v[:, :, t]
        if gated:
            state = decays[:, :, t, :, None] * state  # decay scales the rows (key dims) of the state
        if delta:
            # Move the state's prediction for k_t towards v_t at rate beta.
            predicted = np.einsum("bhkv,bhk->bhv", state, k_t)
            v_t = betas[:, :, t] * (v_t - predicted)
        state = state + k_t[..., :, None] * v_t[..., None, :]
        outputs[:, :, t] = np.einsum(
            "bhk,bhkv->bhv", q[:, :, t], repeat_kv_heads(state, q_heads, "LinearAttention")
        )
    outputs *= dtype.type(scale)
    return merge_heads(outputs).astype(query.dtype), state.astype(query.dtype)


_CONV_ACTIVATIONS = ("none", "silu", "swish")


@kernel("CausalConvWithState")
def causal_conv_with_state(
    ctx: KernelContext,
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None = None,
    past_state: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    activation = ctx.attr("activation", "none")
    if activation not in _CONV_ACTIVATIONS:
        raise ValueError(f"CausalConvWithState: unsupported activation {activation!r}")
    dtype = compute_dtype(x.dtype)
    batch, channels, length = x.shape
    taps = weight.shape[-1]
    if past_state is None:
        past_state = np.zeros((batch, channels, taps - 1), x.dtype)
    padded = np.concatenate([past_state.astype(dtype), x.astype(dtype)], axis=-1)
    w = weight.astype(dtype).reshape(channels, taps)
    out = np.zeros((batch, channels, length), dtype)
    for j in range(taps):
        out += w[:, j, None] * padded[..., j : j + length]
    if bias is not None:
        out += bias.astype(dtype)[:, None]
    if activation != "none":
        out = _silu(out)
    present = padded[..., padded.shape[-1] - (taps - 1) :]
    return out.astype(x.dtype), present.astype(x.dtype)


@kernel("SwiGLU")
def swiglu(ctx: KernelContext, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    dtype = compute_dtype(a.dtype)
    alpha = float(ctx.attr("alpha", 1.0))
    return (_silu(a.astype(dtype), alpha) * b.astype(dtype)).astype(a.dtype)
