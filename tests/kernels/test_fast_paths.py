"""The tap-loop code paths of the hot window kernels against onnxruntime (and softmax's fast path).

test_conv_pool.py covers the ops in general; these pin the paths it does not reach: single-output
MaxPool, depthwise Conv (group = channels, with and without a channel multiplier), and each of
im2col's layouts (1x1 kernels, few channels, channels-last), which must equal the patch matrix
exactly.
"""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np
import pytest

from lpuc.kernels.conv import conv_output_shape, im2col, resolve_pads
from tests.kernels import oracle
from tests.kernels.oracle import onnxruntime_outputs
from tests.kernels.test_conv_pool import PAD_MODES, RANKS, STRIDE_DILATION, random_input, random_window_attrs

pytest.importorskip("onnxruntime")

assert_matches_onnxruntime = functools.partial(oracle.assert_matches_onnxruntime, rtol=1e-4)

CASES = list(itertools.product(RANKS, PAD_MODES, STRIDE_DILATION))


def _case(case: tuple, offset: int, kernel_low: int = 2):
    rank, pad_mode, stride_dilation = case
    rng = np.random.default_rng(offset + CASES.index(case))
    kernel = [int(k) for k in rng.integers(kernel_low, 4, rank)]
    attrs = random_window_attrs(rng, rank, pad_mode, *stride_dilation, kernel)
    if pad_mode.startswith("SAME"):  # onnxruntime rejects SAME pads that come out negative (stride > kernel)
        attrs["strides"] = [min(s, k) for s, k in zip(attrs["strides"], kernel, strict=True)]
    spatial = [int(s) for s in rng.integers(6, 10, rank)]
    return rng, attrs, spatial


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("ceil_mode", (0, 1))
def test_max_pool_single_output(case, ceil_mode):
    rng, attrs, spatial = _case(case, 400)
    if "pads" in attrs:
        attrs["ceil_mode"] = ceil_mode
    assert_matches_onnxruntime("MaxPool", [random_input(rng, (2, 5, *spatial))], attrs)


def test_max_pool_all_negative_padded_edges():
    # Padding must never win a max: every input value is below zero.
    x = -np.abs(random_input(np.random.default_rng(0), (1, 3, 7, 7))) - 1
    attrs = {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}
    assert_matches_onnxruntime("MaxPool", [x], attrs)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("multiplier", (1, 2))
def test_depthwise_conv(case, multiplier):
    rng, attrs, spatial = _case(case, 500, kernel_low=1)
    channels = 4
    attrs["group"] = channels
    x = random_input(rng, (2, channels, *spatial))
    w = random_input(rng, (channels * multiplier, 1, *attrs["kernel_shape"]))
    bias = random_input(rng, (channels * multiplier,))
    assert_matches_onnxruntime("Conv", [x, w, bias], attrs)


def test_depthwise_conv_float16():
    rng = np.random.default_rng(7)
    x = random_input(rng, (1, 6, 9, 8), np.float16)
    w = random_input(rng, (6, 1, 3, 3), np.float16)
    attrs = {"group": 6, "kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "strides": [2, 1]}
    oracle.assert_matches_onnxruntime("Conv", [x, w], attrs, rtol=1e-2, atol=1e-2)


def _patches(x, kernel, strides, pads, dilations) -> np.ndarray:
    """im2col by definition: one row per output position, one column per (channel, tap)."""
    rank = len(kernel)
    out_shape = conv_output_shape(x.shape[2:], kernel, strides, pads, dilations)
    padded = np.pad(x, [(0, 0), (0, 0)] + [(pads[i], pads[rank + i] + strides[i] * 2) for i in range(rank)])
    rows = []
    for n in range(x.shape[0]):
        for position in np.ndindex(*out_shape):
            row = []
            for c in range(x.shape[1]):
                for tap in np.ndindex(*kernel):
                    at = [p * s + t * d for p, s, t, d in zip(position, strides, tap, dilations, strict=True)]
                    row.append(padded[(n, c, *at)])
            rows.append(row)
    return np.array(rows, dtype=x.dtype).reshape(x.shape[0] * math.prod(out_shape), -1)


IM2COL_CASES = [
    # (channels, kernel, strides, dilations, pads): one per layout im2col picks
    (5, [1, 1], [1, 1], [1, 1], [0, 0, 0, 0]),  # 1x1: the input moved channels-last
    (5, [1, 1], [2, 3], [1, 1], [0, 0, 0, 0]),  # 1x1 strided
    (5, [1, 1], [2, 1], [1, 1], [1, 0, 0, 1]),  # 1x1 with pads
    (2, [3, 3], [2, 2], [1, 1], [1, 1, 1, 1]),  # few channels: whole windows
    (3, [2, 3], [1, 2], [2, 1], [0, 2, 1, 0]),  # few channels, dilated
    (6, [3, 3], [1, 1], [1, 1], [1, 1, 1, 1]),  # channels-last taps
    (7, [3, 2], [2, 1], [1, 2], [2, 0, 1, 1]),  # channels-last taps, dilated and strided
    (9, [2], [1], [2], [1, 0]),  # rank 1
    (4, [2, 2, 2], [1, 2, 1], [1, 1, 2], [1, 0, 1, 0, 1, 0]),  # rank 3
]


@pytest.mark.parametrize("channels, kernel, strides, dilations, pads", IM2COL_CASES)
@pytest.mark.parametrize("channels_last", (False, True))
def test_im2col_layouts_exact(channels, kernel, strides, dilations, pads, channels_last):
    rng = np.random.default_rng(channels)
    x = random_input(rng, (2, channels, *[8, 7, 6][: len(kernel)]))
    # Lowered Im2Col may read NHWC memory: a channels-first view of it must give the same columns.
    source = np.moveaxis(np.ascontiguousarray(np.moveaxis(x, 1, -1)), -1, 1) if channels_last else x
    cols = im2col(source, kernel, strides, pads, dilations)
    np.testing.assert_array_equal(cols, _patches(x, kernel, strides, pads, dilations))


@pytest.mark.parametrize("channels, kernel, strides, dilations, pads", IM2COL_CASES)
@pytest.mark.parametrize("dtype", (np.float32, np.float16))
def test_im2col_channels_first_slabs_exact(channels, kernel, strides, dilations, pads, dtype):
    """Lowered Im2Col's channels-first row slabs (windows.gather_columns' one flat index): each slab
    of rows equals those rows of the patch matrix, from an input slab starting at its first row."""
    from lpuc.kernels import windows
    from lpuc.kernels.lowered import im2col_kernel
    from lpuc.kernels.registry import KernelContext

    rng = np.random.default_rng(channels)
    x = random_input(rng, (2, channels, *[8, 7, 6][: len(kernel)])).astype(dtype)
    expected = _patches(x, kernel, strides, pads, dilations)
    view = x.reshape(-1, x.shape[-1])  # the channels-first [rows, cols] view
    geometry = {"kernel_shape": kernel, "strides": strides, "dilations": dilations, "pads": pads}
    bounds = np.linspace(0, len(expected), 4).astype(int)
    for r0, r1 in zip(bounds[:-1], bounds[1:], strict=True):
        slab = {"channels_first": True, "in_shape": list(x.shape), "out_rows": [int(r0), int(r1)]}
        ranges = windows.input_windows({**geometry, "slab": slab}, x.shape, int(r0), int(r1), True)
        i0, i1 = min(a for a, _ in ranges), max(b for _, b in ranges)
        attrs = {**geometry, "slab": {**slab, "in_row0": i0}}
        cols = im2col_kernel(KernelContext("Im2Col", attrs, 1, 1, "lpuc"), np.ascontiguousarray(view[i0:i1]))
        np.testing.assert_array_equal(cols, expected[r0:r1])


def test_channels_first_index_offsets():
    """windows._channel_offsets: channel c's cells at a fixed distance from channel 0's outside the
    padding give (base, offsets >= 0) that rebuild them there; cells at other distances give None
    (gather_columns then takes the full index)."""
    from lpuc.kernels.windows import _channel_offsets

    rng = np.random.default_rng(0)
    base = rng.integers(0, 500, (6, 4))
    cells = base[:, :, None] + np.array([40, 0, 90])  # [rows, taps, C], channel 1 the lowest
    padding = rng.random((6, 4)) < 0.3
    cells[padding] = rng.integers(0, 900, (int(padding.sum()), 3))  # anything: filled afterwards
    got, offsets = _channel_offsets(cells, padding)
    assert min(offsets) == 0
    inside = ~padding
    for c, offset in enumerate(offsets):
        np.testing.assert_array_equal((got + offset)[inside], cells[..., c][inside])
    row = int(np.flatnonzero(~padding[:, 0])[0])
    cells[row, 0, 2] += 1  # one cell inside the image off by one
    assert _channel_offsets(cells, padding) is None
    assert _channel_offsets(cells, None) is None


@pytest.mark.parametrize("channels, kernel, strides, dilations, pads", IM2COL_CASES)
def test_im2col_matmul_matches_onnxruntime_conv(channels, kernel, strides, dilations, pads):
    rng = np.random.default_rng(10 + channels)
    x = random_input(rng, (2, channels, *[8, 7, 6][: len(kernel)]))
    w = random_input(rng, (3, channels, *kernel))
    pads = resolve_pads("NOTSET", x.shape[2:], kernel, strides, dilations, pads)
    out_shape = conv_output_shape(x.shape[2:], kernel, strides, pads, dilations)
    y = im2col(x, kernel, strides, pads, dilations) @ w.reshape(3, -1).T
    attrs = {"kernel_shape": kernel, "strides": strides, "dilations": dilations, "pads": pads}
    expected = onnxruntime_outputs("Conv", [x, w], attrs)[0]
    np.testing.assert_allclose(
        np.moveaxis(y.reshape(2, *out_shape, 3), -1, 1), expected, rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize(
    "shape, perm",
    [
        ((1, 14, 14, 512), [0, 3, 1, 2]),  # NHWC -> NCHW: rows of the blocked copy
        ((2, 7, 7, 2048), [0, 3, 1, 2]),  # batch > 1, blocks of 16 rows, the last one partial
        ((3, 100, 300), [0, 2, 1]),
        ((257, 300), [1, 0]),
        ((16, 9, 30, 50), [2, 3, 0, 1]),  # a leading group of two axes moved behind the trailing two
        ((16, 9, 30, 50), None),  # reversed: not a batch of matrix transposes
        ((4, 68, 14, 14, 4), [0, 2, 1, 3, 4]),
        ((5,), None),
    ],
)
@pytest.mark.parametrize("dtype", (np.float32, np.int8))
def test_transpose_large(shape, perm, dtype):
    x = (random_input(np.random.default_rng(len(shape)), shape) * 50).astype(dtype)
    attrs = {} if perm is None else {"perm": perm}
    oracle.assert_matches_onnxruntime("Transpose", [x], attrs, rtol=0, atol=0)


WINDOW_OPS = [
    ("MaxPool", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    ("MaxPool", {"kernel_shape": [3, 3], "strides": [1, 1], "pads": [1, 1, 1, 1]}),
    ("MaxPool", {"kernel_shape": [2, 3], "strides": [2, 1], "ceil_mode": 1}),
    ("AveragePool", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    (
        "AveragePool",
        {"kernel_shape": [3, 2], "strides": [1, 1], "pads": [1, 0, 1, 1], "count_include_pad": 1},
    ),
    ("Conv", {"kernel_shape": [3, 3], "strides": [1, 1], "pads": [1, 1, 1, 1], "group": 6}),
    ("Conv", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "group": 6}),
]


@pytest.mark.parametrize("op, attrs", WINDOW_OPS)
def test_window_ops_on_channels_last_views(op, attrs):
    # Lowered channels-last pooling hands the kernels an NCHW view of NHWC memory.
    rng = np.random.default_rng(3)
    x = random_input(rng, (2, 6, 9, 8))
    inputs = [x] if op != "Conv" else [x, random_input(rng, (6, 1, 3, 3)), random_input(rng, (6,))]
    view = np.moveaxis(np.ascontiguousarray(np.moveaxis(x, 1, -1)), -1, 1)
    expected = onnxruntime_outputs(op, inputs, attrs)[0]
    actual = oracle.kernel_outputs(op, [view, *inputs[1:]], attrs)[0]
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


def _slabs(x_cl: np.ndarray, geometry: dict, out_rows: int):
    """(attrs, input row slab, r0, r1) for three row slabs of a channels-last [N, *spatial, C] input."""
    from lpuc.kernels import windows

    view = x_cl.reshape(-1, x_cl.shape[-1])
    bounds = np.linspace(0, out_rows, 4).astype(int)
    for r0, r1 in zip(bounds[:-1], bounds[1:], strict=True):
        slab = {"in_shape": list(x_cl.shape), "out_rows": [int(r0), int(r1)]}
        i0, i1 = windows.input_rows({**geometry, "slab": slab}, x_cl.shape, int(r0), int(r1))
        yield {**geometry, "slab": {**slab, "in_row0": i0}}, np.ascontiguousarray(view[i0:i1]), r0, r1


@pytest.mark.parametrize(
    "channels, kernel, strides, dilations, pads",
    [*IM2COL_CASES, (64, [3, 3], [1, 1], [1, 1], [1, 1, 1, 1]), (70, [3, 2], [2, 1], [1, 2], [2, 0, 1, 1])],
)
@pytest.mark.parametrize("dtype", (np.float32, np.float16))
def test_im2col_channels_last_slabs_exact(channels, kernel, strides, dilations, pads, dtype):
    """Lowered Im2Col's channels-last row slabs (gather_columns' tap-by-tap copy for fp16 with 64 or
    more channels, a gather and a transposed copy otherwise): each slab equals those rows of the
    patch matrix."""
    from lpuc.kernels.lowered import im2col_kernel
    from lpuc.kernels.registry import KernelContext

    x = random_input(np.random.default_rng(channels), (2, channels, *[8, 7, 6][: len(kernel)])).astype(dtype)
    expected = _patches(x, kernel, strides, pads, dilations)
    geometry = {"kernel_shape": kernel, "strides": strides, "dilations": dilations, "pads": pads}
    geometry["channels_last"] = 1
    for attrs, rows, r0, r1 in _slabs(np.ascontiguousarray(np.moveaxis(x, 1, -1)), geometry, len(expected)):
        cols = im2col_kernel(KernelContext("Im2Col", attrs, 1, 1, "lpuc"), rows)
        np.testing.assert_array_equal(cols, expected[r0:r1])


POOL_SLABS = (([2, 2], [0, 0, 0, 0]), ([1, 1], [1, 1, 1, 1]), ([2, 1], [1, 0, 0, 1]))


@pytest.mark.parametrize("dtype", (np.float32, np.float16, np.int8))
@pytest.mark.parametrize("strides, pads", POOL_SLABS)
@pytest.mark.parametrize("channels", (1, 2, 9, 16))
def test_max_pool_slabs(dtype, strides, pads, channels):
    """Lowered MaxPool's row slabs (windows.gather_max, a fold over taps) against onnxruntime, and
    bit for bit against the max over the gathered windows (NaNs with payloads, signed zeros)."""
    from lpuc.kernels import windows
    from lpuc.kernels.lowered import channels_last_pool
    from lpuc.kernels.registry import KernelContext

    rng = np.random.default_rng(7)
    geometry = {"kernel_shape": [3, 3], "strides": strides, "pads": pads}
    x = random_input(rng, (1, channels, 9, 8)).astype(np.float32)
    (expected,) = onnxruntime_outputs("MaxPool", [x], geometry)
    x_cl = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    rows = expected.shape[2] * expected.shape[3]
    expected_rows = np.moveaxis(expected, 1, -1).reshape(rows, -1)
    for attrs, slab, r0, r1 in _slabs(x_cl, geometry, rows):
        y = channels_last_pool(KernelContext("MaxPool", attrs, 1, 1, "lpuc"), slab)
        np.testing.assert_array_equal(y, expected_rows[r0:r1])
    if dtype == np.int8:
        special = rng.integers(-128, 128, x_cl.shape).astype(dtype)
        low = -128
    else:
        values = np.array([0.0, -0.0, np.nan, -np.nan, 1.0, -1.0, np.inf, -np.inf], dtype=dtype)
        special = rng.choice(values, x_cl.shape)
        bits = special.view(np.uint32 if dtype == np.float32 else np.uint16)
        bits[np.isnan(special)] |= rng.integers(1, 64, int(np.isnan(special).sum())).astype(bits.dtype)
        low = -np.inf
    for attrs, slab, _, _ in _slabs(special, geometry, rows):
        folded = windows.gather_max(slab, attrs, low)
        reduced = windows.gather(slab, attrs, low).max(axis=1)
        np.testing.assert_array_equal(folded.view(np.uint8), reduced.view(np.uint8))


@pytest.mark.parametrize("dtype", (np.float32, np.float16))
@pytest.mark.parametrize("strides, pads", POOL_SLABS)
@pytest.mark.parametrize("count_include_pad", (0, 1))
def test_average_pool_slabs(dtype, strides, pads, count_include_pad):
    """Lowered AveragePool's row slabs against onnxruntime, and bit for bit against averaging the
    gathered windows widened after the gather (the kernel widens the slab first, then gathers)."""
    from lpuc.kernels import windows
    from lpuc.kernels.lowered import channels_last_pool
    from lpuc.kernels.registry import KernelContext

    rng = np.random.default_rng(8)
    geometry = {
        "kernel_shape": [3, 3],
        "strides": strides,
        "pads": pads,
        "count_include_pad": count_include_pad,
    }
    x = random_input(rng, (1, 9, 9, 8)).astype(dtype)
    (expected,) = onnxruntime_outputs("AveragePool", [x.astype(np.float32)], geometry)
    rows = expected.shape[2] * expected.shape[3]
    expected_rows = np.moveaxis(expected, 1, -1).reshape(rows, -1)
    for attrs, slab, r0, r1 in _slabs(np.ascontiguousarray(np.moveaxis(x, 1, -1)), geometry, rows):
        y = channels_last_pool(KernelContext("AveragePool", attrs, 1, 1, "lpuc"), slab)
        np.testing.assert_allclose(
            y, expected_rows[r0:r1], rtol=1e-3 if dtype == np.float16 else 1e-5, atol=1e-6
        )
        values = windows.gather(slab, attrs, 0).astype(np.float64)
        idx = windows.tap_rows(attrs, attrs["slab"]["in_shape"], *attrs["slab"]["out_rows"])
        count = values.shape[1] if count_include_pad else np.maximum(1, (idx >= 0).sum(axis=1, keepdims=True))
        np.testing.assert_array_equal(
            y.view(np.uint8), (values.sum(axis=1) / count).astype(dtype).view(np.uint8)
        )


@pytest.mark.parametrize("dtype", (np.float32, np.float64))
@pytest.mark.parametrize("shape, axis", (((8, 10), -1), ((3, 5, 7), 1), ((2, 4, 16, 16), -1), ((300,), 0)))
def test_softmax_wide_floats_match_the_stepwise_definition(dtype, shape, axis):
    """softmax's float32 / float64 path (the bare ufuncs) against its stepwise definition (each
    step rounded to the input type: the identity there), bit for bit, infinities and NaNs included."""
    from lpuc.kernels import softmax as sm

    rng = np.random.default_rng(len(shape))
    x = (rng.standard_normal(shape) * 10).astype(dtype)
    x.reshape(-1)[:5] = [np.inf, -np.inf, np.nan, -0.0, 0.0]
    work, stored = sm._stepwise(x)
    with np.errstate(all="ignore"):
        exps = stored(np.exp(stored(work - np.max(work, axis=axis, keepdims=True))))
        expected = (exps / stored(np.sum(exps, axis=axis, keepdims=True))).astype(x.dtype, copy=False)
        got = sm.softmax(x, axis)
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(got.view(np.uint8), expected.view(np.uint8))


def _special_values(rng, shape: tuple[int, ...], dtype) -> np.ndarray:
    """Random values mixing signed zeros, infinities, NaNs with payloads and wide magnitudes."""
    values = np.array([0.0, -0.0, np.nan, np.inf, -np.inf, 1e-30, -3.5, 7.25e3, 1e30], np.float64)
    x = np.where(rng.random(shape) < 0.5, rng.choice(values, shape), rng.standard_normal(shape) * 10)
    x = x.astype(dtype)
    bits = x.view(np.uint32 if dtype == np.float32 else np.uint16)
    bits[np.isnan(x)] |= rng.integers(1, 64, int(np.isnan(x).sum())).astype(bits.dtype)
    return x


@pytest.mark.parametrize("dtype", (np.float32, np.float16))
@pytest.mark.parametrize("strides, pads", POOL_SLABS)
@pytest.mark.parametrize("channels", (3, 8, 9, 16, 64))
@pytest.mark.parametrize("count_include_pad", (0, 1))
def test_average_pool_slabs_fold_taps_exactly(dtype, strides, pads, channels, count_include_pad):
    """The AveragePool slab kernel (a fold over taps for channels in multiples of 8) gives the bits of
    summing the gathered, widened windows over their tap axis, on special values (zeros' signs,
    NaNs with payloads, infinities)."""
    from lpuc.kernels import windows
    from lpuc.kernels.lowered import channels_last_pool
    from lpuc.kernels.registry import KernelContext

    rng = np.random.default_rng(channels)
    geometry = {"kernel_shape": [3, 3], "strides": strides, "pads": pads}
    geometry["count_include_pad"] = count_include_pad
    with np.errstate(all="ignore"):  # the special values overflow and meet inf - inf on purpose
        x = _special_values(rng, (1, 9, 8, channels), dtype)
    rows = math.prod(conv_output_shape([9, 8], [3, 3], strides, pads, [1, 1]))
    for attrs, slab, _, _ in _slabs(x, geometry, rows):
        with np.errstate(all="ignore"):
            y = channels_last_pool(KernelContext("AveragePool", attrs, 1, 1, "lpuc"), slab)
            values = windows.gather(slab.astype(np.float64), attrs, 0)
            count = values.shape[1] if count_include_pad else windows.window_counts(attrs)
            expected = (values.sum(axis=1) / count).astype(dtype)
        np.testing.assert_array_equal(y.view(np.uint8), expected.view(np.uint8))


@pytest.mark.parametrize("dtype", (np.float32, np.float16, np.int8))
@pytest.mark.parametrize("strides, pads", POOL_SLABS)
@pytest.mark.parametrize("channels", (1, 8, 24))
def test_depthwise_conv_slabs_fold_taps_exactly(dtype, strides, pads, channels):
    """The DepthwiseConv slab kernel (tap by tap, without gathering the windows) gives the bits of
    its definition: from zero, each tap's gathered values times its weights added in tap order."""
    from lpuc.kernels import windows
    from lpuc.kernels._common import accumulation_dtype
    from lpuc.kernels.lowered import depthwise_conv
    from lpuc.kernels.registry import KernelContext

    rng = np.random.default_rng(channels + 100)
    geometry = {"kernel_shape": [3, 3], "strides": strides, "pads": pads, "dilations": [1, 1]}
    if dtype == np.int8:
        x = rng.integers(-128, 128, (1, 9, 8, channels)).astype(dtype)
        taps = rng.integers(-128, 128, (9, channels)).astype(dtype)
    else:
        with np.errstate(all="ignore"):
            x = _special_values(rng, (1, 9, 8, channels), dtype)
            taps = _special_values(rng, (9, channels), dtype)
    work = accumulation_dtype(np.dtype(dtype))
    rows = math.prod(conv_output_shape([9, 8], [3, 3], strides, pads, [1, 1]))
    for attrs, slab, _, _ in _slabs(x, geometry, rows):
        with np.errstate(all="ignore"):
            y = depthwise_conv(KernelContext("DepthwiseConv", attrs, 1, 1, "lpuc"), slab, taps)
            values = windows.gather(slab.astype(work), attrs, 0)
            expected = np.zeros((values.shape[0], channels), work)
            for t in range(values.shape[1]):
                expected += values[:, t] * taps.astype(work)[t]
            expected = expected.astype(dtype)
        np.testing.assert_array_equal(y.view(np.uint8), expected.view(np.uint8))
