"""Binary and variadic elementwise kernels: arithmetic, comparisons, logic, bitwise ops and Where.

All broadcast like numpy (ONNX's multidirectional broadcasting). Before opset 7 the arithmetic,
logical and comparison ops broadcast differently: only with `broadcast=1`, and B then lines up with
A's dimensions starting at `axis`.
"""

from __future__ import annotations

import functools

import numpy as np

from lpuc.kernels._common import low_precision_in_float32, normalize_axis, opset_before, widen_low_precision
from lpuc.kernels.registry import KernelContext, KernelFn, kernel


def _legacy_aligned(ctx: KernelContext, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """B reshaped so that numpy broadcasting reproduces the pre-opset-7 `axis` alignment."""
    axis = ctx.attr("axis")
    if not opset_before(ctx, 7) or not ctx.attr("broadcast", 0) or axis is None or b.size == 1:
        return b  # without an axis the old rule matched suffixes, which numpy does too
    axis = normalize_axis(axis, a.ndim)
    return b.reshape((1,) * axis + b.shape + (1,) * (a.ndim - axis - b.ndim))


def _same_type_kernel(ufunc: np.ufunc) -> KernelFn:
    """A kernel whose result has A's dtype (arithmetic, logical and bitwise ops)."""

    @low_precision_in_float32
    def apply(ctx: KernelContext, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return ufunc(a, _legacy_aligned(ctx, a, b))

    return apply


def _comparison_kernel(ufunc: np.ufunc) -> KernelFn:
    def apply(ctx: KernelContext, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        a, b = widen_low_precision(a), widen_low_precision(b)
        return np.asarray(ufunc(a, _legacy_aligned(ctx, a, b)), dtype=bool)

    return apply


_SAME_TYPE_OPS = {
    "Add": np.add,
    "Sub": np.subtract,
    "Mul": np.multiply,
    "And": np.logical_and,
    "Or": np.logical_or,
    "Xor": np.logical_xor,
    "BitwiseAnd": np.bitwise_and,
    "BitwiseOr": np.bitwise_or,
    "BitwiseXor": np.bitwise_xor,
}
_COMPARISONS = {
    "Equal": np.equal,
    "Greater": np.greater,
    "GreaterOrEqual": np.greater_equal,
    "Less": np.less,
    "LessOrEqual": np.less_equal,
}

for _op, _ufunc in _SAME_TYPE_OPS.items():
    kernel(_op)(_same_type_kernel(_ufunc))
for _op, _ufunc in _COMPARISONS.items():
    kernel(_op)(_comparison_kernel(_ufunc))


@kernel("Not")
def logical_not(ctx: KernelContext, x: np.ndarray) -> np.ndarray:
    return np.logical_not(x)


@kernel("BitwiseNot")
def bitwise_not(ctx: KernelContext, x: np.ndarray) -> np.ndarray:
    return np.invert(x)


@kernel("Div")
@low_precision_in_float32
def div(ctx: KernelContext, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    b = _legacy_aligned(ctx, a, b)
    if a.dtype.kind in "iu":
        return _truncating_divide(a, b)
    return np.true_divide(a, b)


def _truncating_divide(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # numpy floors; ONNX (like C) truncates toward zero. They differ by one exactly when the
    # division is inexact and the operands have opposite signs.
    quotient = np.floor_divide(a, b)
    return np.where((np.remainder(a, b) != 0) & ((a < 0) != (b < 0)), quotient + 1, quotient)


@kernel("Mod")
@low_precision_in_float32
def mod(ctx: KernelContext, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    fmod = ctx.attr("fmod", 0)
    if fmod == 0:
        return np.mod(a, b)  # Python's rule: the result takes the divisor's sign
    if fmod == 1:
        return np.fmod(a, b)  # C's rule: the result takes the dividend's sign
    raise ValueError(f"Mod: fmod must be 0 or 1, got {fmod}")


@kernel("Pow")
def power(ctx: KernelContext, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    y = _legacy_aligned(ctx, x, y)
    if x.dtype.kind in "iu" and y.dtype.kind in "iu":
        return _integer_power(x, y)
    if x.dtype.kind in "iu":
        # An integer base with a float exponent: computed in float64, truncated back like a C cast.
        return np.power(x.astype(np.float64), y).astype(x.dtype)
    return np.power(widen_low_precision(x), widen_low_precision(y)).astype(x.dtype)


def _integer_power(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    # numpy refuses negative integer exponents. Truncated toward zero, x**-n is 0 except for
    # x = 1 (always 1) and x = -1 (1 or -1 by the parity of n).
    negative = y < 0
    result = np.power(x, np.where(negative, 0, y)).astype(x.dtype)
    if not np.any(negative):
        return result
    unit_power = np.where(np.abs(x) == 1, np.where(y % 2 == 0, 1, x), 0)
    return np.where(negative, unit_power, result).astype(x.dtype)


@kernel("BitShift")
def bit_shift(ctx: KernelContext, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    direction = ctx.attr("direction")
    bits = x.dtype.itemsize * 8
    # A shift that is negative or at least the bit width leaves only the sign fill, unlike numpy
    # and C; shifting by an in-range stand-in and then overriding keeps numpy well-defined.
    out_of_range = (y < 0) | (y >= bits)
    in_range_shift = np.where(out_of_range, 0, y).astype(x.dtype)
    if direction == "LEFT":
        return np.where(out_of_range, 0, np.left_shift(x, in_range_shift)).astype(x.dtype)
    if direction == "RIGHT":
        sign_fill = -(x < 0).astype(x.dtype)  # -1 for negative signed values, else 0
        return np.where(out_of_range, sign_fill, np.right_shift(x, in_range_shift)).astype(x.dtype)
    raise ValueError(f"BitShift: direction must be 'LEFT' or 'RIGHT', got {direction!r}")


# --- Variadic (any number of inputs, broadcast together) -------------------------------------------


def _variadic_kernel(ufunc: np.ufunc) -> KernelFn:
    @low_precision_in_float32
    def apply(ctx: KernelContext, *inputs: np.ndarray) -> np.ndarray:
        return functools.reduce(ufunc, inputs)

    return apply


for _op, _ufunc in {"Sum": np.add, "Max": np.maximum, "Min": np.minimum}.items():
    kernel(_op)(_variadic_kernel(_ufunc))


@kernel("Mean")
@low_precision_in_float32
def mean(ctx: KernelContext, *inputs: np.ndarray) -> np.ndarray:
    return functools.reduce(np.add, inputs) / len(inputs)


@kernel("Where")
def where(ctx: KernelContext, condition: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.where(condition, x, y).astype(x.dtype, copy=False)
