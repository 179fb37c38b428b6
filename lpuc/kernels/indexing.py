"""Kernels that select or place elements by index: Gather*, Scatter*, TensorScatter, OneHot, Compress,
NonZero, Unique and ai.onnx.ml's ArrayFeatureExtractor."""

from __future__ import annotations

import math

import numpy as np

from lpuc.kernels._common import IndexRangeError, compute_dtype, int_scalar, normalize_axis
from lpuc.kernels.registry import KernelContext, kernel

ML_DOMAIN = "ai.onnx.ml"


def checked_indices(op: str, indices: np.ndarray, dim: int) -> np.ndarray:
    """Indices into a dimension of size `dim` with negatives wrapped; out-of-range ones are an error."""
    indices = np.asarray(indices).astype(np.int64)
    if indices.size and (indices.min() < -dim or indices.max() >= dim):
        bad = int(indices.min()) if indices.min() < -dim else int(indices.max())
        raise IndexRangeError(f"{op}: index {bad} out of range [{-dim}, {dim - 1}]")
    return np.where(indices < 0, indices + dim, indices)


@kernel("Gather")
def gather_kernel(ctx: KernelContext, x: np.ndarray, indices: np.ndarray) -> np.ndarray:
    axis = normalize_axis(ctx.attr("axis", 0), x.ndim)
    return np.take(x, checked_indices("Gather", indices, x.shape[axis]), axis=axis)


@kernel("GatherElements")
def gather_elements_kernel(ctx: KernelContext, x: np.ndarray, indices: np.ndarray) -> np.ndarray:
    axis = normalize_axis(ctx.attr("axis", 0), x.ndim)
    # Indices may be smaller than the data along the other axes: only that corner is read.
    corner = tuple(slice(None) if a == axis else slice(0, n) for a, n in enumerate(indices.shape))
    positions = checked_indices("GatherElements", indices, x.shape[axis])
    return np.take_along_axis(x[corner], positions, axis=axis)


def _nd_index(op: str, x: np.ndarray, indices: np.ndarray, batch_dims: int) -> tuple[np.ndarray, ...]:
    """The fancy index that GatherND/ScatterND's index tuples (last axis of `indices`) address."""
    depth = indices.shape[-1]
    if batch_dims + depth > x.ndim:
        raise ValueError(f"{op}: index tuples of length {depth} exceed data rank {x.ndim}")
    batch = np.indices(indices.shape[:batch_dims], sparse=True)  # each [b0, 1, ...]
    lead = tuple(b.reshape(b.shape + (1,) * (indices.ndim - 1 - batch_dims)) for b in batch)
    coords = tuple(checked_indices(op, indices[..., i], x.shape[batch_dims + i]) for i in range(depth))
    return lead + coords


@kernel("GatherND")
def gather_nd_kernel(ctx: KernelContext, x: np.ndarray, indices: np.ndarray) -> np.ndarray:
    return x[_nd_index("GatherND", x, indices, ctx.attr("batch_dims", 0))]


# ScatterElements/ScatterND `reduction` -> the ufunc that combines an update with the current value.
_REDUCTIONS = {"add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum}


def _scatter(
    ctx: KernelContext, x: np.ndarray, index: tuple[np.ndarray, ...], updates: np.ndarray
) -> np.ndarray:
    reduction = ctx.attr("reduction", "none")
    if reduction == "none":
        out = x.copy()
        out[index] = updates  # duplicate indices are undefined by the spec
        return out
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{ctx.op_type}: unsupported reduction {reduction!r}")
    out = x.astype(compute_dtype(x.dtype))
    _REDUCTIONS[reduction].at(out, index, updates.astype(out.dtype))  # .at applies duplicates in turn
    return out.astype(x.dtype)


@kernel("Scatter", "ScatterElements")
def scatter_elements_kernel(
    ctx: KernelContext, x: np.ndarray, indices: np.ndarray, updates: np.ndarray
) -> np.ndarray:
    axis = normalize_axis(ctx.attr("axis", 0), x.ndim)
    index = list(np.indices(indices.shape, sparse=True))
    index[axis] = checked_indices(ctx.op_type, indices, x.shape[axis])
    return _scatter(ctx, x, tuple(index), updates)


@kernel("ScatterND")
def scatter_nd_kernel(
    ctx: KernelContext, x: np.ndarray, indices: np.ndarray, updates: np.ndarray
) -> np.ndarray:
    return _scatter(ctx, x, _nd_index("ScatterND", x, indices, 0), updates)


@kernel("TensorScatter")
def tensor_scatter_kernel(
    ctx: KernelContext, past: np.ndarray, update: np.ndarray, write_indices: np.ndarray | None = None
) -> np.ndarray:
    axis = normalize_axis(ctx.attr("axis", -2), past.ndim)
    if axis == 0:
        raise ValueError("TensorScatter: axis must not be the batch axis 0")
    mode = ctx.attr("mode", "linear")
    capacity, length = past.shape[axis], update.shape[axis]
    starts = np.zeros(past.shape[0], np.int64) if write_indices is None else write_indices.astype(np.int64)
    rows = starts[:, None] + np.arange(length)[None, :]  # [batch, sequence]
    if mode == "circular":
        rows %= capacity
    elif mode != "linear":
        raise ValueError(f"TensorScatter: unsupported mode {mode!r}")
    elif rows.size and rows.max() >= capacity:
        raise ValueError(f"TensorScatter: writes past the cache length {capacity} in linear mode")
    shape = [1] * past.ndim
    shape[0], shape[axis] = past.shape[0], length
    out = past.copy()
    np.put_along_axis(out, np.broadcast_to(rows.reshape(shape), update.shape), update, axis=axis)
    return out


@kernel("OneHot")
def one_hot_kernel(
    ctx: KernelContext, indices: np.ndarray, depth: np.ndarray, values: np.ndarray
) -> np.ndarray:
    size = int_scalar(depth)
    axis = normalize_axis(ctx.attr("axis", -1), indices.ndim + 1)
    positions = indices.astype(np.int64)
    positions = np.where(positions < 0, positions + size, positions)  # out-of-range ones match nothing
    hot = np.expand_dims(positions, axis) == np.arange(size).reshape((-1,) + (1,) * (indices.ndim - axis))
    off_value, on_value = values.reshape(-1)
    return np.where(hot, on_value, off_value).astype(values.dtype)


@kernel("Compress")
def compress_kernel(ctx: KernelContext, x: np.ndarray, condition: np.ndarray) -> np.ndarray:
    axis = ctx.attr("axis")
    data = x.reshape(-1) if axis is None else x  # without an axis, the flattened input is filtered
    axis = 0 if axis is None else normalize_axis(axis, x.ndim)
    keep = condition.astype(bool).reshape(-1)  # may be shorter than the axis: the rest is dropped
    if keep.size > data.shape[axis]:
        raise ValueError(f"Compress: condition of length {keep.size} exceeds axis size {data.shape[axis]}")
    return np.compress(keep, data, axis=axis)


@kernel("NonZero")
def non_zero_kernel(ctx: KernelContext, x: np.ndarray) -> np.ndarray:
    if x.ndim == 0:  # numpy refuses 0-d input; the result has no coordinate rows
        return np.zeros((0, int(bool(x))), dtype=np.int64)
    return np.array(np.nonzero(x), dtype=np.int64).reshape(x.ndim, -1)


@kernel("Unique")
def unique_kernel(ctx: KernelContext, x: np.ndarray) -> tuple[np.ndarray, ...]:
    axis = ctx.attr("axis")
    axis = None if axis is None else normalize_axis(axis, x.ndim)
    # Each row is one candidate: an element, or a slice along `axis` flattened.
    moved = x.reshape(-1) if axis is None else np.moveaxis(x, axis, 0)
    rows = moved.reshape(moved.shape[0], math.prod(moved.shape[1:])).astype(compute_dtype(x.dtype))
    order = np.lexsort(rows.T[::-1]) if rows.shape[1] else np.arange(rows.shape[0])  # stable
    ranked = rows[order]
    starts_group = np.ones(len(order), dtype=bool)
    starts_group[1:] = np.any(ranked[1:] != ranked[:-1], axis=1)
    group_of_ranked = np.cumsum(starts_group) - 1
    first = order[starts_group]  # stability makes each group's first row its first occurrence
    counts = np.diff(np.append(np.flatnonzero(starts_group), len(order)))
    if not ctx.attr("sorted", 1):  # renumber the groups in order of first occurrence
        by_occurrence = np.argsort(first)
        first, counts = first[by_occurrence], counts[by_occurrence]
        group_of_ranked = np.argsort(by_occurrence)[group_of_ranked]
    inverse = np.empty(len(order), dtype=np.int64)
    inverse[order] = group_of_ranked
    values = np.take(moved, first, axis=0)
    if axis is not None:
        values = np.moveaxis(values, 0, axis)
    return values, first.astype(np.int64), inverse, counts.astype(np.int64)


@kernel("ArrayFeatureExtractor", domain=ML_DOMAIN)
def array_feature_extractor_kernel(ctx: KernelContext, x: np.ndarray, indices: np.ndarray) -> np.ndarray:
    picked = np.take(x, checked_indices("ArrayFeatureExtractor", indices.reshape(-1), x.shape[-1]), axis=-1)
    return picked.reshape(1, -1) if x.ndim == 1 else picked  # 1-D input reads as a single row
