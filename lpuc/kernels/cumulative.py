"""Scans along one axis (CumSum, CumProd) and the sort-based TopK."""

from __future__ import annotations

import numpy as np

from lpuc.kernels._common import compute_dtype, ints, normalize_axis, opset_before
from lpuc.kernels.registry import KernelContext, kernel


def _axis_operand(ctx: KernelContext, axis: np.ndarray, rank: int) -> int:
    values = ints(axis)
    if len(values) != 1 or not -rank <= values[0] < rank:
        raise ValueError(f"{ctx.op_type}: axis {values} is not a single axis of a rank-{rank} input")
    return normalize_axis(values[0], rank)


def _scan(ctx: KernelContext, x: np.ndarray, axis_input: np.ndarray, ufunc: np.ufunc) -> np.ndarray:
    """Inclusive or exclusive, forward or reverse running `ufunc` (np.add or np.multiply)."""
    axis = _axis_operand(ctx, axis_input, x.ndim)
    data = x.astype(compute_dtype(x.dtype), copy=False)
    reverse = bool(ctx.attr("reverse", 0))
    if reverse:
        data = np.flip(data, axis)
    # dtype=: numpy would otherwise widen small integers to int64.
    running = ufunc.accumulate(data, axis=axis, dtype=data.dtype)
    if ctx.attr("exclusive", 0):
        # Each position sees only the elements before it: shift by one, starting at the identity.
        first_shape = list(data.shape)
        first_shape[axis] = min(1, data.shape[axis])
        identity = np.full(first_shape, ufunc.identity, dtype=data.dtype)
        preceding = np.take(running, np.arange(data.shape[axis] - 1), axis=axis)
        running = np.concatenate([identity, preceding], axis=axis)
    if reverse:
        running = np.flip(running, axis)
    return running.astype(x.dtype, copy=False)


@kernel("CumSum")
def cum_sum(ctx: KernelContext, x: np.ndarray, axis: np.ndarray) -> np.ndarray:
    return _scan(ctx, x, axis, np.add)


@kernel("CumProd")
def cum_prod(ctx: KernelContext, x: np.ndarray, axis: np.ndarray) -> np.ndarray:
    return _scan(ctx, x, axis, np.multiply)


def _stable_order(x: np.ndarray, axis: int, descending: bool) -> np.ndarray:
    """Indices that sort `x` along `axis`; equal values keep their original (ascending) order."""
    if not descending:
        return np.argsort(x, axis=axis, kind="stable")
    # A stable ascending sort of the reversed axis, read backwards, is descending with ties in
    # ascending original order; no negation, so it also holds for unsigned and bool data.
    size = x.shape[axis]
    reversed_order = np.argsort(np.flip(x, axis), axis=axis, kind="stable")
    return size - 1 - np.flip(reversed_order, axis)


@kernel("TopK")
def top_k(ctx: KernelContext, x: np.ndarray, k: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    axis = normalize_axis(ctx.attr("axis", -1), x.ndim)
    count = ctx.attr("k", -1) if opset_before(ctx, 10) else ints(k)[0]
    if not 0 <= axis < x.ndim or not 0 <= count <= x.shape[axis]:
        raise ValueError(
            f"TopK: k={count} along axis {ctx.attr('axis', -1)} does not fit input shape {x.shape}"
        )
    # Sorting float16/bfloat16 through float32 is exact and avoids dtypes numpy sorts poorly.
    order = _stable_order(x.astype(compute_dtype(x.dtype), copy=False), axis, bool(ctx.attr("largest", 1)))
    indices = np.take(order, np.arange(count), axis=axis).astype(np.int64)
    # `sorted=0` lets the order be anything, so the sorted result serves both settings.
    return np.take_along_axis(x, indices, axis=axis), indices
