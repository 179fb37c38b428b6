"""Resize and Upsample.

Every interpolation mode ONNX defines is separable, so an N-D resize is a chain of 1-D resizes, one
per axis. Along one axis, each output position maps to a source coordinate (the coordinate
transformation mode), and reads either the nearest source element or a small window of "taps"
weighted by a linear or cubic filter. Taps outside the input repeat the edge element, as ONNX
specifies, unless `exclude_outside` drops them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from lpuc.kernels._common import ints, normalize_axes, opset_before
from lpuc.kernels.registry import KernelContext, kernel

Rounding = Callable[[np.ndarray], np.ndarray]

# nearest_mode -> how a fractional source coordinate becomes an index.
_NEAREST_ROUNDING: dict[str, Rounding] = {
    "round_prefer_floor": lambda c: np.ceil(c - 0.5),
    "round_prefer_ceil": lambda c: np.floor(c + 0.5),
    "floor": np.floor,
    "ceil": np.ceil,
}

_COORDINATE_MODES = (
    "half_pixel",
    "half_pixel_symmetric",
    "pytorch_half_pixel",
    "align_corners",
    "asymmetric",
    "tf_crop_and_resize",
)


@dataclass(frozen=True)
class ResizeOptions:
    mode: str  # "nearest", "linear" or "cubic"
    coordinates: str  # coordinate_transformation_mode
    nearest_mode: str = "round_prefer_floor"
    cubic_coeff_a: float = -0.75
    exclude_outside: bool = False  # filters only: nearest always reads an input element
    antialias: bool = False
    extrapolation_value: float = 0.0
    # Resize-10 and Upsample leave rounding unspecified; onnxruntime floors when enlarging and
    # ceils when shrinking, and models of that era were exported against it.
    legacy_nearest: bool = False


@dataclass(frozen=True)
class AxisResize:
    """How one axis is resized: `scale` is the (possibly fractional) ratio output / input."""

    in_len: int
    out_len: int
    scale: float
    roi: tuple[float, float] = (0.0, 1.0)  # crop window, only read by tf_crop_and_resize

    def is_identity(self, coordinates: str) -> bool:
        uncropped = coordinates != "tf_crop_and_resize" or self.roi == (0.0, 1.0)
        return self.out_len == self.in_len and self.scale == 1.0 and uncropped


def source_coordinates(axis: AxisResize, coordinates: str) -> np.ndarray:
    """The input coordinate each output position samples (coordinate_transformation_mode)."""
    out = np.arange(axis.out_len, dtype=np.float64)
    in_len, scale = axis.in_len, axis.scale
    # align_corners and tf_crop_and_resize divide by the fractional output length in_len * scale, as
    # ONNX's node tests expect (onnxruntime uses out_len and fails test_resize_*_align_corners).
    target_len = in_len * scale
    if coordinates == "half_pixel":
        return (out + 0.5) / scale - 0.5
    if coordinates == "half_pixel_symmetric":
        offset = in_len / 2 * (1 - axis.out_len / target_len)
        return offset + (out + 0.5) / scale - 0.5
    if coordinates == "pytorch_half_pixel":
        return (out + 0.5) / scale - 0.5 if axis.out_len > 1 else np.zeros_like(out)
    if coordinates == "align_corners":
        return out * (in_len - 1) / (target_len - 1) if target_len != 1 else np.zeros_like(out)
    if coordinates == "asymmetric":
        return out / scale
    if coordinates == "tf_crop_and_resize":
        start, end = axis.roi
        if target_len == 1:
            return np.full_like(out, (start + end) / 2 * (in_len - 1))
        return start * (in_len - 1) + out * (end - start) * (in_len - 1) / (target_len - 1)
    raise ValueError(f"Resize: unsupported coordinate_transformation_mode {coordinates!r}")


def nearest_indices(coords: np.ndarray, axis: AxisResize, options: ResizeOptions) -> np.ndarray:
    if options.legacy_nearest:
        rounding = np.ceil if axis.scale < 1 else np.floor
    else:
        rounding = _NEAREST_ROUNDING[options.nearest_mode]
    return np.clip(rounding(coords), 0, axis.in_len - 1).astype(np.int64)


def _linear_filter(t: np.ndarray) -> np.ndarray:
    return np.maximum(1 - np.abs(t), 0)


def _cubic_filter(t: np.ndarray, a: float) -> np.ndarray:
    """Keys' cubic convolution kernel with coefficient `a`."""
    t = np.abs(t)
    near = ((a + 2) * t - (a + 3)) * t * t + 1
    far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
    return np.where(t <= 1, near, np.where(t < 2, far, 0.0))


def filter_taps(
    coords: np.ndarray, axis: AxisResize, options: ResizeOptions
) -> tuple[np.ndarray, np.ndarray]:
    """Source indices and weights, both [out_len, taps], of a linear or cubic filter.

    With antialias, a downscaling filter is stretched by 1 / scale so it covers every input
    element that falls under the output element.
    """
    radius = 1 if options.mode == "linear" else 2
    shrink = min(axis.scale, 1.0) if options.antialias else 1.0
    first = math.floor(-radius / shrink) + 1
    offsets = np.arange(first, 2 - first)  # symmetric window around the left neighbour
    left = np.floor(coords)
    indices = left.astype(np.int64)[:, None] + offsets
    distance = (offsets - (coords - left)[:, None]) * shrink
    if options.mode == "linear":
        weights = _linear_filter(distance)
    else:
        weights = _cubic_filter(distance, options.cubic_coeff_a)
    if options.exclude_outside:
        weights = np.where((indices < 0) | (indices >= axis.in_len), 0.0, weights)
    total = weights.sum(axis=1, keepdims=True)
    weights = weights / np.where(total == 0, 1.0, total)  # all-outside rows only occur when extrapolated
    return np.clip(indices, 0, axis.in_len - 1), weights


def _weighted_taps(data: np.ndarray, dim: int, indices: np.ndarray, weights: np.ndarray) -> np.ndarray:
    shape = [1] * data.ndim
    shape[dim] = -1
    total = np.zeros((), dtype=data.dtype)
    for tap in range(indices.shape[1]):
        total = total + np.take(data, indices[:, tap], axis=dim) * weights[:, tap].reshape(shape)
    return total


def _cast_back(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if values.dtype == dtype:
        return values
    if dtype.kind in "iu":  # interpolated integers round to nearest and saturate
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return values.astype(dtype)


def resize(x: np.ndarray, axes: list[AxisResize], options: ResizeOptions) -> np.ndarray:
    """Resize `x`, one `AxisResize` per dimension."""
    if options.mode not in ("nearest", "linear", "cubic"):
        raise ValueError(f"Resize: unsupported mode {options.mode!r}")
    if options.coordinates not in _COORDINATE_MODES:
        raise ValueError(f"Resize: unsupported coordinate_transformation_mode {options.coordinates!r}")
    if options.nearest_mode not in _NEAREST_ROUNDING:
        raise ValueError(f"Resize: unsupported nearest_mode {options.nearest_mode!r}")
    # Interpolation is computed in float64 so float32 results round once, at the end.
    data = x if options.mode == "nearest" else x.astype(np.float64)
    extrapolated = np.zeros((1,) * x.ndim, dtype=bool)
    for dim, axis in enumerate(axes):
        if axis.is_identity(options.coordinates):
            continue
        coords = source_coordinates(axis, options.coordinates)
        if options.mode == "nearest":
            data = np.take(data, nearest_indices(coords, axis, options), axis=dim)
        else:
            data = _weighted_taps(data, dim, *filter_taps(coords, axis, options))
        if options.coordinates == "tf_crop_and_resize":
            shape = [1] * x.ndim
            shape[dim] = -1
            extrapolated = extrapolated | ((coords < 0) | (coords > axis.in_len - 1)).reshape(shape)
    if extrapolated.any():
        data = np.where(extrapolated, options.extrapolation_value, data)
    return _cast_back(data, x.dtype)


def _plan_axes(ctx: KernelContext, x: np.ndarray, roi, scales, sizes) -> list[AxisResize]:
    """One AxisResize per dimension from Resize's roi/scales/sizes inputs and `axes` attribute."""
    listed = ctx.attr("axes")
    resized = tuple(range(x.ndim)) if listed is None else normalize_axes(listed, x.ndim)
    window = {a: (0.0, 1.0) for a in range(x.ndim)}
    if roi is not None and roi.size:
        bounds = [float(v) for v in roi.reshape(-1)]
        if len(bounds) != 2 * len(resized):
            raise ValueError(f"Resize: roi has {len(bounds)} values for {len(resized)} axes")
        window.update({a: (bounds[i], bounds[i + len(resized)]) for i, a in enumerate(resized)})
    scale = {a: 1.0 for a in range(x.ndim)}
    out_len = dict(enumerate(x.shape))
    if sizes is not None and sizes.size:
        wanted = ints(sizes)
        if len(wanted) != len(resized):
            raise ValueError(f"Resize: {len(wanted)} sizes for {len(resized)} axes")
        ratios = {a: wanted[i] / x.shape[a] for i, a in enumerate(resized)}
        policy = ctx.attr("keep_aspect_ratio_policy", "stretch")
        if policy == "stretch":
            scale.update(ratios)
            out_len.update(zip(resized, wanted, strict=True))
        elif policy in ("not_larger", "not_smaller"):
            common = min(ratios.values()) if policy == "not_larger" else max(ratios.values())
            scale.update({a: common for a in resized})
            out_len.update({a: math.floor(common * x.shape[a] + 0.5) for a in resized})
        else:
            raise ValueError(f"Resize: unsupported keep_aspect_ratio_policy {policy!r}")
    elif scales is not None and scales.size:
        factors = [float(s) for s in scales.reshape(-1)]
        if len(factors) != len(resized) or any(f <= 0 for f in factors):
            raise ValueError(f"Resize: scales {factors} do not fit {len(resized)} axes")
        scale.update(zip(resized, factors, strict=True))
        out_len.update({a: math.floor(f * x.shape[a]) for a, f in zip(resized, factors, strict=True)})
    else:
        raise ValueError("Resize: one of the scales or sizes inputs is required")
    return [AxisResize(x.shape[a], out_len[a], scale[a], window[a]) for a in range(x.ndim)]


def _legacy_resize(ctx: KernelContext, x: np.ndarray, scales: list[float]) -> np.ndarray:
    """Resize-10 and Upsample: scales only, asymmetric coordinates, nearest or linear."""
    if len(scales) != x.ndim or any(s <= 0 for s in scales):
        raise ValueError(f"{ctx.op_type}: scales {scales} do not fit input rank {x.ndim}")
    mode = ctx.attr("mode", "nearest")
    if mode not in ("nearest", "linear"):
        raise ValueError(f"{ctx.op_type}: unsupported mode {mode!r}")
    axes = [AxisResize(d, math.floor(d * s), s) for d, s in zip(x.shape, scales, strict=True)]
    return resize(x, axes, ResizeOptions(mode, "asymmetric", legacy_nearest=True))


@kernel("Resize")
def resize_kernel(
    ctx: KernelContext,
    x: np.ndarray,
    roi: np.ndarray | None = None,
    scales: np.ndarray | None = None,
    sizes: np.ndarray | None = None,
) -> np.ndarray:
    if opset_before(ctx, 11):  # Resize-10's inputs are (X, scales)
        return _legacy_resize(ctx, x, [float(s) for s in roi.reshape(-1)])
    options = ResizeOptions(
        mode=ctx.attr("mode", "nearest"),
        coordinates=ctx.attr("coordinate_transformation_mode", "half_pixel"),
        nearest_mode=ctx.attr("nearest_mode", "round_prefer_floor"),
        cubic_coeff_a=ctx.attr("cubic_coeff_a", -0.75),
        exclude_outside=bool(ctx.attr("exclude_outside", 0)),
        antialias=bool(ctx.attr("antialias", 0)),
        extrapolation_value=ctx.attr("extrapolation_value", 0.0),
    )
    return resize(x, _plan_axes(ctx, x, roi, scales, sizes), options)


@kernel("Upsample")
def upsample_kernel(ctx: KernelContext, x: np.ndarray, scales: np.ndarray | None = None) -> np.ndarray:
    if scales is None:
        factors = ctx.attr("scales")  # an attribute in opset 7
    else:
        factors = [float(s) for s in scales.reshape(-1)]
    if factors is None:
        raise ValueError("Upsample: scales are required")
    return _legacy_resize(ctx, x, factors)
