"""Sliding windows over a tensor's [rows, cols] view, one row slab of the result at a time.

A channels-last tensor [N, *spatial, C] is a [N * prod(spatial), C] matrix: one row per position.
A channels-first one [N, C, *spatial] is a [N * C * prod(spatial[:-1]), spatial[-1]] matrix: a
position's channels lie in rows prod(spatial) / spatial[-1] apart. An op that combines a window of
positions (Im2Col, pooling) computes the result rows [r0, r1) from the input rows its windows
touch, which lowering reads as a slab: so a convolution's columns (or a pooling's result) are
produced tile row by tile row, and the matmuls that read them start on the first rows instead of
waiting for the whole tensor.

Only explicit pads and ceil_mode 0 (what lower_conv and sink_transposes produce).
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from lpuc.kernels.conv import conv_output_shape

# A channels-first slab reads one row window per (image, channel) plane up to this many planes,
# beyond that one window spanning them all (an access per plane would hold too many ports).
MAX_PLANE_WINDOWS = 8


def _layout(in_shape: Sequence[int], channels_first: bool) -> tuple[int, list[int], int]:
    """(batch, spatial dims, channels) of the input."""
    dims = [int(d) for d in in_shape]
    return (dims[0], dims[2:], dims[1]) if channels_first else (dims[0], dims[1:-1], dims[-1])


def tap_rows(
    attrs: Mapping[str, Any], in_shape: Sequence[int], r0: int, r1: int, channels_first: bool = False
) -> np.ndarray:
    """For result rows [r0, r1) and each window tap: the input position it reads (n * prod(spatial)
    + the spatial offset, row-major), -1 in the padding. Shape [r1 - r0, taps]."""
    batch, spatial, _ = _layout(in_shape, channels_first)
    rank = len(spatial)
    kernel = [int(k) for k in attrs["kernel_shape"]]
    strides = [int(s) for s in attrs.get("strides") or [1] * rank]
    dilations = [int(d) for d in attrs.get("dilations") or [1] * rank]
    pads = [int(p) for p in attrs.get("pads") or [0] * 2 * rank]
    out = conv_output_shape(spatial, kernel, strides, pads, dilations)
    rows = np.arange(r0, r1)
    n, *pos = np.unravel_index(rows, [batch, *out])
    taps = np.unravel_index(np.arange(math.prod(kernel)), kernel)
    flat = n[:, None].astype(np.int64)
    valid = np.ones((len(rows), math.prod(kernel)), dtype=bool)
    for j in range(rank):
        p = pos[j][:, None] * strides[j] - pads[j] + taps[j][None, :] * dilations[j]
        valid &= (p >= 0) & (p < spatial[j])
        flat = flat * spatial[j] + p
    return np.where(valid, flat, -1)


def _view_cells(
    attrs: Mapping[str, Any], in_shape: Sequence[int], r0: int, r1: int, channels_first: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(positions [rows, taps] as tap_rows, view rows and view cols [rows, taps, C or 1]) of the
    input values the windows of result rows [r0, r1) read. Channels-last: a position is one view
    row (all its channels, col -1 meaning every lane)."""
    idx = tap_rows(attrs, in_shape, r0, r1, channels_first)
    if not channels_first:
        return idx, idx[..., None], np.full(idx.shape + (1,), -1)
    _, spatial, channels = _layout(in_shape, True)
    size, width = math.prod(spatial), spatial[-1]
    n, s = np.divmod(np.maximum(idx, 0), size)
    flat = (n[..., None] * channels + np.arange(channels)) * size + s[..., None]
    return idx, flat // width, flat % width


def halo_tiles(rows: int, step: int, halo: int) -> list[tuple[int, int]]:
    """The tiles of a halo layout (passes/row_taps): of a sequence of rows + halo rows, tile j holds
    rows [j * step, j * step + step + halo) (the last one fewer), so that a product's result rows
    [j * step, (j + 1) * step) find the rows they read up to `halo` rows further in one tile.
    Tile j starts at row j * (step + halo) of the layout."""
    return [(v0, min(v0 + step + halo, rows + halo)) for v0 in range(0, rows, step)]


def halo_index(rows: int, step: int, halo: int) -> np.ndarray:
    """The sequence's row each row of its halo layout holds."""
    return np.concatenate([np.arange(v0, v1) for v0, v1 in halo_tiles(rows, step, halo)])


def input_windows(
    attrs: Mapping[str, Any], in_shape: Sequence[int], r0: int, r1: int, channels_first: bool = False
) -> list[tuple[int, int]]:
    """The input view rows the windows of result rows [r0, r1) touch, as row ranges [i0, i1): one
    range, or (channels-first) one per (image, channel) plane, up to MAX_PLANE_WINDOWS of them."""
    idx, rows, _ = _view_cells(attrs, in_shape, r0, r1, channels_first)
    used = rows[idx >= 0]  # [cells, C or 1]
    if not used.size:
        return [(0, 1)]
    whole = [(int(used.min()), int(used.max()) + 1)]
    if not channels_first:
        return whole
    _, spatial, _ = _layout(in_shape, True)
    plane = used // math.prod(spatial[:-1])  # a plane's view rows are contiguous, planes in order
    planes = np.unique(plane)
    if len(planes) > MAX_PLANE_WINDOWS:
        return whole
    return [(int(used[plane == p].min()), int(used[plane == p].max()) + 1) for p in planes]


def input_row_runs(
    attrs: Mapping[str, Any], in_shape: Sequence[int], r0: int, r1: int, limit: int
) -> list[tuple[int, int]]:
    """The input view rows the windows of result rows [r0, r1) of a channels-last op touch, as runs
    [i0, i1) that skip only gaps of whole image rows (a 1x1 stride-2 window skips every other image
    row; within an image row, a run reads the row's positions in between too), or one range
    spanning them all when there are more than `limit` runs."""
    idx = tap_rows(attrs, in_shape, r0, r1)
    used = np.unique(idx[idx >= 0])
    if not used.size:
        return [(0, 1)]
    width = int(in_shape[-2]) if len(in_shape) >= 3 else 1  # positions per image row
    breaks = np.flatnonzero(np.diff(used) > width) + 1
    if len(breaks) >= limit:
        return [(int(used[0]), int(used[-1]) + 1)]
    starts = [0, *breaks.tolist()]
    ends = [*breaks.tolist(), len(used)]
    return [(int(used[a]), int(used[b - 1]) + 1) for a, b in zip(starts, ends)]


def input_rows(attrs: Mapping[str, Any], in_shape: Sequence[int], r0: int, r1: int) -> tuple[int, int]:
    """The input rows [i0, i1) the windows of result rows [r0, r1) of a channels-last op touch."""
    ((i0, i1),) = input_windows(attrs, in_shape, r0, r1)
    return i0, i1


def gather(x: np.ndarray, attrs: Mapping[str, Any], fill) -> np.ndarray:
    """Window values of a slab: x holds input view rows from attrs["slab"]["in_row0"] on ([rows,
    cols]); returns [out rows, taps, C] with `fill` in the padding. attrs["slab"]["channels_first"]
    says how the input's values lie in its view (module docstring)."""
    index, padding = _slab_index(attrs, len(x))
    # (np.take of whole rows: several times faster than x[index], the same values)
    values = x[index] if isinstance(index, tuple) else x.take(index, axis=0)
    if padding is not None:
        values[padding] = fill
    return values


def gather_max(x: np.ndarray, attrs: Mapping[str, Any], low) -> np.ndarray:
    """gather(x, attrs, low).max(axis=1), the same bits: numpy reduces the middle axis of the
    gathered [out rows, taps, C] by folding np.maximum over the taps in order (which NaN payload or
    zero sign wins depends on that order), which this does tap by tap without the copy. Not with
    fewer than 8 channels: there numpy reduces the taps as an inner axis, in another order (one
    channel measured; 2-32 matched, tests/kernels/test_fast_paths.py)."""
    if x.shape[-1] < 8:
        return gather(x, attrs, low).max(axis=1)
    index, padding = _slab_index(attrs, len(x))
    out = x.take(index[:, 0], axis=0)  # (take: faster than x[index[:, 0]], the same values)
    for t in range(index.shape[1]):
        if t:
            values = x.take(index[:, t], axis=0)
        if padding is not None and padding[:, t].any():
            (out if t == 0 else values)[padding[:, t]] = low
        if t:
            np.maximum(out, values, out=out)
    return out


def fold_taps(x: np.ndarray, attrs: Mapping[str, Any], fill) -> Iterator[np.ndarray] | None:
    """The values of gather(x, attrs, fill) tap by tap: [out rows, C] each, a new array, in tap
    order. Folding them computes what a fold over the gathered [out rows, taps, C] does, without
    building it (a copy nine times the result's size for 3x3 windows). None for channels-first
    slabs (their index is of (row, col) pairs)."""
    index, padding = _slab_index(attrs, len(x))
    if isinstance(index, tuple):
        return None
    return _taps(x, index, padding, fill)


def _taps(x: np.ndarray, index: np.ndarray, padding: np.ndarray | None, fill) -> Iterator[np.ndarray]:
    for t in range(index.shape[1]):
        values = x.take(index[:, t], axis=0)  # (faster than x[index[:, t]], or take's out=)
        if padding is not None:
            rows = padding[:, t]
            if rows.any():
                values[rows] = fill
        yield values


def shifted_taps(
    x: np.ndarray, attrs: Mapping[str, Any], fill, dtype: np.dtype
) -> tuple[list[np.ndarray], Callable[[np.ndarray], np.ndarray]] | None:
    """The values of fold_taps(x, attrs, fill) as views of one padded copy of the slab's image rows
    (in `dtype`): per tap a strided view [out image rows, out width, C] (the whole out image rows the
    result rows touch), and `crop`, which turns an array of that shape into the result rows
    [r1 - r0, C] (a contiguous view of it). crop(a copy of tap t's view) equals fold_taps' tap t.
    Copy a view, then compute on its cropped rows, not on the views: which NaN payload numpy's
    multiply, add or maximum returns depends on the operands' shapes (a [13, 12] by [12] product's
    last row differs from a [16, 12] one's), so the ops must run on arrays of the shapes they did.
    None unless a channels-last 2-D slab within one image (padding, and cells the slab does not
    hold, which only cropped-away results read, hold `fill`)."""
    slab = attrs["slab"]
    in_shape = [int(d) for d in slab["in_shape"]]
    if slab.get("channels_first", False) or len(in_shape) != 4 or x.ndim != 2:
        return None
    _, height, width, channels = in_shape
    kernel = [int(k) for k in attrs["kernel_shape"]]
    strides = [int(s) for s in attrs.get("strides") or [1, 1]]
    dilations = [int(d) for d in attrs.get("dilations") or [1, 1]]
    pads = [int(p) for p in attrs.get("pads") or [0] * 4]
    out_h, out_w = conv_output_shape([height, width], kernel, strides, pads, dilations)
    r0, r1 = (int(r) for r in slab["out_rows"])
    image, q0 = divmod(r0, out_h * out_w)
    q1 = r1 - image * out_h * out_w
    if r1 <= r0 or q1 > out_h * out_w:
        return None  # (rows of more than one image: padding between them)
    oh0, oh1 = q0 // out_w, (q1 - 1) // out_w + 1
    top = oh0 * strides[0] - pads[0]  # the input image row of the block's first row
    rows = (oh1 - oh0 - 1) * strides[0] + (kernel[0] - 1) * dilations[0] + 1
    cols = (out_w - 1) * strides[1] + (kernel[1] - 1) * dilations[1] + 1
    block = np.full((rows, cols, channels), fill, dtype)
    i0, i1 = max(top, 0), min(top + rows, height)  # the block's image rows inside the image
    j1 = min(cols - pads[1], width)  # input columns [0, j1) land at block columns pads[1]..
    if i1 > i0 and j1 > 0:
        base = image * height * width - int(slab["in_row0"])  # x's row of the image's position 0
        start, end = base + i0 * width, base + i1 * width
        held = x[start:end]
        if start < 0 or end > len(x):  # (the slab holds only what the result rows read)
            held = np.full(((i1 - i0) * width, channels), fill, dtype)
            a, b = max(start, 0), min(end, len(x))
            if b > a:
                held[a - start : b - start] = x[a:b]
        block[i0 - top : i1 - top, pads[1] : pads[1] + j1] = held.reshape(i1 - i0, width, channels)[:, :j1]
    views = [
        block[
            ki * dilations[0] : ki * dilations[0] + (oh1 - oh0 - 1) * strides[0] + 1 : strides[0],
            kj * dilations[1] : kj * dilations[1] + (out_w - 1) * strides[1] + 1 : strides[1],
        ]
        for ki in range(kernel[0])
        for kj in range(kernel[1])
    ]

    def crop(y: np.ndarray) -> np.ndarray:
        return y.reshape(-1, channels)[q0 - oh0 * out_w : q1 - oh0 * out_w]

    return views, crop


def window_counts(attrs: Mapping[str, Any]) -> np.ndarray:
    """Per result row of a slab, how many of its window's taps are inside the input (at least 1),
    as [out rows, 1] (cached like the gather index: the average pools divide by it every run)."""

    def compute() -> tuple[np.ndarray, None]:
        slab = attrs["slab"]
        idx = tap_rows(attrs, slab["in_shape"], *slab["out_rows"])
        return np.maximum(1, (idx >= 0).sum(axis=1, keepdims=True)), None

    return _cached((*_slab_key(attrs, -1), "counts"), compute)[0]


# A slab's gather index depends only on the attributes: a runtime applies the same instruction
# run after run, and computing the index took as long as the gather itself. Kept up to a budget,
# least recently used first out.
_INDEX_BUDGET = 32 << 20
_index_cache: OrderedDict[tuple, tuple[Any, np.ndarray | None]] = OrderedDict()
_index_bytes = 0
_index_lock = threading.Lock()


def gather_columns(x: np.ndarray, attrs: Mapping[str, Any], fill) -> np.ndarray:
    """gather(x, attrs, fill) as Im2Col's columns: [out rows, C * taps], channel-major (the window
    values transposed to [rows, C, taps]). Channels-first from x's flat values by one index already
    in that order: numpy's take of one index is several times faster than gather's fancy index of
    (view row, view col) pairs followed by a transposed copy, and picks the same values."""
    if not attrs["slab"].get("channels_first", False):
        index, padding = _slab_index(attrs, len(x))
        if x.itemsize > 2 or x.shape[1] < 64 or index.shape[1] == 1:
            values = gather(x, attrs, fill)
            return values.transpose(0, 2, 1).reshape(len(values), -1)
        # Channels-last fp16 with many channels: each tap's rows gathered straight into its column
        # slots, one copy instead of a gather and a transposed copy of it (~15% faster there;
        # slower with 4-byte values, few channels or one tap, measured on the zoo's slabs)
        cols = np.empty((index.shape[0], x.shape[1], index.shape[1]), x.dtype)
        for t in range(index.shape[1]):
            cols[:, :, t] = x.take(index[:, t], axis=0)
        if padding is not None:
            cols.transpose(0, 2, 1)[padding] = fill
        return cols.reshape(len(cols), -1)
    if x.ndim != 2 or not x.flags.c_contiguous:
        values = gather(x, attrs, fill)
        return values.transpose(0, 2, 1).reshape(len(values), -1)
    flat, padded = _column_index(attrs, x.shape)
    values = x.reshape(-1)
    if isinstance(flat, tuple):  # (per-channel offsets of one [rows, taps] index)
        base, offsets = flat
        cols = np.empty((len(base), len(offsets), base.shape[1]), x.dtype)
        for c, offset in enumerate(offsets):
            values[offset:].take(base, out=cols[:, c], mode="clip")  # (in range: clip never acts)
        cols = cols.reshape(len(base), -1)
    else:
        cols = values.take(flat)
    if padded is not None:
        cols.reshape(-1)[padded] = fill
    return cols


def _column_index(attrs: Mapping[str, Any], shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray | None]:
    """(flat index into a C-contiguous x of `shape`, [out rows, C * taps]; the flat positions of the
    result in the padding, or None) of a channels-first slab, cached like _slab_index. Where each
    channel's cells lie a fixed distance from channel 0's (outside the padding, whose cells are
    filled), the index is (channel 0's [out rows, taps], the C offsets): C times smaller, and the
    cache holds it run after run (a 7x7 stem's full index was 7 MiB, twice its columns)."""

    def compute() -> tuple[np.ndarray | tuple[np.ndarray, list[int]], np.ndarray | None]:
        (view_rows, view_cols), padding = _slab_cells(attrs, shape[0])  # (not cached: used once)
        rows, taps, channels = view_rows.shape
        cells = view_rows * shape[1] + view_cols  # [rows, taps, C]
        # int32 when it fits (half the memory of intp, for a take about a fifth slower)
        dtype = np.int32 if shape[0] * shape[1] < 2**31 else np.intp
        padded = None
        if padding is not None:
            padded = np.flatnonzero(np.broadcast_to(padding[:, None, :], (rows, channels, taps)))
        compact = _channel_offsets(cells, padding)
        if compact is not None:
            base, offsets = compact
            return (np.ascontiguousarray(base, dtype=dtype), offsets), padded
        flat = cells.transpose(0, 2, 1).reshape(rows, channels * taps)
        return np.ascontiguousarray(flat, dtype=dtype), padded

    return _cached((*_slab_key(attrs, shape[0]), "columns", shape[1]), compute)


def _channel_offsets(cells: np.ndarray, padding: np.ndarray | None) -> tuple[np.ndarray, list[int]] | None:
    """(base [rows, taps], offsets [C], all >= 0) with cells[..., c] == base + offsets[c] wherever
    the taps are not in the padding (there base is 0: its cells are filled after the gather), or
    None where no such offsets exist."""
    distance = cells - cells[:, :, :1]
    inside = distance.reshape(-1, distance.shape[-1]) if padding is None else distance[~padding]  # [cells, C]
    if not inside.size:
        return None
    offsets = inside[0]
    if not (inside == offsets).all():
        return None
    shift = int(offsets.min())
    base = cells[:, :, 0] + shift
    if padding is not None:
        base[padding] = 0
    return base, [int(o) - shift for o in offsets]


def _slab_key(attrs: Mapping[str, Any], rows: int) -> tuple:
    slab = attrs["slab"]
    return tuple(
        tuple(v) if isinstance(v, (list, tuple)) else v
        for v in (
            attrs["kernel_shape"],
            attrs.get("strides"),
            attrs.get("dilations"),
            attrs.get("pads"),
            slab["in_shape"],
            slab["out_rows"],
            slab["in_row0"],
            bool(slab.get("channels_first", False)),
            rows,
        )
    )


_Entry = tuple[Any, np.ndarray | None]  # (index: an array or a tuple of them, padding or None)


def _cached(key: tuple, compute: Callable[[], _Entry]) -> _Entry:
    """The cached entry for `key`, or `compute()`'s, kept (its arrays made read-only) within the
    budget, least recently used out first."""
    global _index_bytes
    with _index_lock:
        hit = _index_cache.get(key)
        if hit is not None:
            _index_cache.move_to_end(key)
            return hit
    entry = compute()
    arrays = _arrays(entry)
    for a in arrays:
        a.flags.writeable = False
    size = sum(a.nbytes for a in arrays)
    with _index_lock:
        if key not in _index_cache and size <= _INDEX_BUDGET:
            _index_cache[key] = entry
            _index_bytes += size
            while _index_bytes > _INDEX_BUDGET:
                _index_bytes -= sum(a.nbytes for a in _arrays(_index_cache.popitem(last=False)[1]))
    return entry


def _slab_index(attrs: Mapping[str, Any], rows: int) -> tuple[Any, np.ndarray | None]:
    """(the index of x the window taps read, clipped into x's rows: view rows, or (view rows, view
    cols) channels-first; the taps in the padding, or None)."""
    return _cached(_slab_key(attrs, rows), lambda: _slab_cells(attrs, rows))


def _slab_cells(attrs: Mapping[str, Any], rows: int) -> tuple[Any, np.ndarray | None]:
    """_slab_index, computed."""
    slab = attrs["slab"]
    channels_first = bool(slab.get("channels_first", False))
    r0, r1 = slab["out_rows"]
    idx, view_rows, cols = _view_cells(attrs, slab["in_shape"], r0, r1, channels_first)
    local = np.clip(view_rows - int(slab["in_row0"]), 0, max(0, rows - 1))
    index = (local, cols) if channels_first else local[..., 0]
    padding = idx < 0
    return index, padding if padding.any() else None


def _arrays(entry: tuple[Any, np.ndarray | None]) -> list[np.ndarray]:
    """The arrays of a cache entry: its index (one array or a tuple of them and offsets) and padding."""
    index, padding = entry
    parts = index if isinstance(index, tuple) else (index,)
    return [a for a in (*parts, padding) if isinstance(a, np.ndarray)]
