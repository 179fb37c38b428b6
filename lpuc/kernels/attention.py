"""Scaled dot-product attention (Attention, opset 23-25) and rotary position embeddings."""

from __future__ import annotations

import math

import numpy as np
from onnx import TensorProto

from lpuc.kernels._common import compute_dtype, onnx_dtype
from lpuc.kernels.registry import KernelContext, kernel


def split_heads(x: np.ndarray, num_heads: int, op: str) -> np.ndarray:
    """(batch, seq, heads * size) -> (batch, heads, seq, size)."""
    if not num_heads or x.shape[-1] % num_heads:
        raise ValueError(
            f"{op}: 3-D input needs a num_heads attribute dividing its hidden size {x.shape[-1]}"
        )
    batch, seq, hidden = x.shape
    return x.reshape(batch, seq, num_heads, hidden // num_heads).transpose(0, 2, 1, 3)


def merge_heads(x: np.ndarray) -> np.ndarray:
    """(batch, heads, seq, size) -> (batch, seq, heads * size)."""
    batch, heads, seq, size = x.shape
    return x.transpose(0, 2, 1, 3).reshape(batch, seq, heads * size)


def repeat_kv_heads(x: np.ndarray, q_heads: int, op: str) -> np.ndarray:
    """Grouped-query attention: each K/V head serves a contiguous group of query heads."""
    kv_heads = x.shape[1]
    if q_heads % kv_heads:
        raise ValueError(f"{op}: {q_heads} query heads are not a multiple of {kv_heads} key/value heads")
    return np.repeat(x, q_heads // kv_heads, axis=1)


def masked_softmax(scores: np.ndarray) -> np.ndarray:
    """Softmax over the last axis; a row whose every score is -inf yields zeros instead of NaN."""
    row_max = scores.max(axis=-1, keepdims=True)
    fully_masked = np.isneginf(row_max)
    exp = np.exp(scores - np.where(fully_masked, 0, row_max))
    total = exp.sum(axis=-1, keepdims=True)
    return np.where(fully_masked, 0, exp / np.where(fully_masked, 1, total)).astype(scores.dtype)


def _disallowed_keys(
    ctx: KernelContext, q_len: int, total_len: int, past_len: int, nonpad_kv_seqlen: np.ndarray | None
) -> np.ndarray | None:
    """Keys each query may not see from causality, sliding windows and KV padding: (batch|1, 1, q, total)."""
    is_causal = bool(ctx.attr("is_causal", 0))
    left, right = int(ctx.attr("left_window_size", -1)), int(ctx.attr("right_window_size", -1))
    if not is_causal and left < 0 and right < 0 and nonpad_kv_seqlen is None:
        return None
    if nonpad_kv_seqlen is not None:
        valid = np.asarray(nonpad_kv_seqlen, dtype=np.int64).reshape(-1, 1, 1, 1)
        offset = valid - q_len  # external cache: the query block ends at the last valid key
    else:
        valid = np.full((1, 1, 1, 1), total_len, dtype=np.int64)
        offset = np.full((1, 1, 1, 1), past_len, dtype=np.int64)
    position = offset + np.arange(q_len).reshape(1, 1, -1, 1)  # absolute position of each query
    key = np.arange(total_len).reshape(1, 1, 1, -1)
    blocked = key >= valid
    if is_causal:
        blocked = blocked | (key > position)
    if left >= 0:
        blocked = blocked | (key < position - left)
    if right >= 0:
        blocked = blocked | (key > position + right)
    return blocked


def _mask_bias(attn_mask: np.ndarray, total_len: int, dtype: np.dtype) -> np.ndarray:
    """attn_mask as an additive bias; a mask shorter than the key axis is padded with -inf."""
    if attn_mask.dtype == np.bool_:
        bias = np.where(attn_mask, 0, -np.inf).astype(dtype)
    else:
        bias = attn_mask.astype(dtype)
    missing = total_len - bias.shape[-1]
    if missing > 0:
        pad = [(0, 0)] * (bias.ndim - 1) + [(0, missing)]
        bias = np.pad(bias, pad, constant_values=-np.inf)
    return bias


_SOFTMAX_PRECISIONS = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16)


def _softmax_at_precision(scores: np.ndarray, precision: int | None) -> np.ndarray:
    """masked_softmax with its input and result rounded to the `softmax_precision` type."""
    if precision is None:
        return masked_softmax(scores)
    if precision not in _SOFTMAX_PRECISIONS:
        raise ValueError(f"Attention: unsupported softmax_precision {precision}")
    rounding = onnx_dtype(precision)
    probs = masked_softmax(scores.astype(rounding).astype(compute_dtype(rounding)))
    return probs.astype(rounding).astype(scores.dtype)


@kernel("Attention")
def attention(
    ctx: KernelContext,
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    attn_mask: np.ndarray | None = None,
    past_key: np.ndarray | None = None,
    past_value: np.ndarray | None = None,
    nonpad_kv_seqlen: np.ndarray | None = None,
) -> tuple[np.ndarray, ...]:
    out_dtype = q.dtype
    is_3d = q.ndim == 3
    if is_3d:
        q = split_heads(q, int(ctx.attr("q_num_heads", 0)), "Attention")
        k = split_heads(k, int(ctx.attr("kv_num_heads", 0)), "Attention")
        v = split_heads(v, int(ctx.attr("kv_num_heads", 0)), "Attention")
    if (past_key is None) != (past_value is None):
        raise ValueError("Attention: past_key and past_value must be given together")
    past_len = 0
    if past_key is not None:
        past_len = past_key.shape[2]
        k = np.concatenate([past_key, k], axis=2)
        v = np.concatenate([past_value, v], axis=2)
    present_key, present_value = k, v

    dtype = compute_dtype(out_dtype)
    q_heads, q_len, head_size = q.shape[1:]
    total_len = k.shape[2]
    scale = ctx.attr("scale")
    root_scale = math.sqrt(1.0 / math.sqrt(head_size) if scale is None else scale)
    keys = repeat_kv_heads(k.astype(dtype), q_heads, "Attention") * dtype.type(root_scale)
    values = repeat_kv_heads(v.astype(dtype), q_heads, "Attention")
    raw_scores = (q.astype(dtype) * dtype.type(root_scale)) @ np.swapaxes(keys, -1, -2)

    scores = raw_scores
    softcap = float(ctx.attr("softcap", 0.0))
    if softcap > 0:
        scores = (dtype.type(softcap) * np.tanh(scores / dtype.type(softcap))).astype(dtype)
    capped_scores = scores
    if attn_mask is not None:
        scores = scores + _mask_bias(attn_mask, total_len, dtype)
    blocked = _disallowed_keys(ctx, q_len, total_len, past_len, nonpad_kv_seqlen)
    if blocked is not None:
        scores = np.where(blocked, -np.inf, scores).astype(dtype)
    biased_scores = scores

    probs = _softmax_at_precision(scores, ctx.attr("softmax_precision"))
    y = probs @ values

    mode = int(ctx.attr("qk_matmul_output_mode", 0))
    qk_outputs = {0: raw_scores, 1: capped_scores, 2: biased_scores, 3: probs}
    if mode not in qk_outputs:
        raise ValueError(f"Attention: unsupported qk_matmul_output_mode {mode}")
    y = merge_heads(y) if is_3d else y
    return y.astype(out_dtype), present_key, present_value, qk_outputs[mode].astype(out_dtype)


@kernel("RotaryEmbedding")
def rotary_embedding(
    ctx: KernelContext,
    x: np.ndarray,
    cos_cache: np.ndarray,
    sin_cache: np.ndarray,
    position_ids: np.ndarray | None = None,
) -> np.ndarray:
    original_shape = x.shape
    # Work in (batch, seq, heads, head_size).
    if x.ndim == 4:
        x = x.transpose(0, 2, 1, 3)
    else:
        heads = int(ctx.attr("num_heads", 0))
        if not heads or x.shape[-1] % heads:
            raise ValueError(
                "RotaryEmbedding: 3-D input needs a num_heads attribute dividing its hidden size"
            )
        x = x.reshape(x.shape[0], x.shape[1], heads, x.shape[-1] // heads)
    rotary_dim = int(ctx.attr("rotary_embedding_dim", 0)) or x.shape[-1]
    half = rotary_dim // 2
    if position_ids is not None:
        cos_cache, sin_cache = cos_cache[position_ids], sin_cache[position_ids]
    if cos_cache.shape[-1] != half or sin_cache.shape[-1] != half:
        raise ValueError(f"RotaryEmbedding: cos/sin caches must have rotary_embedding_dim/2 = {half} columns")
    dtype = compute_dtype(x.dtype)
    cos = cos_cache.astype(dtype)[:, :, None, :]
    sin = sin_cache.astype(dtype)[:, :, None, :]

    rotated = x[..., :rotary_dim].astype(dtype)
    interleaved = bool(ctx.attr("interleaved", 0))
    if interleaved:
        x1, x2 = rotated[..., 0::2], rotated[..., 1::2]
    else:
        x1, x2 = rotated[..., :half], rotated[..., half:]
    real = cos * x1 - sin * x2
    imag = sin * x1 + cos * x2
    if interleaved:
        rotated = np.stack([real, imag], axis=-1).reshape(rotated.shape)
    else:
        rotated = np.concatenate([real, imag], axis=-1)
    out = np.concatenate([rotated.astype(x.dtype), x[..., rotary_dim:]], axis=-1)
    if len(original_shape) == 4:
        return out.transpose(0, 2, 1, 3)
    return out.reshape(original_shape)
