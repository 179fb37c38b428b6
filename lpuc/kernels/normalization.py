"""Normalizations: statistics-based (Layer, RMS, Group, Instance, Batch), Lp, mean-variance, and LRN."""

from __future__ import annotations

import ml_dtypes
import numpy as np

from lpuc.kernels._common import compute_dtype, normalize_axes, normalize_axis, opset_before
from lpuc.kernels.registry import KernelContext, kernel

# TensorProto element types that `stash_type` may name.
_STASH_DTYPES = {
    1: np.dtype(np.float32),
    10: np.dtype(np.float16),
    11: np.dtype(np.float64),
    16: np.dtype(ml_dtypes.bfloat16),
}


def _stash_dtype(ctx: KernelContext) -> np.dtype:
    stash_type = ctx.attr("stash_type", 1)
    if stash_type not in _STASH_DTYPES:
        raise ValueError(f"{ctx.op_type}: stash_type {stash_type} is not a floating-point type")
    return _STASH_DTYPES[stash_type]


def _moments(x: np.ndarray, axes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and population variance over `axes`, keeping the reduced dims for broadcasting."""
    mean = np.mean(x, axis=axes, keepdims=True)
    centered = x - mean
    return mean, np.mean(centered * centered, axis=axes, keepdims=True)


def _standardize(x: np.ndarray, mean: np.ndarray, variance: np.ndarray, epsilon: float) -> np.ndarray:
    return (x - mean) / np.sqrt(variance + epsilon)


def _per_channel(param: np.ndarray, rank: int) -> np.ndarray:
    """A (C,) or (C, D1, ...) parameter laid out to broadcast against an (N, C, D1, ...) tensor."""
    return param.reshape(param.shape + (1,) * (rank - 1 - param.ndim))


def _trailing_axes(ctx: KernelContext, x: np.ndarray) -> tuple[int, ...]:
    """The axes from the node's `axis` to the last: what Layer and RMS normalization reduce over."""
    axis = normalize_axis(ctx.attr("axis", -1), x.ndim)
    if not 0 <= axis < x.ndim:
        raise ValueError(
            f"{ctx.op_type}: axis {ctx.attr('axis', -1)} is out of range for input shape {x.shape}"
        )
    return tuple(range(axis, x.ndim))


@kernel("LayerNormalization")
def layer_normalization(
    ctx: KernelContext, x: np.ndarray, scale: np.ndarray, bias: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Y, and the Mean and InvStdDev it used (in the stash type, reduced dims kept as 1)."""
    stashed = x.astype(_stash_dtype(ctx))
    mean, variance = _moments(stashed, _trailing_axes(ctx, x))
    inv_std_dev = 1 / np.sqrt(variance + ctx.attr("epsilon", 1e-5))
    # Only standardization runs in the stash type; scale and shift run in X's type.
    y = ((stashed - mean) * inv_std_dev).astype(x.dtype) * scale
    if bias is not None:
        y = y + bias
    return y.astype(x.dtype, copy=False), mean, inv_std_dev


@kernel("RMSNormalization")
def rms_normalization(ctx: KernelContext, x: np.ndarray, scale: np.ndarray) -> np.ndarray:
    stashed = x.astype(_stash_dtype(ctx))
    mean_square = np.mean(stashed * stashed, axis=_trailing_axes(ctx, x), keepdims=True)
    normalized = stashed / np.sqrt(mean_square + ctx.attr("epsilon", 1e-5))
    # Y takes the type of `scale` (V), which may differ from X's (T).
    return (normalized.astype(x.dtype) * scale).astype(scale.dtype, copy=False)


@kernel("GroupNormalization")
def group_normalization(ctx: KernelContext, x: np.ndarray, scale: np.ndarray, bias: np.ndarray) -> np.ndarray:
    groups = ctx.attr("num_groups")
    channels = x.shape[1] if x.ndim >= 2 else 0
    if not groups or channels % groups:
        raise ValueError(f"GroupNormalization: num_groups={groups} does not divide the {channels} channels")
    # Each (instance, group) pair is one row of statistics.
    group_size = int(np.prod(x.shape[1:])) // groups
    stashed = x.astype(_stash_dtype(ctx)).reshape(x.shape[0], groups, group_size)
    normalized = _standardize(stashed, *_moments(stashed, (2,)), ctx.attr("epsilon", 1e-5))
    if opset_before(ctx, 21):
        # Opset 18 gave one scale and bias per group rather than per channel.
        scale, bias = np.repeat(scale, channels // groups), np.repeat(bias, channels // groups)
    y = normalized.reshape(x.shape).astype(x.dtype) * _per_channel(scale, x.ndim) + _per_channel(bias, x.ndim)
    return y.astype(x.dtype, copy=False)


@kernel("InstanceNormalization")
def instance_normalization(
    ctx: KernelContext, x: np.ndarray, scale: np.ndarray, bias: np.ndarray
) -> np.ndarray:
    work = x.astype(compute_dtype(x.dtype), copy=False)
    normalized = _standardize(work, *_moments(work, tuple(range(2, x.ndim))), ctx.attr("epsilon", 1e-5))
    y = normalized * _per_channel(scale, x.ndim) + _per_channel(bias, x.ndim)
    return y.astype(x.dtype, copy=False)


def _batch_norm_is_training(ctx: KernelContext) -> bool:
    if not opset_before(ctx, 14):
        return bool(ctx.attr("training_mode", 0))
    # Older opsets asked for training by requesting the statistics outputs (and is_test=0 before 7).
    return ctx.num_outputs > 1 and not ctx.attr("is_test", 0)


@kernel("BatchNormalization")
def batch_normalization(
    ctx: KernelContext,
    x: np.ndarray,
    scale: np.ndarray,
    bias: np.ndarray,
    input_mean: np.ndarray,
    input_var: np.ndarray,
) -> np.ndarray | tuple[np.ndarray, ...]:
    """Y; in training mode also running_mean and running_var (plus saved_mean and saved_var < 14)."""
    epsilon = ctx.attr("epsilon", 1e-5)
    work = x.astype(compute_dtype(x.dtype), copy=False)
    rank = x.ndim
    if not _batch_norm_is_training(ctx):
        normalized = _standardize(
            work, _per_channel(input_mean, rank), _per_channel(input_var, rank), epsilon
        )
        y = normalized * _per_channel(scale, rank) + _per_channel(bias, rank)
        return y.astype(x.dtype, copy=False)
    # Statistics over everything but the channel; non-spatial (opset < 9) models keep spatial dims too.
    stats_axes = (0,) + (tuple(range(2, rank)) if ctx.attr("spatial", 1) else ())
    batch_mean, batch_var = _moments(work, stats_axes)
    normalized = _standardize(work, batch_mean, batch_var, epsilon)
    y = (normalized * _per_channel(scale, rank) + _per_channel(bias, rank)).astype(x.dtype, copy=False)
    batch_mean, batch_var = np.squeeze(batch_mean, stats_axes), np.squeeze(batch_var, stats_axes)
    momentum = ctx.attr("momentum", 0.9)
    running_mean = (input_mean * momentum + batch_mean * (1 - momentum)).astype(input_mean.dtype, copy=False)
    running_var = (input_var * momentum + batch_var * (1 - momentum)).astype(input_var.dtype, copy=False)
    if opset_before(ctx, 14):
        saved = (batch_mean.astype(input_mean.dtype), batch_var.astype(input_var.dtype))
        return y, running_mean, running_var, *saved
    return y, running_mean, running_var


@kernel("LpNormalization")
def lp_normalization(ctx: KernelContext, x: np.ndarray) -> np.ndarray:
    p = ctx.attr("p", 2)
    if p not in (1, 2):
        raise ValueError(f"LpNormalization: p={p} is not supported (only 1 and 2)")
    axis = normalize_axis(ctx.attr("axis", -1), x.ndim)
    work = x.astype(compute_dtype(x.dtype), copy=False)
    magnitude = np.abs(work) if p == 1 else work * work
    norm = np.sum(magnitude, axis=axis, keepdims=True)
    if p == 2:
        norm = np.sqrt(norm)
    # An all-zero slice has norm 0; the spec defines its output as 0 rather than nan.
    y = np.divide(work, norm, out=np.zeros_like(work), where=norm != 0)
    return y.astype(x.dtype, copy=False)


# MeanVarianceNormalization's function body adds this to the standard deviation.
_MVN_EPSILON = 1e-9


@kernel("MeanVarianceNormalization")
def mean_variance_normalization(ctx: KernelContext, x: np.ndarray) -> np.ndarray:
    axes = normalize_axes(ctx.attr("axes", [0, 2, 3]), x.ndim)
    if any(not 0 <= a < x.ndim for a in axes):
        raise ValueError(f"MeanVarianceNormalization: axes {ctx.attr('axes')} are out of range for {x.shape}")
    work = x.astype(compute_dtype(x.dtype), copy=False)
    mean, variance = _moments(work, axes)
    return ((work - mean) / (np.sqrt(variance) + _MVN_EPSILON)).astype(x.dtype, copy=False)


@kernel("LRN")
def local_response_normalization(ctx: KernelContext, x: np.ndarray) -> np.ndarray:
    """Each value divided by a power of the summed squares of its `size` neighbouring channels."""
    size = ctx.attr("size")
    if not size or size < 1 or x.ndim < 2:
        raise ValueError(f"LRN: size={size} must be positive and the input have a channel axis ({x.shape})")
    work = x.astype(compute_dtype(x.dtype), copy=False)
    channels = x.shape[1]
    # The window spans floor((size-1)/2) channels before and ceil((size-1)/2) after.
    before = (size - 1) // 2
    padding = [(0, 0), (before, size - 1 - before)] + [(0, 0)] * (x.ndim - 2)
    padded_squares = np.pad(work * work, padding)
    window_sums = sum(padded_squares[:, tap : tap + channels] for tap in range(size))
    alpha, beta, bias = ctx.attr("alpha", 1e-4), ctx.attr("beta", 0.75), ctx.attr("bias", 1.0)
    return (work / (bias + alpha / size * window_sums) ** beta).astype(x.dtype, copy=False)
