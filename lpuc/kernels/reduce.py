"""Reductions over axes (Reduce*) and index reductions (ArgMax, ArgMin)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from lpuc.kernels._common import compute_dtype, ints, normalize_axes, normalize_axis, opset_before
from lpuc.kernels.registry import KernelContext, kernel

Reducer = Callable[[np.ndarray, tuple[int, ...], bool], np.ndarray]


def _lowest_value(dtype: np.dtype) -> float | int | bool:
    """The identity of max: -inf where the dtype has it, else its smallest value."""
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        return False
    return -np.inf if dtype.kind == "f" else np.iinfo(dtype).min


def _highest_value(dtype: np.dtype) -> float | int | bool:
    """The identity of min: +inf where the dtype has it, else its largest value."""
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        return True
    return np.inf if dtype.kind == "f" else np.iinfo(dtype).max


def _sum(x: np.ndarray, axes: tuple[int, ...], keepdims: bool) -> np.ndarray:
    # dtype=: numpy would otherwise widen small integers to int64.
    return np.sum(x, axis=axes, keepdims=keepdims, dtype=x.dtype)


def _prod(x: np.ndarray, axes: tuple[int, ...], keepdims: bool) -> np.ndarray:
    return np.prod(x, axis=axes, keepdims=keepdims, dtype=x.dtype)


def _max(x: np.ndarray, axes: tuple[int, ...], keepdims: bool) -> np.ndarray:
    return np.max(x, axis=axes, keepdims=keepdims, initial=_lowest_value(x.dtype))


def _min(x: np.ndarray, axes: tuple[int, ...], keepdims: bool) -> np.ndarray:
    return np.min(x, axis=axes, keepdims=keepdims, initial=_highest_value(x.dtype))


def _mean(x: np.ndarray, axes: tuple[int, ...], keepdims: bool) -> np.ndarray:
    count = int(np.prod([x.shape[a] for a in axes]))
    return _sum(x, axes, keepdims) / count


def _sum_square(x: np.ndarray, axes: tuple[int, ...], keepdims: bool) -> np.ndarray:
    return _sum(x * x, axes, keepdims)


def _l1(x: np.ndarray, axes: tuple[int, ...], keepdims: bool) -> np.ndarray:
    return _sum(np.abs(x), axes, keepdims)


def _l2(x: np.ndarray, axes: tuple[int, ...], keepdims: bool) -> np.ndarray:
    return np.sqrt(_sum_square(x, axes, keepdims))


def _log_sum(x: np.ndarray, axes: tuple[int, ...], keepdims: bool) -> np.ndarray:
    return np.log(_sum(x, axes, keepdims))


def _log_sum_exp(x: np.ndarray, axes: tuple[int, ...], keepdims: bool) -> np.ndarray:
    # Shift by the max so exp cannot overflow; an infinite or empty max shifts by 0 instead.
    peak = _max(x, axes, keepdims=True)
    shift = np.where(np.isfinite(peak), peak, 0).astype(peak.dtype)
    total = np.sum(np.exp(x - shift), axis=axes, keepdims=True)
    result = np.log(total) + shift
    return result if keepdims else np.squeeze(result, axis=axes)


_REDUCERS: dict[str, Reducer] = {
    "ReduceSum": _sum,
    "ReduceProd": _prod,
    "ReduceMax": _max,
    "ReduceMin": _min,
    "ReduceMean": _mean,
    "ReduceSumSquare": _sum_square,
    "ReduceL1": _l1,
    "ReduceL2": _l2,
    "ReduceLogSum": _log_sum,
    "ReduceLogSumExp": _log_sum_exp,
}


def reduction_axes(ctx: KernelContext, rank: int, axes_input: np.ndarray | None) -> tuple[int, ...]:
    """The sorted axes a Reduce* node reduces; () when it reduces nothing (noop_with_empty_axes)."""
    # Axes moved from an attribute to an input in opset 13 for ReduceSum, 18 for the others.
    axes_became_input = 13 if ctx.op_type == "ReduceSum" else 18
    axes = ctx.attr("axes") if opset_before(ctx, axes_became_input) else ints(axes_input)
    if not axes:
        return () if ctx.attr("noop_with_empty_axes", 0) else tuple(range(rank))
    normalized = normalize_axes(axes, rank)
    if any(not 0 <= a < rank for a in normalized) or len(set(normalized)) != len(normalized):
        raise ValueError(f"{ctx.op_type}: axes {list(axes)} are invalid or repeated for a rank-{rank} input")
    return tuple(sorted(normalized))


def _reduce_kernel(reducer: Reducer) -> Callable[..., np.ndarray]:
    def reduce(ctx: KernelContext, data: np.ndarray, axes: np.ndarray | None = None) -> np.ndarray:
        reduced_axes = reduction_axes(ctx, data.ndim, axes)
        x = data.astype(compute_dtype(data.dtype), copy=False)
        # Reducing an empty set is defined: log(0) = -inf, and the mean of nothing is nan.
        with np.errstate(divide="ignore", invalid="ignore"):
            result = reducer(x, reduced_axes, bool(ctx.attr("keepdims", 1)))
        return np.asarray(result).astype(data.dtype, copy=False)

    return reduce


for _op_type, _reducer in _REDUCERS.items():
    kernel(_op_type)(_reduce_kernel(_reducer))


def _index_of_extreme(ctx: KernelContext, data: np.ndarray, find: Callable[..., np.ndarray]) -> np.ndarray:
    """ArgMax/ArgMin: `find` is np.argmax or np.argmin, which return the first extreme."""
    axis = normalize_axis(ctx.attr("axis", 0), data.ndim)
    if not 0 <= axis < data.ndim or data.shape[axis] == 0:
        raise ValueError(
            f"{ctx.op_type}: axis {ctx.attr('axis', 0)} is out of range or empty for {data.shape}"
        )
    x = data.astype(compute_dtype(data.dtype), copy=False)
    if ctx.attr("select_last_index", 0):
        index = data.shape[axis] - 1 - find(np.flip(x, axis), axis=axis)
    else:
        index = find(x, axis=axis)
    index = index.astype(np.int64)
    return np.expand_dims(index, axis) if ctx.attr("keepdims", 1) else index


@kernel("ArgMax")
def arg_max(ctx: KernelContext, data: np.ndarray) -> np.ndarray:
    return _index_of_extreme(ctx, data, np.argmax)


@kernel("ArgMin")
def arg_min(ctx: KernelContext, data: np.ndarray) -> np.ndarray:
    return _index_of_extreme(ctx, data, np.argmin)
