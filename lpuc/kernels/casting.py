"""Kernels that pass values through or change only their type: Cast, CastLike, BitCast, Identity, Dropout."""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np

from lpuc.kernels._common import onnx_dtype, opset_before
from lpuc.kernels.registry import KernelContext, kernel

# Float 8 types whose out-of-range values the `saturate` attribute clamps to the largest finite value.
_SATURATING_FLOAT8 = frozenset(
    np.dtype(t)
    for t in (
        ml_dtypes.float8_e4m3fn,
        ml_dtypes.float8_e4m3fnuz,
        ml_dtypes.float8_e5m2,
        ml_dtypes.float8_e5m2fnuz,
    )
)
_E8M0 = np.dtype(ml_dtypes.float8_e8m0fnu)
_E8M0_BIAS = 127
_E8M0_NAN = 0xFF
_E8M0_MAX = 0xFE  # the largest exponent field, 2**127
_STRING = np.dtype(object)


def cast(x: np.ndarray, to: np.dtype, saturate: bool = True, round_mode: str = "up") -> np.ndarray:
    """ONNX Cast of `x` to dtype `to`, including the float 8 `saturate` and `round_mode` rules."""
    if x.dtype == to:
        return x
    if to == _STRING:
        return x.astype(str).astype(object)
    if x.dtype == _STRING:
        return x.astype(str).astype(to)
    if to == _E8M0:
        return _to_e8m0(x, saturate, round_mode)
    if to in _SATURATING_FLOAT8:
        # float64 holds every narrower float and every in-range integer exactly, so the only
        # rounding is ml_dtypes' round-to-nearest-even into float 8.
        wide = x.astype(np.float64)
        if saturate:
            largest = float(ml_dtypes.finfo(to).max)
            wide = np.clip(wide, -largest, largest)
        return wide.astype(to)
    if x.dtype.kind == "V":
        # ml_dtypes types (bfloat16, float 8, int4...) widen exactly to float32, which numpy and
        # ml_dtypes can cast to any target.
        x = x.astype(np.float32)
    with np.errstate(invalid="ignore", over="ignore"):  # NaN/inf/out-of-range to int: undefined
        return x.astype(to)


def _to_e8m0(x: np.ndarray, saturate: bool, round_mode: str) -> np.ndarray:
    # E8M0 stores only a biased power-of-two exponent. frexp gives |x| = m * 2**e with m in
    # [0.5, 1), i.e. 2**(e - 1) times a significand 2m in [1, 2) that decides the rounding.
    magnitude = np.abs(x.astype(np.float64))
    significand, exponent = np.frexp(magnitude)
    significand = 2 * significand
    if round_mode == "up":
        exponent = exponent + (significand > 1)
    elif round_mode == "nearest":
        exponent = exponent + (significand >= 1.5)  # ties round up
    elif round_mode != "down":
        raise ValueError(f"Cast: round_mode must be 'up', 'down' or 'nearest', got {round_mode!r}")
    field = np.where(magnitude == 0, -1, exponent.astype(np.int64) - 1 + _E8M0_BIAS)  # 0: below 2**-127
    if saturate:
        field = np.where(np.isinf(magnitude), _E8M0_MAX, np.clip(field, 0, _E8M0_MAX))
    else:
        representable = np.isfinite(magnitude) & (field >= 0) & (field <= _E8M0_MAX)
        field = np.where(representable, field, _E8M0_NAN)
    field = np.where(np.isnan(magnitude), _E8M0_NAN, field)
    return field.astype(np.uint8).view(_E8M0)


@kernel("Cast")
def cast_kernel(ctx: KernelContext, x: np.ndarray) -> np.ndarray:
    return cast(x, onnx_dtype(ctx.attr("to")), bool(ctx.attr("saturate", 1)), ctx.attr("round_mode", "up"))


@kernel("CastLike")
def cast_like(ctx: KernelContext, x: np.ndarray, target: np.ndarray) -> np.ndarray:
    return cast(x, target.dtype, bool(ctx.attr("saturate", 1)), ctx.attr("round_mode", "up"))


def _bit_width(dtype: np.dtype) -> int:
    if dtype.kind == "V":  # ml_dtypes store their 2-, 4- and 6-bit types one per byte
        info = ml_dtypes.iinfo if "int" in dtype.name else ml_dtypes.finfo
        return info(dtype).bits
    return dtype.itemsize * 8


@kernel("BitCast")
def bit_cast(ctx: KernelContext, x: np.ndarray) -> np.ndarray:
    to = onnx_dtype(ctx.attr("to"))
    if _STRING in (x.dtype, to) or _bit_width(x.dtype) != _bit_width(to):
        raise ValueError(f"BitCast: cannot reinterpret {x.dtype} as {to} (bit widths must match, no strings)")
    # numpy stores values in native (little-endian on every supported host) byte order, as ONNX requires.
    if to == np.bool_:
        return x.view(np.uint8) != 0  # any nonzero byte is true
    return x.view(to)


@kernel("Identity")
def identity(ctx: KernelContext, x: Any) -> Any:
    return x  # also sequences and optionals (opset 14+), passed through untouched


@kernel("Dropout", deterministic=False)
def dropout(
    ctx: KernelContext,
    x: np.ndarray,
    ratio: np.ndarray | None = None,
    training_mode: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Identity at inference; with training on, zero a random `ratio` of values and rescale the rest.

    Not deterministic: unseeded training-mode dropout must not be folded into a constant.
    """
    if opset_before(ctx, 12):
        ratio = ctx.attr("ratio", 0.5)
        # Before opset 7 dropout was on unless is_test was set; from 7 to 11 it was always off.
        training = ctx.opset < 7 and not ctx.attr("is_test", 0)
    else:
        ratio = 0.5 if ratio is None else float(ratio)
        training = training_mode is not None and bool(training_mode)
    # The mask had the data's type before opset 10.
    mask_dtype = x.dtype if opset_before(ctx, 10) else np.dtype(bool)
    if not training or ratio == 0:
        return x, np.ones(x.shape, dtype=mask_dtype)
    keep = np.random.RandomState(ctx.attr("seed")).random_sample(x.shape) >= ratio
    scale = 1.0 / (1.0 - ratio) if ratio < 1 else 0.0
    return np.where(keep, x * scale, 0).astype(x.dtype), keep.astype(mask_dtype)
