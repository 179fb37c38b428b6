"""Sampling at fractional positions: GridSample, AffineGrid, RoiAlign.

`sample_at` (N-d nearest / linear / cubic interpolation with zeros, border or reflection padding)
is shared with DeformConv.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

from lpuc.kernels._common import accumulation_dtype, opset_before
from lpuc.kernels.registry import KernelContext, kernel

_CUBIC_ALPHA = -0.75
# GridSample-16 names of the modes GridSample-20 calls linear / cubic.
_LEGACY_MODES = {"bilinear": "linear", "bicubic": "cubic"}
# Input pixels a sample reads along one axis, relative to floor(coordinate).
_TAP_OFFSETS = {"nearest": (0,), "linear": (0, 1), "cubic": (-1, 0, 1, 2)}
_PADDING_MODES = ("zeros", "border", "reflection")


def _working_dtype(dtype: np.dtype) -> np.dtype:
    """Interpolation weights are fractional: integer inputs are computed in float64."""
    return np.promote_types(accumulation_dtype(dtype), np.float32)


def _reflect(coord: np.ndarray, low: float, high: float) -> np.ndarray:
    """Mirror `coord` back and forth between `low` and `high` until it lies inside."""
    span = high - low
    if span <= 0:
        return np.full_like(coord, low)
    phase = np.mod(coord - low, 2 * span)
    return low + np.where(phase > span, 2 * span - phase, phase)


def _cubic_weight(distance: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel (alpha = -0.75)."""
    d = np.abs(distance)
    a = _CUBIC_ALPHA
    near = ((a + 2) * d - (a + 3)) * d * d + 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return np.where(d <= 1, near, np.where(d < 2, far, 0))


def _axis_taps(coord: np.ndarray, size: int, mode: str, padding: str, align_corners: bool):
    """[(index, weight)] of the input pixels along one axis that a sample at `coord` reads."""
    # Valid continuous range: pixel centers with align_corners, pixel edges without.
    low, high = (0.0, size - 1.0) if align_corners else (-0.5, size - 0.5)
    if mode == "nearest":
        coord = np.rint(coord)  # ties to even, as the spec requires
    if padding == "border":
        coord = np.where((coord < low) | (coord > high), np.clip(coord, 0, size - 1), coord)
    elif padding == "reflection":
        coord = _reflect(coord, low, high)
    base = np.floor(coord)
    taps = []
    for offset in _TAP_OFFSETS[mode]:
        index = base + offset
        if mode == "nearest":
            weight = np.ones_like(coord)
        elif mode == "linear":
            weight = 1 - np.abs(coord - index)
        else:
            weight = _cubic_weight(coord - index)
        if padding == "zeros":
            weight = np.where((index >= 0) & (index <= size - 1), weight, 0)
        elif padding == "reflection":
            index = np.trunc(_reflect(index, low, high))
        taps.append((np.clip(index, 0, size - 1).astype(np.intp), weight))
    return taps


def sample_at(
    x: np.ndarray,
    coords: Sequence[np.ndarray],
    mode: str = "linear",
    padding: str = "zeros",
    align_corners: bool = False,
) -> np.ndarray:
    """Interpolate x [N, C, *S] at pixel coordinates `coords` (one array [N, *P] per spatial axis,
    in tensor order); returns [N, C, *P] in the working dtype (float).

    mode: nearest | linear | cubic (separable, N-d). padding: zeros | border | reflection, decides
    what out-of-range coordinates read; align_corners sets the range reflection and border use.
    """
    work = _working_dtype(x.dtype)
    x = x.astype(work, copy=False)
    spatial = x.shape[2:]
    taps = [
        _axis_taps(c, size, mode, padding, align_corners) for c, size in zip(coords, spatial, strict=True)
    ]
    batch = np.arange(x.shape[0]).reshape((-1,) + (1,) * (coords[0].ndim - 1))
    out = np.zeros(coords[0].shape + (x.shape[1],), dtype=work)
    # One gather per combination of taps across axes (at most 4**rank of them).
    for combo in itertools.product(*taps):
        weight = np.prod([w for _, w in combo], axis=0)
        out += x[(batch, slice(None), *(i for i, _ in combo))] * weight[..., None].astype(work)
    return np.moveaxis(out, -1, 1)


def _unnormalize(grid: np.ndarray, size: int, align_corners: bool) -> np.ndarray:
    """[-1, 1] -> pixel coordinates."""
    if align_corners:
        return (grid + 1) / 2 * (size - 1)
    return ((grid + 1) * size - 1) / 2


@kernel("GridSample")
def grid_sample(ctx: KernelContext, x, grid):
    mode = ctx.attr("mode", "linear")
    mode = _LEGACY_MODES.get(mode, mode)
    padding = ctx.attr("padding_mode", "zeros")
    align_corners = bool(ctx.attr("align_corners", 0))
    if mode not in _TAP_OFFSETS or padding not in _PADDING_MODES:
        raise ValueError(f"GridSample: unsupported mode {mode!r} / padding_mode {padding!r}")
    spatial = x.shape[2:]
    if grid.shape[-1] != len(spatial):
        raise ValueError(f"GridSample: grid's last dimension {grid.shape[-1]} != spatial rank {len(spatial)}")
    work = grid.astype(_working_dtype(grid.dtype))
    # The grid lists coordinates innermost axis first (x, y, z).
    coords = [
        _unnormalize(work[..., len(spatial) - 1 - i], size, align_corners) for i, size in enumerate(spatial)
    ]
    y = sample_at(x, coords, mode, padding, align_corners)
    if x.dtype.kind in "iu":
        y = np.rint(y)
    return y.astype(x.dtype)


@kernel("AffineGrid")
def affine_grid(ctx: KernelContext, theta, size):
    spatial = [int(s) for s in size[2:]]
    align_corners = bool(ctx.attr("align_corners", 0))
    work = _working_dtype(theta.dtype)
    # Pixel centers in [-1, 1]: the extremes are the corner pixels' centers with align_corners,
    # their outer edges without.
    if align_corners:
        axes = [np.linspace(-1, 1, n) for n in spatial]
    else:
        axes = [(2 * np.arange(n) + 1) / n - 1 for n in spatial]
    # Homogeneous positions (x, y[, z], 1), innermost axis first: [prod(spatial), rank + 1].
    mesh = np.meshgrid(*axes, indexing="ij")
    points = np.stack([m.reshape(-1) for m in reversed(mesh)] + [np.ones(math.prod(spatial))], axis=-1)
    grid = np.matmul(points.astype(work), np.swapaxes(theta.astype(work), 1, 2))
    return grid.reshape(theta.shape[0], *spatial, len(spatial)).astype(theta.dtype)


def _roi_axis_taps(start: float, length: float, pooled: int, grid: int, size: int):
    """Indices [pooled * grid * 2] and weights [pooled, grid * 2] of RoiAlign's bilinear samples
    along one axis: `grid` regularly spaced samples per bin, two neighbours per sample."""
    bin_size = length / pooled
    pos = start + np.arange(pooled)[:, None] * bin_size + (np.arange(grid)[None, :] + 0.5) * bin_size / grid
    # Samples more than one pixel outside contribute nothing; the rest clamp to the border.
    inside = (pos >= -1.0) & (pos <= size)
    pos = np.clip(pos, 0, size - 1)
    low = np.floor(pos)
    frac = (pos - low) * inside
    weights = np.stack([inside - frac, frac], axis=-1).reshape(pooled, grid * 2)
    indices = np.stack([low, np.minimum(low + 1, size - 1)], axis=-1).astype(np.intp).reshape(-1)
    return indices, weights


@kernel("RoiAlign")
def roi_align(ctx: KernelContext, x, rois, batch_indices):
    mode = ctx.attr("mode", "avg")
    if mode not in ("avg", "max"):
        raise ValueError(f"RoiAlign: unsupported mode {mode!r}")
    # Before opset 16 the op had no pixel shift (today's 'output_half_pixel').
    default_transform = "output_half_pixel" if opset_before(ctx, 16) else "half_pixel"
    transform = ctx.attr("coordinate_transformation_mode", default_transform)
    if transform not in ("half_pixel", "output_half_pixel"):
        raise ValueError(f"RoiAlign: unsupported coordinate_transformation_mode {transform!r}")
    shift = 0.5 if transform == "half_pixel" else 0.0
    pooled_h, pooled_w = ctx.attr("output_height", 1), ctx.attr("output_width", 1)
    sampling_ratio = ctx.attr("sampling_ratio", 0)
    scale = ctx.attr("spatial_scale", 1.0)
    work = _working_dtype(x.dtype)
    height, width = x.shape[2:]
    y = np.zeros((rois.shape[0], x.shape[1], pooled_h, pooled_w), dtype=work)
    for r, (roi, b) in enumerate(zip(rois.astype(np.float64), batch_indices, strict=True)):
        x0, y0, x1, y1 = roi * scale - shift
        roi_w, roi_h = x1 - x0, y1 - y0
        if transform == "output_half_pixel":  # legacy: RoIs are at least one pixel
            roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
        grid_h = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_h / pooled_h)
        grid_w = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_w / pooled_w)
        if grid_h <= 0 or grid_w <= 0:  # an empty RoI has no samples: its output stays 0
            continue
        rows, row_w = _roi_axis_taps(y0, roi_h, pooled_h, grid_h, height)
        cols, col_w = _roi_axis_taps(x0, roi_w, pooled_w, grid_w, width)
        # [C, pooled_h, grid_h * 2, pooled_w, grid_w * 2]: every sample's weighted neighbours.
        taps = x[int(b)][:, rows[:, None], cols[None, :]].astype(work)
        taps = taps.reshape(x.shape[1], pooled_h, grid_h * 2, pooled_w, grid_w * 2)
        taps = taps * row_w[None, :, :, None, None] * col_w[None, None, None, :, :]
        if mode == "avg":
            y[r] = taps.sum(axis=(2, 4)) / (grid_h * grid_w)
        else:  # like onnxruntime: the max of the weighted neighbours, not of interpolated values
            y[r] = taps.max(axis=(2, 4))
    return y.astype(x.dtype)
