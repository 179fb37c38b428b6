"""Pooling: AveragePool, MaxPool, LpPool, their Global forms, MaxUnpool, MaxRoiPool.

MaxPool and AveragePool loop over window taps (`conv.window_taps`), folding each tap's slice of
the padded input into a preallocated output; padded cells hold a value the reduction ignores,
and AveragePool divides by the count of cells each window counts. LpPool and MaxPool's indices
reduce whole windows of `conv.sliding_windows` instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from lpuc.kernels._common import accumulation_dtype, integer_range, ints
from lpuc.kernels.conv import conv_output_shape, sliding_windows, window_attrs, window_taps
from lpuc.kernels.registry import KernelContext, kernel


def _kernel_shape(ctx: KernelContext) -> list[int]:
    kernel_shape = ctx.attr("kernel_shape")
    if not kernel_shape:
        raise ValueError(f"{ctx.op_type}: kernel_shape is required")
    return list(kernel_shape)


@dataclass(frozen=True)
class _Windows:
    """Window geometry of one pooling node."""

    spatial: tuple[int, ...]
    kernel_shape: list[int]
    strides: list[int]
    pads: list[int]
    dilations: list[int]
    output_shape: list[int]

    @classmethod
    def of(cls, ctx: KernelContext, x: np.ndarray) -> _Windows:
        kernel_shape = _kernel_shape(ctx)
        spatial = x.shape[2:]
        strides, pads, dilations = window_attrs(ctx, spatial, kernel_shape)
        ceil_mode = bool(ctx.attr("ceil_mode", 0))
        out = conv_output_shape(spatial, kernel_shape, strides, pads, dilations, ceil_mode, ctx.op_type)
        return cls(spatial, kernel_shape, strides, pads, dilations, out)

    def cells(self, x: np.ndarray, fill: float = 0, pads: Sequence[int] | None = None) -> np.ndarray:
        """[N, C, *out, prod(kernel)]: the cells of every window of x, padding set to `fill`."""
        pads = self.pads if pads is None else pads
        view = sliding_windows(
            x, self.kernel_shape, self.strides, pads, self.dilations, self.output_shape, fill
        )
        return view.reshape(*view.shape[: 2 + len(self.spatial)], -1)

    def taps(
        self, x: np.ndarray, fill: float = 0
    ) -> tuple[list[np.ndarray], Callable[[np.ndarray], np.ndarray]]:
        """`conv.window_taps` of this node: per tap a view of the cells it reads, padding `fill`."""
        return window_taps(
            x, self.kernel_shape, self.strides, self.pads, self.dilations, self.output_shape, fill
        )

    def count(self, include_pads: bool) -> np.ndarray:
        """[*out] cells each window counts (see `counted`): a box window's count is the product of
        its per-axis counts."""
        rank = len(self.spatial)
        total = np.ones((), dtype=np.int64)
        for i, (size, k, s, d, o) in enumerate(
            zip(self.spatial, self.kernel_shape, self.strides, self.dilations, self.output_shape, strict=True)
        ):
            begin, end = self.pads[i], self.pads[rank + i]
            low, high = (-begin, size + end) if include_pads else (0, size)
            cell = (np.arange(o) * s - begin)[:, None] + np.arange(k) * d
            per_axis = ((cell >= low) & (cell < high)).sum(axis=1)
            total = total * per_axis.reshape([-1 if j == i else 1 for j in range(rank)])
        return total

    def counted(self, include_pads: bool) -> np.ndarray:
        """[1, 1, *out, prod(kernel)] mask of the cells an average counts: those on the input, and
        with `include_pads` those on the explicit pads too (never ceil_mode's overhang)."""
        if not include_pads:
            return self.cells(np.ones((1, 1, *self.spatial), dtype=bool), False)
        rank = len(self.spatial)
        padded = [n + self.pads[i] + self.pads[rank + i] for i, n in enumerate(self.spatial)]
        return self.cells(np.ones((1, 1, *padded), dtype=bool), False, pads=[0] * (2 * rank))


def _lowest(dtype: np.dtype) -> float:
    bounds = integer_range(dtype)
    return -np.inf if bounds is None else bounds[0]


@kernel("AveragePool")
def average_pool(ctx: KernelContext, x):
    windows = _Windows.of(ctx, x)
    work = accumulation_dtype(x.dtype)
    views, finish = windows.taps(x)
    total = np.zeros_like(views[0], dtype=work)  # the views' layout: contiguous folds
    for view in views:  # summed in the accumulation dtype, no widened copy of x
        np.add(total, view, out=total)
    total = finish(total)
    count = windows.count(bool(ctx.attr("count_include_pad", 0)))
    return (total / count.astype(work)).astype(x.dtype)


def _lp_norm(values: np.ndarray, p: float, axis) -> np.ndarray:
    return np.sum(np.abs(values) ** p, axis=axis) ** (1.0 / p)


@kernel("LpPool")
def lp_pool(ctx: KernelContext, x):
    windows = _Windows.of(ctx, x)
    work = accumulation_dtype(x.dtype)
    return _lp_norm(windows.cells(x.astype(work, copy=False)), ctx.attr("p", 2), axis=-1).astype(x.dtype)


@kernel("MaxPool")
def max_pool(ctx: KernelContext, x):
    windows = _Windows.of(ctx, x)
    if ctx.num_outputs < 2:
        (first, *rest), finish = windows.taps(x, _lowest(x.dtype))
        y = first.copy(order="K")  # the views' layout: contiguous folds
        for view in rest:  # np.maximum propagates NaN as max over the window does
            np.maximum(y, view, out=y)
        return finish(y)
    cells = windows.cells(x, _lowest(x.dtype))
    y = cells.max(axis=-1)
    # Indices: the first cell on the input holding the max (or a NaN, which max propagates),
    # flattened over the whole input [N, C, *spatial]; storage_order=1 flattens the spatial
    # axes column-major.
    on_input = windows.counted(include_pads=False)
    tap = (((cells == y[..., None]) | (cells != cells)) & on_input).argmax(axis=-1)
    rank = len(windows.spatial)
    taps = np.unravel_index(tap, windows.kernel_shape)
    coords = []
    for i in range(rank):
        start = np.arange(windows.output_shape[i]) * windows.strides[i] - windows.pads[i]
        coords.append(
            start.reshape([-1 if j == i else 1 for j in range(rank)]) + taps[i] * windows.dilations[i]
        )
    order = "F" if ctx.attr("storage_order", 0) else "C"
    position = np.ravel_multi_index(coords, windows.spatial, order=order)
    plane = np.arange(x.shape[0] * x.shape[1]).reshape(x.shape[0], x.shape[1], *([1] * rank))
    return y, (plane * math.prod(windows.spatial) + position).astype(np.int64)


def _spatial_axes(x: np.ndarray) -> tuple[int, ...]:
    return tuple(range(2, x.ndim))


@kernel("GlobalAveragePool")
def global_average_pool(ctx: KernelContext, x):
    work = accumulation_dtype(x.dtype)
    return np.mean(x.astype(work, copy=False), axis=_spatial_axes(x), keepdims=True).astype(x.dtype)


@kernel("GlobalMaxPool")
def global_max_pool(ctx: KernelContext, x):
    return np.max(x, axis=_spatial_axes(x), keepdims=True)


@kernel("GlobalLpPool")
def global_lp_pool(ctx: KernelContext, x):
    work = accumulation_dtype(x.dtype)
    y = _lp_norm(x.astype(work, copy=False), ctx.attr("p", 2), axis=_spatial_axes(x))
    return y.reshape(*x.shape[:2], *([1] * (x.ndim - 2))).astype(x.dtype)


@kernel("MaxUnpool")
def max_unpool(ctx: KernelContext, x, indices, output_shape=None):
    rank = x.ndim - 2
    kernel_shape = _kernel_shape(ctx)
    strides = ctx.attr("strides") or [1] * rank
    pads = ctx.attr("pads") or [0] * (2 * rank)
    # The shape MaxPool's input is inferred to have had: the indices address it, flattened.
    pooled_from = [
        (n - 1) * s + k - pads[i] - pads[rank + i]
        for i, (n, s, k) in enumerate(zip(x.shape[2:], strides, kernel_shape, strict=True))
    ]
    target = list(x.shape[:2]) + pooled_from if output_shape is None else ints(output_shape)
    if len(target) != x.ndim or any(t < p for t, p in zip(target[2:], pooled_from, strict=True)):
        raise ValueError(f"MaxUnpool: output_shape {target} is smaller than the unpooled shape {pooled_from}")
    y = np.zeros(target, dtype=x.dtype)
    flat = indices.reshape(-1)
    if flat.size and not 0 <= flat.min() <= flat.max() < math.prod(x.shape[:2]) * math.prod(pooled_from):
        raise ValueError(f"MaxUnpool: indices out of range for the unpooled shape {pooled_from}")
    # Like ONNX's reference: indices address the inferred shape, placed at the output's origin.
    coords = np.unravel_index(flat, (*x.shape[:2], *pooled_from))
    y[coords] = x.reshape(-1)
    return y


@kernel("MaxRoiPool")
def max_roi_pool(ctx: KernelContext, x, rois):
    pooled = ctx.attr("pooled_shape")
    if not pooled or len(pooled) != 2:
        raise ValueError("MaxRoiPool: pooled_shape must give (height, width)")
    scale = ctx.attr("spatial_scale", 1.0)
    height, width = x.shape[2:]
    lowest = _lowest(x.dtype)
    y = np.zeros((rois.shape[0], x.shape[1], *pooled), dtype=x.dtype)
    for r, roi in enumerate(rois.astype(np.float64)):
        # RoI corners are rounded half away from zero, as Caffe does.
        x0, y0, x1, y1 = (np.sign(v) * np.floor(np.abs(v) * scale + 0.5) for v in roi[1:])
        rows = _bin_masks(y0, y1, pooled[0], height)
        cols = _bin_masks(x0, x1, pooled[1], width)
        image = x[int(roi[0])]
        # A bin's max is the max over its rows of the max over its columns.
        by_col = np.where(cols[None, None], image[:, :, None, :], lowest).max(axis=-1)  # [C, H, PW]
        by_bin = np.where(rows[None, :, :, None], by_col[:, None], lowest).max(axis=2)  # [C, PH, PW]
        empty = ~rows.any(axis=1)[:, None] | ~cols.any(axis=1)[None, :]
        y[r] = np.where(empty, 0, by_bin)
    return y


def _bin_masks(start: float, end: float, bins: int, size: int) -> np.ndarray:
    """[bins, size] mask of the pixels each RoI bin covers along one axis (Caffe's rule)."""
    bin_size = max(end - start + 1, 1.0) / bins
    index = np.arange(bins)
    lo = np.clip(np.floor(index * bin_size) + start, 0, size)
    hi = np.clip(np.ceil((index + 1) * bin_size) + start, 0, size)
    pixel = np.arange(size)
    return (pixel >= lo[:, None]) & (pixel < hi[:, None])
