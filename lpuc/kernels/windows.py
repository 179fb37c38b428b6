"""Sliding windows over channels-last tensors, one row slab of the result at a time.

A channels-last tensor [N, *spatial, C] is a [N * prod(spatial), C] matrix: one row per position.
An op that combines a window of positions (Im2Col, pooling) computes the result rows [r0, r1) from
the input rows its windows touch, which lowering reads as a slab: so a convolution's columns (or a
pooling's result) are produced tile row by tile row, and the matmuls that read them start on the
first rows instead of waiting for the whole tensor.

Only explicit pads and ceil_mode 0 (what lower_conv and sink_transposes produce).
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lpuc.kernels.conv import conv_output_shape


def tap_rows(attrs: Mapping[str, Any], in_shape: Sequence[int], r0: int, r1: int) -> np.ndarray:
    """For result rows [r0, r1) and each window tap: the input row it reads, -1 in the padding.
    Shape [r1 - r0, taps]."""
    spatial = [int(d) for d in in_shape[1:-1]]
    rank = len(spatial)
    kernel = [int(k) for k in attrs["kernel_shape"]]
    strides = [int(s) for s in attrs.get("strides") or [1] * rank]
    dilations = [int(d) for d in attrs.get("dilations") or [1] * rank]
    pads = [int(p) for p in attrs.get("pads") or [0] * 2 * rank]
    out = conv_output_shape(spatial, kernel, strides, pads, dilations)
    rows = np.arange(r0, r1)
    n, *pos = np.unravel_index(rows, [int(in_shape[0]), *out])
    taps = np.unravel_index(np.arange(math.prod(kernel)), kernel)
    flat = n[:, None].astype(np.int64)
    valid = np.ones((len(rows), math.prod(kernel)), dtype=bool)
    for j in range(rank):
        p = pos[j][:, None] * strides[j] - pads[j] + taps[j][None, :] * dilations[j]
        valid &= (p >= 0) & (p < spatial[j])
        flat = flat * spatial[j] + p
    return np.where(valid, flat, -1)


def input_rows(attrs: Mapping[str, Any], in_shape: Sequence[int], r0: int, r1: int) -> tuple[int, int]:
    """The input rows [i0, i1) the windows of result rows [r0, r1) touch."""
    idx = tap_rows(attrs, in_shape, r0, r1)
    used = idx[idx >= 0]
    return (int(used.min()), int(used.max()) + 1) if used.size else (0, 1)


def gather(x: np.ndarray, attrs: Mapping[str, Any], fill) -> np.ndarray:
    """Window values of a slab: x holds input rows from attrs["slab"]["in_row0"] on ([rows, C]);
    returns [out rows, taps, C] with `fill` in the padding."""
    rows, padding = _slab_index(attrs, len(x))
    values = x[rows]
    if padding is not None:
        values[padding] = fill
    return values


# A slab's gather index depends only on the attributes: a runtime applies the same instruction
# run after run, and computing the index took as long as the gather itself. Kept up to a budget,
# least recently used first out.
_INDEX_BUDGET = 32 << 20
_index_cache: OrderedDict[tuple, tuple[np.ndarray, np.ndarray | None]] = OrderedDict()
_index_bytes = 0
_index_lock = threading.Lock()


def _slab_index(attrs: Mapping[str, Any], rows: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(the row of x each window tap reads, clipped into x; the taps in the padding, or None)."""
    global _index_bytes
    slab = attrs["slab"]
    key = tuple(
        tuple(v) if isinstance(v, (list, tuple)) else v
        for v in (
            attrs["kernel_shape"],
            attrs.get("strides"),
            attrs.get("dilations"),
            attrs.get("pads"),
            slab["in_shape"],
            slab["out_rows"],
            slab["in_row0"],
            rows,
        )
    )
    with _index_lock:
        hit = _index_cache.get(key)
        if hit is not None:
            _index_cache.move_to_end(key)
            return hit
    r0, r1 = slab["out_rows"]
    idx = tap_rows(attrs, slab["in_shape"], r0, r1)
    local = np.clip(idx - int(slab["in_row0"]), 0, max(0, rows - 1))
    padding = idx < 0
    entry = (local, padding if padding.any() else None)
    for a in entry:
        if a is not None:
            a.flags.writeable = False
    size = _nbytes(entry)
    with _index_lock:
        if key not in _index_cache and size <= _INDEX_BUDGET:
            _index_cache[key] = entry
            _index_bytes += size
            while _index_bytes > _INDEX_BUDGET:
                _index_bytes -= _nbytes(_index_cache.popitem(last=False)[1])
    return entry


def _nbytes(entry: tuple[np.ndarray, np.ndarray | None]) -> int:
    return sum(a.nbytes for a in entry if a is not None)
