"""Softmax, LogSoftmax and Hardmax along an axis."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from lpuc.kernels._common import compute_dtype, normalize_axis, opset_before
from lpuc.kernels.registry import KernelContext, kernel

# Each takes and returns an array of the input type.
AxisFn = Callable[[np.ndarray, int], np.ndarray]


def _stepwise(x: np.ndarray) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """A working copy of `x` (float32 for float16/bfloat16) and a rounding back to x's type.

    ONNX defines Softmax and LogSoftmax as functions whose every step (Sub, Exp, ReduceSum, ...)
    yields a tensor of the input type; low-precision intermediates are rounded at those points too.
    """
    work = compute_dtype(x.dtype)
    return x.astype(work, copy=False), lambda a: a.astype(x.dtype, copy=False).astype(work, copy=False)


def softmax(x: np.ndarray, axis: int) -> np.ndarray:
    if x.dtype == np.float32 or x.dtype == np.float64:
        # The same ufuncs without the wrappers (np.max and np.sum call these reductions; rounding
        # to the input type is the identity here): a small model's softmax is mostly call overhead.
        exps = np.exp(x - np.maximum.reduce(x, axis=axis, keepdims=True))
        return exps / np.add.reduce(exps, axis=axis, keepdims=True)
    work, stored = _stepwise(x)
    exps = stored(np.exp(stored(work - np.max(work, axis=axis, keepdims=True))))
    return (exps / stored(np.sum(exps, axis=axis, keepdims=True))).astype(x.dtype, copy=False)


def log_softmax(x: np.ndarray, axis: int) -> np.ndarray:
    work, stored = _stepwise(x)
    shifted = stored(work - np.max(work, axis=axis, keepdims=True))
    log_total = stored(np.log(stored(np.sum(stored(np.exp(shifted)), axis=axis, keepdims=True))))
    return (shifted - log_total).astype(x.dtype, copy=False)


def hardmax(x: np.ndarray, axis: int) -> np.ndarray:
    """1 at the first maximum along `axis`, 0 elsewhere."""
    winners = np.expand_dims(np.argmax(x.astype(compute_dtype(x.dtype), copy=False), axis=axis), axis)
    return (np.arange(x.shape[axis]).reshape([-1] + [1] * (x.ndim - 1 - axis)) == winners).astype(x.dtype)


def _along_axis(ctx: KernelContext, x: np.ndarray, fn: AxisFn) -> np.ndarray:
    """Apply `fn` along the node's axis with the opset's meaning of that axis."""
    legacy = opset_before(ctx, 13)
    requested = ctx.attr("axis", 1 if legacy else -1)
    axis = normalize_axis(requested, x.ndim)
    if not 0 <= axis < x.ndim:
        raise ValueError(f"{ctx.op_type}: axis {requested} is out of range for input shape {x.shape}")
    view = x
    if legacy:
        # Before opset 13 the input is viewed as 2-D: dims before `axis` index rows, the rest one row.
        view = x.reshape(int(np.prod(x.shape[:axis])), int(np.prod(x.shape[axis:])))
        axis = 1
    return fn(view, axis).reshape(x.shape)


@kernel("Softmax")
def softmax_kernel(ctx: KernelContext, x: np.ndarray) -> np.ndarray:
    return _along_axis(ctx, x, softmax)


@kernel("LogSoftmax")
def log_softmax_kernel(ctx: KernelContext, x: np.ndarray) -> np.ndarray:
    return _along_axis(ctx, x, log_softmax)


@kernel("Hardmax")
def hardmax_kernel(ctx: KernelContext, x: np.ndarray) -> np.ndarray:
    return _along_axis(ctx, x, hardmax)
