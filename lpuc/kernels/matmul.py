"""Matrix products: MatMul, Gemm, MatMulInteger, QLinearMatMul."""

from __future__ import annotations

import numpy as np

from lpuc.kernels import windows
from lpuc.kernels._common import accumulation_dtype
from lpuc.kernels.quantize import centered, quantize_values
from lpuc.kernels.registry import KernelContext, kernel


def accumulated_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """numpy.matmul (broadcasting, 1-D operands) computed in `accumulation_dtype` of a's dtype;
    callers cast the result back."""
    acc = accumulation_dtype(a.dtype)
    return np.matmul(a.astype(acc, copy=False), b.astype(acc, copy=False))


def _per_row(param: np.ndarray) -> np.ndarray:
    """A 1-D per-row zero point / scale of the left operand [M, K] broadcasts as [M, 1]."""
    return param.reshape(-1, 1) if param.ndim == 1 and param.size > 1 else param


def _tap_windows(ctx: KernelContext, a: np.ndarray) -> np.ndarray:
    """A row-tapped product's operand as the plain one (passes/row_taps): C[r] = sum_i A'[r +
    taps[i], columns i] @ B's i-th block of rows, A' the sequence whose halo layout A is (row_tiles
    [rows, step, halo]; tap_columns [c0, c1] per tap, by default all of A's), so the tap windows side
    by side; any other product's A as it is."""
    taps = ctx.attr("row_taps")
    if not taps:
        return a
    rows, step, halo = (int(v) for v in ctx.attr("row_tiles"))
    sequence = np.empty((rows + halo, a.shape[-1]), a.dtype)
    sequence[windows.halo_index(rows, step, halo)] = a
    flat = [int(c) for c in ctx.attr("tap_columns") or [0, a.shape[-1]] * len(taps)]
    columns = zip(flat[0::2], flat[1::2])
    return np.concatenate(
        [sequence[int(t) : int(t) + rows, c0:c1] for t, (c0, c1) in zip(taps, columns)], axis=-1
    )


@kernel("MatMul")
def matmul(ctx: KernelContext, a, b):
    a = _tap_windows(ctx, a)
    return accumulated_matmul(a, b).astype(a.dtype, copy=False)


@kernel("Gemm")
def gemm(ctx: KernelContext, a, b, c=None):
    alpha, beta = ctx.attr("alpha", 1.0), ctx.attr("beta", 1.0)
    y = accumulated_matmul(a.T if ctx.attr("transA", 0) else a, b.T if ctx.attr("transB", 0) else b)
    if alpha != 1.0:
        y = y * alpha
    if c is not None and beta != 0.0:
        c = c.astype(y.dtype, copy=False)
        y = y + (c if beta == 1.0 else beta * c)
    return y.astype(a.dtype, copy=False)


@kernel("MatMulInteger")
def matmul_integer(ctx: KernelContext, a, b, a_zero_point=None, b_zero_point=None):
    a = _tap_windows(ctx, a)
    a_zero_point = None if a_zero_point is None else _per_row(a_zero_point)
    narrow = a.dtype.itemsize == 1 and b.dtype.itemsize == 1
    a, b = centered(a, a_zero_point), centered(b, b_zero_point)
    if narrow and a.shape[-1] <= _EXACT_FLOAT64_K:
        # 8-bit operands (|x| <= 255 centered): every partial sum is an integer below 2**53, so the
        # float64 product (BLAS) is exact and the same as numpy's far slower int64 one.
        return np.matmul(a.astype(np.float64), b.astype(np.float64)).astype(np.int64).astype(np.int32)
    return np.matmul(a, b).astype(np.int32)


# The longest reduction whose float64 sums of 8-bit products stay exact: K * 255 * 255 < 2**53.
_EXACT_FLOAT64_K = 2**53 // (255 * 255)


@kernel("QLinearMatMul")
def qlinear_matmul(
    ctx: KernelContext, a, a_scale, a_zero_point, b, b_scale, b_zero_point, y_scale, y_zero_point
):
    accumulator = np.matmul(centered(a, _per_row(a_zero_point)), centered(b, b_zero_point))
    # The combined scale is computed in the scales' own precision, as the spec's formula reads.
    multiplier = (_per_row(a_scale) * b_scale / y_scale).astype(y_scale.dtype)
    return quantize_values(accumulator * multiplier.astype(np.float64), y_zero_point, y_zero_point.dtype)
