"""Convolution, pooling, sampling and quantized kernels against onnxruntime.

ONNX's node tests cover few attribute mixes; these run one-node models through onnxruntime and
the kernels on random shapes across ranks 1-3, groups, strides, dilations, explicit pads, every
auto_pad, ceil_mode and count_include_pad.
"""

from __future__ import annotations

import functools
import itertools

import numpy as np
import pytest

from lpuc.kernels.conv import conv_output_shape, im2col, resolve_pads
from lpuc.kernels.registry import KernelContext, run_kernel
from tests.kernels import oracle
from tests.kernels.oracle import onnxruntime_outputs

pytest.importorskip("onnxruntime")

RANKS = (1, 2, 3)
PAD_MODES = ("explicit", "VALID", "SAME_UPPER", "SAME_LOWER")
STRIDE_DILATION = ((1, 1), (2, 1), (1, 2), (3, 2))


assert_matches_onnxruntime = functools.partial(oracle.assert_matches_onnxruntime, rtol=1e-4)


def random_window_attrs(
    rng: np.random.Generator, rank: int, pad_mode: str, stride: int, dilation: int, kernel
):
    """Attributes of a windowed op: per-axis strides/dilations drawn up to the given values."""
    if pad_mode.startswith("SAME"):
        dilation = 1  # onnxruntime rejects dilations with SAME auto_pad
    attrs = {
        "kernel_shape": list(kernel),
        "strides": [int(rng.integers(1, stride + 1)) for _ in range(rank)],
        "dilations": [int(rng.integers(1, dilation + 1)) for _ in range(rank)],
    }
    if pad_mode == "explicit":
        attrs["pads"] = [int(rng.integers(0, k)) for k in kernel * 2]
    else:
        attrs["auto_pad"] = pad_mode
    return attrs


def random_input(rng: np.random.Generator, shape, dtype=np.float32) -> np.ndarray:
    return rng.standard_normal(shape).astype(dtype)


CONV_CASES = list(itertools.product(RANKS, PAD_MODES, (1, 2), STRIDE_DILATION))


@pytest.mark.parametrize("rank, pad_mode, group, stride_dilation", CONV_CASES)
def test_conv(rank, pad_mode, group, stride_dilation):
    rng = np.random.default_rng(CONV_CASES.index((rank, pad_mode, group, stride_dilation)))
    kernel = [int(k) for k in rng.integers(1, 4, rank)]
    attrs = random_window_attrs(rng, rank, pad_mode, *stride_dilation, kernel)
    attrs["group"] = group
    spatial = [int(s) for s in rng.integers(7, 11, rank)]
    x = random_input(rng, (2, 2 * group, *spatial))
    w = random_input(rng, (3 * group, 2, *kernel))
    assert_matches_onnxruntime("Conv", [x, w, random_input(rng, (3 * group,))], attrs)


@pytest.mark.parametrize("rank, pad_mode", list(itertools.product(RANKS, PAD_MODES)))
def test_im2col_matmul_is_conv(rank, pad_mode):
    rng = np.random.default_rng(rank)
    kernel = [2, 3, 2][:rank]
    x = random_input(rng, (2, 3, *[6, 7, 5][:rank]))
    w = random_input(rng, (4, 3, *kernel))
    strides, dilations = [2, 1, 2][:rank], [1, 2, 1][:rank]
    auto_pad = "NOTSET" if pad_mode == "explicit" else pad_mode
    pads = resolve_pads(auto_pad, x.shape[2:], kernel, strides, dilations, [1] * (2 * rank))
    out_shape = conv_output_shape(x.shape[2:], kernel, strides, pads, dilations)
    y = im2col(x, kernel, strides, pads, dilations) @ w.reshape(4, -1).T
    attrs = {"strides": strides, "dilations": dilations, "pads": pads}
    expected = onnxruntime_outputs("Conv", [x, w], attrs, 21, 1)[0]
    np.testing.assert_allclose(
        np.moveaxis(y.reshape(2, *out_shape, 4), -1, 1), expected, rtol=1e-4, atol=1e-5
    )


def test_im2col_layout():
    x = np.arange(2 * 2 * 3, dtype=np.float32).reshape(1, 2, 2, 3)
    cols = im2col(x, [1, 2], [1, 1], [0, 0, 0, 0], [1, 1])
    # Rows: output positions (0,0), (0,1), (1,0), (1,1); columns: (c0,k0), (c0,k1), (c1,k0), (c1,k1).
    np.testing.assert_array_equal(cols[1], [1, 2, 7, 8])
    np.testing.assert_array_equal(cols[:, 2], [6, 7, 9, 10])


TRANSPOSE_CASES = list(itertools.product(RANKS, ("pads", "output_shape", "SAME_UPPER", "SAME_LOWER"), (1, 2)))


@pytest.mark.parametrize("rank, shape_mode, group", TRANSPOSE_CASES)
def test_conv_transpose(rank, shape_mode, group):
    rng = np.random.default_rng(100 + TRANSPOSE_CASES.index((rank, shape_mode, group)))
    strides = [int(s) for s in rng.integers(1, 4, rank)]
    # Windows at least a stride wide: onnxruntime clamps SAME's negative padding (output smaller
    # than input * stride) where the spec keeps input * stride.
    kernel = [int(rng.integers(s, 5)) for s in strides]
    dilations = [int(d) for d in rng.integers(1, 3, rank)]
    attrs = {"group": group, "strides": strides, "dilations": dilations}
    spatial = [int(s) for s in rng.integers(3, 6, rank)]
    if shape_mode == "pads":
        # Small enough to leave an output: at most half the dilated window per side.
        attrs["pads"] = [
            int(rng.integers(0, (k - 1) * d // 2 + 1)) for k, d in zip(kernel * 2, dilations * 2, strict=True)
        ]
        attrs["output_padding"] = [int(rng.integers(0, s)) for s in strides]
    elif shape_mode == "output_shape":  # at most the unpadded output: onnxruntime rejects more
        full = [
            (n - 1) * s + (k - 1) * d + 1
            for n, s, k, d in zip(spatial, strides, kernel, dilations, strict=True)
        ]
        attrs["output_shape"] = [f - int(rng.integers(0, 3)) for f in full]
    else:
        attrs["auto_pad"] = shape_mode
    x = random_input(rng, (2, 2 * group, *spatial))
    w = random_input(rng, (2 * group, 3, *kernel))
    assert_matches_onnxruntime("ConvTranspose", [x, w, random_input(rng, (3 * group,))], attrs)


POOL_CASES = list(itertools.product(RANKS, PAD_MODES, (0, 1), STRIDE_DILATION))


def pool_case(case: tuple, offset: int):
    rank, pad_mode, ceil_mode, stride_dilation = case
    rng = np.random.default_rng(offset + POOL_CASES.index(case))
    kernel = [int(k) for k in rng.integers(2, 4, rank)]
    attrs = random_window_attrs(rng, rank, pad_mode, *stride_dilation, kernel)
    if pad_mode == "explicit":  # ceil_mode changes nothing with auto_pad
        attrs["ceil_mode"] = ceil_mode
    x = random_input(rng, (2, 3, *[int(s) for s in rng.integers(6, 10, rank)]))
    return rng, attrs, x


@pytest.mark.parametrize("case", POOL_CASES)
@pytest.mark.parametrize("count_include_pad", (0, 1))
def test_average_pool(case, count_include_pad):
    _, attrs, x = pool_case(case, 200)
    assert_matches_onnxruntime("AveragePool", [x], {**attrs, "count_include_pad": count_include_pad})


@pytest.mark.parametrize("case", POOL_CASES)
def test_max_pool_with_indices(case):
    rng, attrs, x = pool_case(case, 300)
    attrs["storage_order"] = int(rng.integers(0, 2)) if len(x.shape) == 4 else 0
    assert_matches_onnxruntime("MaxPool", [x], attrs, num_outputs=2)


@pytest.mark.parametrize("dtype", (np.int8, np.uint8, np.float16))
def test_max_pool_dtypes(dtype):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((1, 2, 7, 6)) * 50).astype(dtype)
    attrs = {"kernel_shape": [3, 2], "strides": [2, 2], "pads": [1, 0, 1, 1], "ceil_mode": 1}
    assert_matches_onnxruntime("MaxPool", [x], attrs)


@pytest.mark.parametrize("case", POOL_CASES[::3])
@pytest.mark.parametrize("p", (1, 2, 3))
def test_lp_pool(case, p):
    _, attrs, x = pool_case(case, 400)
    assert_matches_onnxruntime("LpPool", [x], {**attrs, "p": p}, atol=1e-4)


@pytest.mark.parametrize("op", ("GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"))
@pytest.mark.parametrize("rank", RANKS)
def test_global_pools(op, rank):
    x = random_input(np.random.default_rng(rank), (2, 3, *[5, 4, 3][:rank]))
    assert_matches_onnxruntime(op, [x], {})


@pytest.mark.parametrize("rank", RANKS)
def test_max_unpool_inverts_max_pool(rank):
    # Sizes the pooling covers exactly: with a leftover row onnxruntime and ONNX's reference
    # (which lpuc follows) read the indices in different shapes.
    x = random_input(np.random.default_rng(rank), (2, 3, *[6, 4, 8][:rank]))
    attrs = {"kernel_shape": [2] * rank, "strides": [2] * rank}
    pooled, indices = onnxruntime_outputs("MaxPool", [x], attrs, 21, 2)
    assert_matches_onnxruntime("MaxUnpool", [pooled, indices], attrs)


def test_max_roi_pool():
    rng = np.random.default_rng(0)
    x = random_input(rng, (2, 3, 8, 9))
    rois = np.array([[0, 0, 0, 5, 4], [1, 1.2, 0.5, 6.7, 5.5], [0, -2, -1, 3, 12]], np.float32)
    assert_matches_onnxruntime("MaxRoiPool", [x, rois], {"pooled_shape": [2, 3], "spatial_scale": 0.5})


@pytest.mark.parametrize("with_mask", (False, True))
def test_deform_conv(with_mask):
    rng = np.random.default_rng(0)
    x = random_input(rng, (2, 4, 6, 7))
    w = random_input(rng, (6, 2, 3, 3))
    offset = random_input(rng, (2, 2 * 9 * 2, 3, 4))
    mask = rng.uniform(size=(2, 2 * 9, 3, 4)).astype(np.float32) if with_mask else None
    attrs = {"group": 2, "offset_group": 2, "strides": [2, 2], "pads": [1, 1, 1, 1], "dilations": [1, 1]}
    assert_matches_onnxruntime("DeformConv", [x, w, offset, random_input(rng, (6,)), mask], attrs, opset=22)


def test_conv_integer():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (1, 4, 7, 6), dtype=np.uint8)
    w = rng.integers(0, 256, (6, 2, 3, 3), dtype=np.uint8)
    attrs = {"group": 2, "pads": [1, 0, 1, 2], "strides": [2, 1]}
    zero_points = [np.array(120, np.uint8), np.array(130, np.uint8)]
    assert_matches_onnxruntime("ConvInteger", [x, w, *zero_points], attrs, opset=10)


def test_conv_integer_per_channel_zero_point_is_exact_conv():
    # onnxruntime only takes per-tensor zero points: compare with the float Conv kernel instead.
    rng = np.random.default_rng(1)
    x = rng.integers(-128, 128, (2, 3, 6, 5), dtype=np.int8)
    w = rng.integers(-128, 128, (4, 3, 2, 3), dtype=np.int8)
    w_zero_point = rng.integers(-128, 128, 4, dtype=np.int8)
    attrs = {"pads": [1, 1, 0, 1], "dilations": [2, 1]}
    (y,) = run_kernel(KernelContext("ConvInteger", attrs=attrs), [x, w, np.array(5, np.int8), w_zero_point])
    shifted_w = w.astype(np.float64) - w_zero_point.reshape(4, 1, 1, 1)
    (expected,) = run_kernel(KernelContext("Conv", attrs=attrs), [x.astype(np.float64) - 5, shifted_w])
    assert y.dtype == np.int32
    np.testing.assert_array_equal(y, expected)


def test_qlinear_conv_per_channel():
    rng = np.random.default_rng(0)
    x = rng.integers(-128, 128, (1, 4, 7, 6), dtype=np.int8)
    w = rng.integers(-128, 128, (6, 4, 3, 3), dtype=np.int8)
    w_scale = rng.uniform(0.001, 0.01, 6).astype(np.float32)
    scalar = np.array
    inputs = [x, scalar(0.05, np.float32), scalar(3, np.int8), w, w_scale, np.zeros(6, np.int8)]
    inputs += [scalar(0.2, np.float32), scalar(-5, np.int8)]
    bias = rng.integers(-1000, 1000, 6, dtype=np.int32)
    assert_matches_onnxruntime("QLinearConv", [*inputs, bias], {"pads": [1, 1, 1, 1]}, opset=10, atol=1)


# onnxruntime's 3-D Col2Im disagrees with ONNX's reference (and lpuc) once strides, dilations or
# pads are set; 3-D is compared with unit strides only.
@pytest.mark.parametrize(
    "rank, strides, dilations, pads", [(2, [2, 1], [1, 2], [1, 0, 1, 1]), (3, [1] * 3, [1] * 3, [0] * 6)]
)
def test_col2im(rank, strides, dilations, pads):
    rng = np.random.default_rng(rank)
    image, block = [7, 6, 5][:rank], [2, 3, 2][:rank]
    blocks = np.prod(conv_output_shape(image, block, strides, pads, dilations))
    x = random_input(rng, (2, 3 * np.prod(block), blocks))
    attrs = {"strides": strides, "dilations": dilations, "pads": pads}
    assert_matches_onnxruntime("Col2Im", [x, np.array(image), np.array(block)], attrs, opset=18)


# onnxruntime's cubic + border leaves out-of-range coordinates unclamped; lpuc follows ONNX's
# reference (clamp first), so that pair is left out here.
GRID_CASES = [
    case
    for case in itertools.product(("nearest", "linear", "cubic"), ("zeros", "border", "reflection"), (0, 1))
    if case[:2] != ("cubic", "border")
]


@pytest.mark.parametrize("mode, padding_mode, align_corners", GRID_CASES)
def test_grid_sample(mode, padding_mode, align_corners):
    rng = np.random.default_rng(GRID_CASES.index((mode, padding_mode, align_corners)))
    x = random_input(rng, (2, 3, 5, 6))
    grid = rng.uniform(-1.6, 1.6, (2, 4, 7, 2)).astype(np.float32)
    attrs = {"mode": mode, "padding_mode": padding_mode, "align_corners": align_corners}
    assert_matches_onnxruntime("GridSample", [x, grid], attrs)


@pytest.mark.parametrize("mode", ("avg", "max"))
@pytest.mark.parametrize("transform", ("half_pixel", "output_half_pixel"))
@pytest.mark.parametrize("sampling_ratio", (0, 2))
def test_roi_align(mode, transform, sampling_ratio):
    rng = np.random.default_rng(0)
    x = random_input(rng, (2, 3, 6, 7))
    rois = np.array([[0, 0, 5, 4], [1.2, 0.5, 6.7, 5.5], [-2, -1, 3, 9], [3, 3, 3.2, 3.1]], np.float32)
    attrs = {
        "mode": mode,
        "coordinate_transformation_mode": transform,
        "sampling_ratio": sampling_ratio,
        "output_height": 3,
        "output_width": 2,
        "spatial_scale": 0.8,
    }
    assert_matches_onnxruntime("RoiAlign", [x, rois, np.array([0, 1, 0, 1])], attrs)
