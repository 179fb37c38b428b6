"""Attention (opset 23-25) -> MatMul, Softmax, elementwise and data movement.

Attention follows the ONNX function and lpuc/kernels/attention.py step by step:

- 3-D Q/K/V are split into heads (Reshape + Transpose); past_key/past_value are concatenated ahead of
  K/V on the sequence axis (the present outputs); float16/bfloat16 are computed in float32.
- Q and K are each scaled by sqrt(scale), then scores = Q @ K^T on the MXM. Grouped-query attention
  does not repeat K/V heads: the query heads sharing one K/V head are stacked along the rows (a free
  Reshape [B, Hq, S, D] -> [B, Hkv, G*S, D]), so each K/V head is one MatMul weight for its group.
- softcap * tanh(scores / softcap); a float mask is added, a bool mask is added as a 0/-inf bias (a
  mask shorter than the keys is padded with -inf); causal, sliding-window and nonpad_kv_seqlen
  padding blocks are set to -inf with Where. Those blocks are a compile-time constant unless
  nonpad_kv_seqlen (a runtime input) is given; then they are computed with integer comparisons.
- Softmax on the last axis; where a row can be fully masked, a ReduceMax == -inf test zeroes it
  (the spec's zero row instead of NaN). softmax_precision rounds the softmax input and result.
- probs @ V on the MXM, merged back to 3-D if needed; qk_matmul_output modes 0-3 are all exact.

Left for the host (node untouched): tensors with a zero-size dim, and models the kernel rejects
(head counts that do not divide, mismatched batch, a lone past_key or past_value, unknown
softmax_precision or qk_matmul_output_mode), so the kernel reports them.

RotaryEmbedding is not decomposed: it runs on the VXM as one stream kernel, which the cost model
rates cheaper than its Gather / Slice / Mul / Add / Concat expansion (1.2-2.7x the cycles measured).
"""

from __future__ import annotations

import math

import numpy as np
from onnx import TensorProto, helper

from lpuc.ir.graph import Graph, Node
from lpuc.kernels._common import compute_dtype
from lpuc.passes.builder import NodeBuilder, replace_nodes

_SOFTMAX_PRECISIONS = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16)


def decompose_attention(graph: Graph, ctx: object = None) -> Graph:
    return replace_nodes(graph, _attention_is_lowerable, _decompose_attention)


def _operand(node: Node, index: int) -> str:
    """The node's input at `index`, or "" if it is missing."""
    return node.inputs[index] if len(node.inputs) > index else ""


def _result(node: Node, index: int) -> str:
    return node.outputs[index] if len(node.outputs) > index else ""


def _has_empty_tensor(node: Node, graph: Graph) -> bool:
    return any(graph.values[v].size == 0 for v in (*node.inputs, *node.outputs) if v)


# -- Attention --------------------------------------------------------------------------------------


def _head_counts(node: Node, graph: Graph) -> tuple[int, int]:
    """(query heads, key/value heads); 0 where a 3-D input lacks its num_heads attribute."""
    q, k = graph.values[node.inputs[0]], graph.values[node.inputs[1]]
    if len(q.shape) == 4:
        return q.shape[1], k.shape[1]
    return int(node.attr("q_num_heads", 0)), int(node.attr("kv_num_heads", 0))


def _attention_is_lowerable(node: Node, graph: Graph) -> bool:
    if node.op != "Attention" or node.domain:
        return False
    q, k, v = (graph.values[node.inputs[i]] for i in range(3))
    q_heads, kv_heads = _head_counts(node, graph)
    if len(q.shape) not in (3, 4) or not q_heads or not kv_heads or q_heads % kv_heads:
        return False
    if len(q.shape) == 3 and (q.shape[-1] % q_heads or k.shape[-1] % kv_heads or v.shape[-1] % kv_heads):
        return False
    precision = node.attr("softmax_precision")
    return (
        not _has_empty_tensor(node, graph)
        and q.shape[0] == k.shape[0] == v.shape[0]
        and bool(_operand(node, 4)) == bool(_operand(node, 5))
        and (precision is None or int(precision) in _SOFTMAX_PRECISIONS)
        and int(node.attr("qk_matmul_output_mode", 0)) in (0, 1, 2, 3)
    )


def _decompose_attention(b: NodeBuilder) -> None:
    node = b.node
    q, present_key, present_value = _heads_with_cache(b, node)
    out_dtype = b.dtype(node.inputs[0])
    dtype = compute_dtype(out_dtype)
    q, k, v = (b.cast(x, dtype, f"cast_{n}") for x, n in ((q, "q"), (present_key, "k"), (present_value, "v")))

    raw = _scores(b, q, k, node.attr("scale"))
    capped = _softcap(b, raw, float(node.attr("softcap", 0.0)))
    biased, may_hide_rows = _masked(b, node, capped)
    probs = _softmax(b, node, biased, may_hide_rows)
    y = _attend(b, probs, v, merge_heads=len(b.shape(node.inputs[0])) == 3)

    b.bind_output(b.cast(y, out_dtype, "cast_y"), node.outputs[0])
    for index, value in ((1, present_key), (2, present_value)):
        if _result(node, index):
            b.bind_output(value, _result(node, index))
    if _result(node, 3):
        qk = (raw, capped, biased, probs)[int(node.attr("qk_matmul_output_mode", 0))]
        b.bind_output(b.cast(qk, out_dtype, "cast_qk"), _result(node, 3))


def _heads_with_cache(b: NodeBuilder, node: Node) -> tuple[str, str, str]:
    """Q, K, V as [B, H, S, D], with past_key/past_value ahead of K/V (the present outputs)."""
    q, k, v = node.inputs[:3]
    if len(b.shape(q)) == 3:
        q_heads, kv_heads = _head_counts(node, b.graph)
        q = _split_heads(b, q, q_heads, "split_q")
        k = _split_heads(b, k, kv_heads, "split_k")
        v = _split_heads(b, v, kv_heads, "split_v")
    if _operand(node, 4):
        k = b.concat([_operand(node, 4), k], axis=2, tag="present_key")
        v = b.concat([_operand(node, 5), v], axis=2, tag="present_value")
    return q, k, v


def _scores(b: NodeBuilder, q: str, k: str, scale: float | None) -> str:
    """Q K^T with Q and K each scaled by sqrt(scale): [B, Hq, S, T]."""
    batch, q_heads, q_len, head_size = b.shape(q)
    kv_heads, total_len = b.shape(k)[1:3]
    root_scale = math.sqrt(1.0 / math.sqrt(head_size) if scale is None else float(scale))
    q, k = b.scaled(q, root_scale, "scale_q"), b.scaled(k, root_scale, "scale_k")
    # The query heads sharing one K/V head, stacked as rows: one weight (K^T) per K/V head.
    rows = q_heads // kv_heads * q_len
    grouped_q = b.reshape(q, [batch, kv_heads, rows, head_size], "group_queries")
    keys_t = b.transpose(k, [0, 1, 3, 2], "transpose_k")
    return b.reshape(b.matmul(grouped_q, keys_t, "qk"), [batch, q_heads, q_len, total_len], "scores")


def _masked(b: NodeBuilder, node: Node, scores: str) -> tuple[str, bool]:
    """Scores with attn_mask added and blocked keys at -inf; whether a whole row may be -inf."""
    dtype = b.dtype(scores)
    q_len, total_len = b.shape(scores)[2:]
    mask = _operand(node, 3)
    if mask:
        scores = b.binary("Add", scores, _mask_bias(b, mask, total_len, dtype), "add_mask")
    past_len = b.shape(_operand(node, 4))[2] if _operand(node, 4) else 0
    blocked = _blocked_keys(b, node, q_len, total_len, past_len)
    if blocked:
        scores = b.where(blocked, _scalar(b, -np.inf, dtype, "neg_inf"), scores, "block_keys")
    return scores, _may_mask_whole_rows(b, node, blocked, total_len, dtype)


def _attend(b: NodeBuilder, probs: str, v: str, merge_heads: bool) -> str:
    """probs @ V per K/V head (query heads stacked as rows again): [B, Hq, S, Dv] or [B, S, Hq*Dv]."""
    batch, q_heads, q_len, total_len = b.shape(probs)
    kv_heads, v_size = b.shape(v)[1], b.shape(v)[3]
    grouped = b.reshape(probs, [batch, kv_heads, q_heads // kv_heads * q_len, total_len], "group_probs")
    y = b.reshape(b.matmul(grouped, v, "pv"), [batch, q_heads, q_len, v_size], "heads")
    return _merge_heads(b, y) if merge_heads else y


def _split_heads(b: NodeBuilder, x: str, heads: int, tag: str) -> str:
    """[B, S, H*D] -> [B, H, S, D]."""
    batch, seq, hidden = b.shape(x)
    split = b.reshape(x, [batch, seq, heads, hidden // heads], tag)
    return b.transpose(split, [0, 2, 1, 3], f"{tag}_transpose")


def _merge_heads(b: NodeBuilder, x: str) -> str:
    """[B, H, S, D] -> [B, S, H*D]."""
    batch, heads, seq, size = b.shape(x)
    moved = b.transpose(x, [0, 2, 1, 3], "merge_heads_transpose")
    return b.reshape(moved, [batch, seq, heads * size], "merge_heads")


def _scalar(b: NodeBuilder, value: float, dtype: np.dtype, tag: str) -> str:
    return b.const(tag, np.array(value, dtype=dtype))


def _softcap(b: NodeBuilder, scores: str, softcap: float) -> str:
    if softcap <= 0:
        return scores
    cap = _scalar(b, softcap, b.dtype(scores), "softcap_value")
    squashed = b.unary("Tanh", b.binary("Div", scores, cap, "softcap_div"), "softcap_tanh")
    return b.binary("Mul", cap, squashed, "softcap")


def _mask_bias(b: NodeBuilder, mask: str, total_len: int, dtype: np.dtype) -> str:
    """attn_mask as an additive bias over all keys: bool -> 0 / -inf, keys past its end -> -inf."""
    if b.dtype(mask) == np.bool_:
        bias = b.where(
            mask, _scalar(b, 0.0, dtype, "zero"), _scalar(b, -np.inf, dtype, "neg_inf"), "mask_bias"
        )
    else:
        bias = b.cast(mask, dtype, "cast_mask")
    missing = total_len - b.shape(bias)[-1]
    if missing <= 0:
        return bias
    pad = b.const("mask_pad", np.full((*b.shape(bias)[:-1], missing), -np.inf, dtype=dtype))
    return b.concat([bias, pad], axis=-1, tag="pad_mask")


def _window(node: Node) -> tuple[bool, int, int]:
    return (
        bool(node.attr("is_causal", 0)),
        int(node.attr("left_window_size", -1)),
        int(node.attr("right_window_size", -1)),
    )


def _blocked_keys(b: NodeBuilder, node: Node, q_len: int, total_len: int, past_len: int) -> str:
    """A bool value, True where causality, the window or KV padding hides a key ("" if none can)."""
    nonpad = _operand(node, 6)
    if nonpad:
        return _runtime_blocked_keys(b, node, nonpad, q_len, total_len)
    blocked = _static_blocked_keys(node, q_len, total_len, past_len)
    return b.const("blocked_keys", blocked) if blocked.any() else ""


def _static_blocked_keys(node: Node, q_len: int, total_len: int, past_len: int) -> np.ndarray:
    """[S, T] bool: the query block ends `past_len` keys in (the cached keys precede it)."""
    causal, left, right = _window(node)
    position = past_len + np.arange(q_len).reshape(-1, 1)
    key = np.arange(total_len).reshape(1, -1)
    blocked = np.zeros((q_len, total_len), dtype=bool)
    if causal:
        blocked |= key > position
    if left >= 0:
        blocked |= key < position - left
    if right >= 0:
        blocked |= key > position + right
    return blocked


def _runtime_blocked_keys(b: NodeBuilder, node: Node, nonpad: str, q_len: int, total_len: int) -> str:
    """[B, 1, S, T] bool from nonpad_kv_seqlen: keys at or past it are padding, and the query block
    ends at the last valid key (an external cache), which places the causal and window bounds."""
    causal, left, right = _window(node)
    batch = b.shape(nonpad)[0]
    valid = b.reshape(b.cast(nonpad, np.dtype(np.int64), "cast_nonpad"), [batch, 1, 1, 1], "valid_keys")
    key = b.const("key_index", np.arange(total_len, dtype=np.int64).reshape(1, 1, 1, -1))
    query_offset = b.const("query_offset", (np.arange(q_len, dtype=np.int64) - q_len).reshape(1, 1, -1, 1))
    position = b.binary("Add", valid, query_offset, "query_position")
    blocked = b.binary("GreaterOrEqual", key, valid, "padding", dtype=np.dtype(bool))
    bounds = []
    if causal:
        bounds.append(b.binary("Greater", key, position, "causal", dtype=np.dtype(bool)))
    if left >= 0:
        lowest = b.binary(
            "Sub", position, b.const("left_window", np.array(left, dtype=np.int64)), "lowest_key"
        )
        bounds.append(b.binary("Less", key, lowest, "left_window", dtype=np.dtype(bool)))
    if right >= 0:
        highest = b.binary(
            "Add", position, b.const("right_window", np.array(right, dtype=np.int64)), "highest_key"
        )
        bounds.append(b.binary("Greater", key, highest, "right_window", dtype=np.dtype(bool)))
    for bound in bounds:
        blocked = b.binary("Or", blocked, bound, "blocked_keys", dtype=np.dtype(bool))
    return blocked


def _may_mask_whole_rows(b: NodeBuilder, node: Node, blocked: str, total_len: int, dtype: np.dtype) -> bool:
    """Whether some query row can end up with every score -inf (its softmax must then be zeros)."""
    mask = _operand(node, 3)
    if _operand(node, 6) or (mask and not b.graph.values[mask].is_const):
        return True  # runtime data decides
    hidden = np.zeros((1, total_len), dtype=bool)
    if mask:
        values = np.asarray(b.graph.values[mask].const)
        hides = ~values if values.dtype == np.bool_ else np.isneginf(values.astype(dtype))
        hidden = np.pad(
            hides, [(0, 0)] * (hides.ndim - 1) + [(0, total_len - hides.shape[-1])], constant_values=True
        )
    if blocked:
        hidden = hidden | b.graph.values[blocked].const
    return bool(hidden.all(axis=-1).any())


def _softmax(b: NodeBuilder, node: Node, scores: str, guard_rows: bool) -> str:
    """Softmax over the keys at `softmax_precision`, fully masked rows as zeros."""
    dtype = b.dtype(scores)
    precision = node.attr("softmax_precision")
    rounding = dtype if precision is None else np.dtype(helper.tensor_dtype_to_np_dtype(int(precision)))
    work = compute_dtype(rounding)
    x = b.cast(b.cast(scores, rounding, "round_scores"), work, "widen_scores")
    probs = b.unary("Softmax", x, "softmax", axis=-1)
    if guard_rows:
        row_max = b.reduce("ReduceMax", x, [-1], keepdims=True, tag="row_max")
        fully_masked = b.binary(
            "Equal", row_max, _scalar(b, -np.inf, work, "neg_inf"), "fully_masked", dtype=np.dtype(bool)
        )
        probs = b.where(fully_masked, _scalar(b, 0.0, work, "zero"), probs, "zero_masked_rows")
    return b.cast(b.cast(probs, rounding, "round_probs"), dtype, "widen_probs")
