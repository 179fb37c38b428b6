"""windows.shifted_taps (one padded copy of a slab's image rows, a strided view per tap), which
lowered DepthwiseConv slabs sum over: bit for bit what the same sum over the gathered windows
(windows.gather, the formulation before it) gives, on NaNs with payloads, infinities and signed
zeros, and against onnxruntime on ordinary values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lpuc.kernels import windows
from lpuc.kernels.conv import conv_output_shape
from lpuc.kernels.lowered import depthwise_conv
from lpuc.kernels.registry import KernelContext
from tests.kernels.oracle import onnxruntime_outputs

pytest.importorskip("onnxruntime")

GEOMETRIES = (  # kernel, strides, dilations, pads
    ([3, 3], [1, 1], [1, 1], [1, 1, 1, 1]),
    ([3, 3], [2, 2], [1, 1], [1, 1, 1, 1]),
    ([3, 1], [2, 1], [1, 1], [0, 0, 0, 0]),
    ([2, 3], [1, 2], [2, 1], [1, 0, 1, 2]),
    ([5, 5], [1, 1], [1, 1], [2, 2, 2, 2]),
)
SPECIAL = np.array([0.0, -0.0, np.nan, -np.nan, 1.5, -1.0, np.inf, -np.inf, 3e38, -3e38], np.float32)


def _special(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Random draws of SPECIAL (float32), the NaNs with random payloads."""
    x = rng.choice(SPECIAL, shape)
    bits = x.view(np.uint32)
    bits[np.isnan(x)] |= rng.integers(1, 1 << 20, int(np.isnan(x).sum())).astype(np.uint32)
    return x


def _slabs(x_cl: np.ndarray, geometry: dict, rows: int, pieces: int):
    """(attrs, input row slab, r0, r1) for `pieces` row slabs of the result rows (not aligned to
    image rows)."""
    view = x_cl.reshape(-1, x_cl.shape[-1])
    bounds = np.linspace(0, rows, pieces + 1).astype(int)
    for r0, r1 in zip(bounds[:-1], bounds[1:], strict=True):
        slab = {"in_shape": list(x_cl.shape), "out_rows": [int(r0), int(r1)]}
        i0, i1 = windows.input_rows({**geometry, "slab": slab}, x_cl.shape, int(r0), int(r1))
        yield {**geometry, "slab": {**slab, "in_row0": i0}}, np.ascontiguousarray(view[i0:i1]), r0, r1


def _geometry(kernel, strides, dilations, pads) -> dict:
    return {"kernel_shape": kernel, "strides": strides, "dilations": dilations, "pads": pads}


def _rows(y: np.ndarray) -> np.ndarray:
    """An NCHW result as the channels-last [rows, C] matrix."""
    return np.moveaxis(y, 1, -1).reshape(-1, y.shape[1])


@pytest.mark.parametrize("kernel, strides, dilations, pads", GEOMETRIES)
@pytest.mark.parametrize("batch, pieces", ((1, 3), (1, 1), (2, 4), (2, 3)))
@pytest.mark.parametrize("dtype", (np.float32, np.float16))
def test_depthwise_slabs(kernel, strides, dilations, pads, batch, pieces, dtype):
    rng = np.random.default_rng(sum(kernel) * 7 + batch + pieces)
    channels = 12
    geometry = _geometry(kernel, strides, dilations, pads)
    x = rng.standard_normal((batch, channels, 9, 8)).astype(dtype)
    w = rng.standard_normal((channels, 1, *kernel)).astype(dtype)
    bias = rng.standard_normal(channels).astype(dtype)
    (expected,) = onnxruntime_outputs("Conv", [x, w, bias], {**geometry, "group": channels})
    expected = _rows(expected)
    taps = np.ascontiguousarray(w.reshape(channels, -1).T)
    x_cl = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    tol = 1e-2 if dtype == np.float16 else 1e-5
    for attrs, slab, r0, r1 in _slabs(x_cl, geometry, len(expected), pieces):
        y = depthwise_conv(KernelContext("DepthwiseConv", attrs, 1, 1, "lpuc"), slab, taps, bias)
        assert y.dtype == dtype
        np.testing.assert_allclose(y.astype(np.float32), expected[r0:r1], rtol=tol, atol=tol)

    special, taps, bias = _special(rng, x_cl.shape), _special(rng, taps.shape), _special(rng, (channels,))
    for attrs, slab, _, _ in _slabs(special.astype(dtype), geometry, len(expected), pieces):
        y = depthwise_conv(KernelContext("DepthwiseConv", attrs, 1, 1, "lpuc"), slab, taps, bias)
        values = windows.gather(slab.astype(np.float32), attrs, 0)  # the gathered formulation
        total = np.zeros((values.shape[0], channels), np.float32)
        for t in range(values.shape[1]):
            total += values[:, t] * taps[t]
        reference = (total + bias).astype(dtype)
        np.testing.assert_array_equal(y.view(np.uint8), reference.view(np.uint8))


@pytest.mark.parametrize("kernel, strides, dilations, pads", GEOMETRIES)
@pytest.mark.parametrize("batch, pieces", ((1, 3), (1, 1), (2, 4), (2, 3)))
@pytest.mark.parametrize("dtype, fill", ((np.float32, -np.inf), (np.float16, 0), (np.int8, -128)))
def test_taps_equal_fold_taps(kernel, strides, dilations, pads, batch, pieces, dtype, fill):
    """crop(a copy of tap t's view) is fold_taps' tap t, bit for bit, padding `fill` included."""
    rng = np.random.default_rng(sum(kernel) + batch)
    geometry = _geometry(kernel, strides, dilations, pads)
    x_cl = _special(rng, (batch, 9, 8, 16)).astype(np.float32)
    if dtype == np.int8:
        x_cl = rng.integers(-128, 128, x_cl.shape).astype(np.int8)
    x_cl = x_cl.astype(dtype)
    rows = batch * math.prod(conv_output_shape([9, 8], kernel, strides, pads, dilations))
    per_image = rows // batch
    for attrs, slab, r0, r1 in _slabs(x_cl, geometry, rows, pieces):
        shifted = windows.shifted_taps(slab, attrs, fill, slab.dtype)
        assert (shifted is None) == (r0 // per_image != (r1 - 1) // per_image)  # (declines only those)
        if shifted is None:
            continue
        views, crop = shifted
        for view, tap in zip(views, windows.fold_taps(slab, attrs, fill), strict=True):
            np.testing.assert_array_equal(crop(view.copy()).view(np.uint8), tap.view(np.uint8))
