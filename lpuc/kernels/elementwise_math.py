"""Unary math and activation kernels: one value in, one value out, elementwise.

Every kernel here is shape-agnostic (the runtime applies them to tiles as well as whole tensors).
float16/bfloat16 inputs are computed in float32 and rounded back once, so a compound formula such
as Gelu is not rounded after every step.
"""

from __future__ import annotations

import math

import numpy as np

from lpuc.kernels._common import low_precision_in_float32, opset_before, sigmoid, widen_low_precision
from lpuc.kernels.registry import KernelContext, KernelFn, kernel

_UFUNCS = {
    "Abs": np.abs,
    "Neg": np.negative,
    "Sign": np.sign,
    "Ceil": np.ceil,
    "Floor": np.floor,
    "Round": np.rint,  # ONNX rounds halves to even, as rint does
    "Sqrt": np.sqrt,
    "Reciprocal": np.reciprocal,
    "Exp": np.exp,
    "Log": np.log,
    "Sin": np.sin,
    "Cos": np.cos,
    "Tan": np.tan,
    "Asin": np.arcsin,
    "Acos": np.arccos,
    "Atan": np.arctan,
    "Sinh": np.sinh,
    "Cosh": np.cosh,
    "Tanh": np.tanh,
    "Asinh": np.arcsinh,
    "Acosh": np.arccosh,
    "Atanh": np.arctanh,
}


def _ufunc_kernel(ufunc: np.ufunc) -> KernelFn:
    @low_precision_in_float32
    def apply(ctx: KernelContext, x: np.ndarray) -> np.ndarray:
        return ufunc(x)

    return apply


for _op, _ufunc in _UFUNCS.items():
    kernel(_op)(_ufunc_kernel(_ufunc))


# --- Erf -------------------------------------------------------------------------------------------

# Below this |x| the series converges fast; above it the continued fraction does. With these term
# counts both reach float64 precision (~2e-15 relative) on their side of the split.
_ERF_SPLIT = 2.5
_ERF_SERIES_TERMS = 36
_ERFC_FRACTION_DEPTH = 40


def erf(x: np.ndarray) -> np.ndarray:
    """The error function, accurate to float64 precision, computed in float64."""
    x = np.asarray(x, dtype=np.float64)
    magnitude = np.abs(x)
    result = np.empty_like(magnitude)
    near = magnitude < _ERF_SPLIT
    result[near] = _erf_series(magnitude[near])
    result[~near] = 1.0 - _erfc_continued_fraction(magnitude[~near])
    return np.copysign(result, x)


def _erf_series(x: np.ndarray) -> np.ndarray:
    # erf(x) = 2/sqrt(pi) * exp(-x^2) * sum_k (2x^2)^k * x / (1*3*...*(2k+1)): all terms positive,
    # so unlike the Taylor series nothing cancels.
    two_x_squared = 2.0 * x * x
    term = x.copy()
    total = x.copy()
    for k in range(1, _ERF_SERIES_TERMS):
        term *= two_x_squared / (2 * k + 1)
        total += term
    return (2.0 / math.sqrt(math.pi)) * np.exp(-x * x) * total


def _erfc_continued_fraction(x: np.ndarray) -> np.ndarray:
    # erfc(x) = exp(-x^2)/sqrt(pi) / (x + (1/2)/(x + 1/(x + (3/2)/(x + ...)))), evaluated bottom-up.
    denominator = x.copy()
    for k in range(_ERFC_FRACTION_DEPTH, 0, -1):
        denominator = x + (k / 2) / denominator
    return np.exp(-x * x) / (math.sqrt(math.pi) * denominator)


@kernel("Erf")
@low_precision_in_float32
def erf_kernel(ctx: KernelContext, x: np.ndarray) -> np.ndarray:
    return erf(x)


# --- Activations -----------------------------------------------------------------------------------


def softplus(x: np.ndarray) -> np.ndarray:
    """log(1 + exp(x)) without overflowing exp for large x."""
    return np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))


@kernel("Sigmoid")
@low_precision_in_float32
def sigmoid_kernel(ctx: KernelContext, x: np.ndarray) -> np.ndarray:
    return sigmoid(x)


@kernel("Softplus")
@low_precision_in_float32
def softplus_kernel(ctx: KernelContext, x: np.ndarray) -> np.ndarray:
    return softplus(x)


@kernel("Softsign")
@low_precision_in_float32
def softsign(ctx: KernelContext, x: np.ndarray) -> np.ndarray:
    return x / (1 + np.abs(x))


@kernel("Relu")
@low_precision_in_float32
def relu(ctx: KernelContext, x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0)


@kernel("LeakyRelu")
@low_precision_in_float32
def leaky_relu(ctx: KernelContext, x: np.ndarray) -> np.ndarray:
    return np.where(x < 0, ctx.attr("alpha", 0.01) * x, x)


@kernel("PRelu")
@low_precision_in_float32
def prelu(ctx: KernelContext, x: np.ndarray, slope: np.ndarray) -> np.ndarray:
    if opset_before(ctx, 7) and slope.ndim == 1 and slope.size > 1 and x.ndim >= 2:
        # Before opset 7 a non-scalar slope held one value per channel (axis 1).
        slope = slope.reshape((-1,) + (1,) * (x.ndim - 2))
    return np.where(x < 0, slope * x, x)


@kernel("ThresholdedRelu")
@low_precision_in_float32
def thresholded_relu(ctx: KernelContext, x: np.ndarray) -> np.ndarray:
    return np.where(x > ctx.attr("alpha", 1.0), x, 0)


@kernel("Elu")
@low_precision_in_float32
def elu(ctx: KernelContext, x: np.ndarray) -> np.ndarray:
    return np.where(x < 0, ctx.attr("alpha", 1.0) * np.expm1(np.minimum(x, 0)), x)


@kernel("Selu")
@low_precision_in_float32
def selu(ctx: KernelContext, x: np.ndarray) -> np.ndarray:
    alpha = ctx.attr("alpha", 1.67326319217681884765625)
    gamma = ctx.attr("gamma", 1.05070102214813232421875)
    return gamma * np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0)))


@kernel("Celu")
@low_precision_in_float32
def celu(ctx: KernelContext, x: np.ndarray) -> np.ndarray:
    alpha = ctx.attr("alpha", 1.0)
    return np.maximum(x, 0) + np.minimum(0, alpha * np.expm1(np.minimum(x, 0) / alpha))


@kernel("HardSigmoid")
@low_precision_in_float32
def hard_sigmoid(ctx: KernelContext, x: np.ndarray) -> np.ndarray:
    return np.clip(ctx.attr("alpha", 0.2) * x + ctx.attr("beta", 0.5), 0, 1)


@kernel("HardSwish")
@low_precision_in_float32
def hard_swish(ctx: KernelContext, x: np.ndarray) -> np.ndarray:
    return x * np.clip(x / 6 + 0.5, 0, 1)


@kernel("Shrink")
@low_precision_in_float32
def shrink(ctx: KernelContext, x: np.ndarray) -> np.ndarray:
    bias = ctx.attr("bias", 0.0)
    lambd = ctx.attr("lambd", 0.5)
    return np.where(x < -lambd, x + bias, np.where(x > lambd, x - bias, 0))


@kernel("Swish")
@low_precision_in_float32
def swish(ctx: KernelContext, x: np.ndarray) -> np.ndarray:
    return x * sigmoid(ctx.attr("alpha", 1.0) * x)


@kernel("Mish")
@low_precision_in_float32
def mish(ctx: KernelContext, x: np.ndarray) -> np.ndarray:
    return x * np.tanh(softplus(x))


@kernel("Gelu")
@low_precision_in_float32
def gelu(ctx: KernelContext, x: np.ndarray) -> np.ndarray:
    approximate = ctx.attr("approximate", "none")
    if approximate == "none":
        return 0.5 * x * (1 + erf(x / math.sqrt(2)))
    if approximate == "tanh":
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    raise ValueError(f"Gelu: approximate must be 'none' or 'tanh', got {approximate!r}")


@kernel("Clip")
@low_precision_in_float32
def clip(
    ctx: KernelContext, x: np.ndarray, low: np.ndarray | None = None, high: np.ndarray | None = None
) -> np.ndarray:
    if opset_before(ctx, 11):  # the bounds were attributes
        low, high = ctx.attr("min"), ctx.attr("max")
    # Not np.clip: min > max must give max everywhere, and a missing bound means no bound.
    if low is not None:
        x = np.maximum(x, low)
    if high is not None:
        x = np.minimum(x, high)
    return x


# --- Predicates ------------------------------------------------------------------------------------


@kernel("IsNaN")
def is_nan(ctx: KernelContext, x: np.ndarray) -> np.ndarray:
    return np.isnan(widen_low_precision(x))


@kernel("IsInf")
def is_inf(ctx: KernelContext, x: np.ndarray) -> np.ndarray:
    x = widen_low_precision(x)
    detected = np.where(x > 0, bool(ctx.attr("detect_positive", 1)), bool(ctx.attr("detect_negative", 1)))
    return np.isinf(x) & detected


@kernel("Binarizer", domain="ai.onnx.ml")
def binarizer(ctx: KernelContext, x: np.ndarray) -> np.ndarray:
    return (x > ctx.attr("threshold", 0.0)).astype(x.dtype)
