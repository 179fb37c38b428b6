"""Data movement, shape and indexing kernels against onnxruntime and hand-checked values.

ONNX's node tests cover only the newest opset forms and a few attribute mixes; these add the older
signatures (attributes instead of inputs), clamping corners, reductions with duplicate indices and
a Resize sweep.
"""

from __future__ import annotations

import itertools

import ml_dtypes
import numpy as np
import onnx
import pytest

from lpuc.kernels.shape_ops import reshape_target_shape
from tests.kernels.oracle import assert_matches_onnxruntime, kernel_outputs

pytest.importorskip("onnxruntime")


def i64(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


RNG = np.random.default_rng(7)
X345 = RNG.standard_normal((3, 4, 5)).astype(np.float32)


# --- shapes -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("in_shape", "shape", "allowzero", "expected"),
    [
        ((2, 3, 4), (0, -1), 0, (2, 12)),
        ((2, 3, 4), (4, 0, 2), 0, (4, 3, 2)),
        ((0, 3), (3, 0), 1, (3, 0)),
        ((2, 3, 4), (-1,), 0, (24,)),
        ((2, 3, 4), (2, -1, 2), 1, (2, 6, 2)),
    ],
)
def test_reshape_target_shape(in_shape, shape, allowzero, expected):
    assert reshape_target_shape(in_shape, shape, allowzero) == expected


@pytest.mark.parametrize(
    ("in_shape", "shape", "allowzero"),
    [
        ((2, 3), (-1, -1), 0),
        ((2, 3), (0, -1), 1),
        ((2, 3), (5,), 0),
        ((2, 3), (0, 0, 0), 0),
        ((2, 3), (-2, 3), 0),
    ],
)
def test_reshape_target_shape_rejects(in_shape, shape, allowzero):
    with pytest.raises(ValueError, match="Reshape"):
        reshape_target_shape(in_shape, shape, allowzero)


def test_reshape_opset1_attribute():
    (out,) = kernel_outputs("Reshape", [X345], {"shape": [0, -1]}, opset=1)
    assert out.shape == (3, 20)


@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("axes", [[0], [-1, 1], [2, 0, 4]])
def test_unsqueeze_then_squeeze(opset, axes):
    as_attr = opset < 13
    unsqueeze = [X345] if as_attr else [X345, i64(*axes)]
    assert_matches_onnxruntime("Unsqueeze", unsqueeze, {"axes": axes} if as_attr else {}, opset)
    (grown,) = kernel_outputs("Unsqueeze", unsqueeze, {"axes": axes} if as_attr else {}, opset)
    squeeze = [grown] if as_attr else [grown, i64(*axes)]
    assert_matches_onnxruntime("Squeeze", squeeze, {"axes": axes} if as_attr else {}, opset)


def test_squeeze_without_axes_drops_every_unit_dim():
    (out,) = kernel_outputs("Squeeze", [np.zeros((1, 3, 1, 2), np.float32)])
    assert out.shape == (3, 2)


@pytest.mark.parametrize(("start", "end"), [(None, None), (1, None), (-2, None), (0, -1), (5, 1), (-9, 9)])
def test_shape_start_end(start, end):
    attrs = {k: v for k, v in (("start", start), ("end", end)) if v is not None}
    assert_matches_onnxruntime("Shape", [X345], attrs)


@pytest.mark.parametrize(
    ("start", "limit", "delta"), [(0, 10, 3), (10, 4, -2), (5, 5, 1), (3, 1, 1), (-7, 8, 4)]
)
@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.float32])
def test_range(start, limit, delta, dtype):
    assert_matches_onnxruntime("Range", [np.array(v, dtype) for v in (start, limit, delta)], {})


def test_range_float16_computes_in_float32_by_default():
    values = [np.array(v, np.float16) for v in (2048, 2060, 1)]
    (out,) = kernel_outputs("Range", values, opset=27)
    assert out.dtype == np.float16
    np.testing.assert_array_equal(out, (2048 + np.arange(12, dtype=np.float32)).astype(np.float16))


def test_constant_value_attributes():
    assert kernel_outputs("Constant", [], {"value_float": 1.5})[0].dtype == np.float32
    assert kernel_outputs("Constant", [], {"value_ints": [1, 2]})[0].dtype == np.int64
    bf16 = np.array([1, 2], dtype=ml_dtypes.bfloat16)
    assert kernel_outputs("Constant", [], {"value": bf16})[0].dtype == bf16.dtype
    with pytest.raises(ValueError, match="Constant"):
        kernel_outputs("Constant", [], {"value_int": 1, "value_float": 1.0})


def test_eye_like_dtype_and_offset():
    (out,) = kernel_outputs(
        "EyeLike", [np.zeros((3, 4), np.int32)], {"k": -1, "dtype": onnx.TensorProto.FLOAT}
    )
    np.testing.assert_array_equal(out, np.eye(3, 4, k=-1, dtype=np.float32))


# --- movement -----------------------------------------------------------------------------------

SLICES = [
    ([0, 1], [3, 3], [0, 1], [1, 1]),
    ([-1], [-4], [1], [-1]),  # backwards
    ([100], [-100], [2], [-2]),  # start and end past both ends
    ([-100], [100], [2], [-1]),  # start before the front with a negative step
    ([-100], [-100], [2], [-1]),  # ... clamps to index 0, which is then read (Python's slice reads nothing)
    ([3], [0], [0], [1]),  # empty
    ([1, 0, 4], [-1, 100, -100], [2, 0, 1], [1, 1, -3]),
]


@pytest.mark.parametrize(("starts", "ends", "axes", "steps"), SLICES)
def test_slice_clamping(starts, ends, axes, steps):
    inputs = [X345, i64(*starts), i64(*ends), i64(*axes), i64(*steps)]
    assert_matches_onnxruntime("Slice", inputs, {}, opset=13)


def test_slice_opset1_attributes():
    attrs = {"starts": [1, -3], "ends": [100, -1], "axes": [1, 2]}
    assert_matches_onnxruntime("Slice", [X345], attrs, opset=9)


@pytest.mark.parametrize(
    ("opset", "split", "attrs", "outputs"),
    [
        (11, None, {"axis": 1, "split": [1, 3]}, 2),
        (11, None, {"axis": -1}, 5),
        (13, i64(2, 0, 3), {"axis": 2}, 3),
        (18, None, {"axis": 2, "num_outputs": 3}, 3),  # uneven: 2, 2, 1
        (18, None, {"axis": 0, "num_outputs": 3}, 3),
    ],
)
def test_split_forms(opset, split, attrs, outputs):
    inputs = [X345] if split is None else [X345, split]
    assert_matches_onnxruntime("Split", inputs, attrs, opset, num_outputs=outputs)


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge", "wrap"])
@pytest.mark.parametrize(
    ("pads", "axes"), [((1, 2, 0, 2, 1, 3), None), ((2, 0, 1, 2), (2, -2)), ((1, -1, 0, 2, 2, -2), None)]
)
def test_pad_modes(mode, pads, axes):
    inputs = [X345, i64(*pads), np.array(1.5, np.float32)]
    if axes is not None:
        inputs.append(i64(*axes))
    assert_matches_onnxruntime("Pad", inputs, {"mode": mode}, opset=19)


def test_pad_opset2_attributes():
    attrs = {"pads": [0, 1, 2, 1, 0, 0], "value": -2.0, "mode": "constant"}
    assert_matches_onnxruntime("Pad", [X345], attrs, opset=2)


@pytest.mark.parametrize("shape", [(3, 1, 5), (2, 3, 4, 5), (1,), (4, 1)])
def test_expand(shape):
    x = RNG.standard_normal((3, 1, 1)).astype(np.float32)
    assert_matches_onnxruntime("Expand", [x, i64(*shape)], {}, opset=13)


@pytest.mark.parametrize("mode", ["DCR", "CRD"])
def test_depth_to_space(mode):
    x = RNG.standard_normal((2, 8, 4, 6)).astype(np.float32)
    assert_matches_onnxruntime("DepthToSpace", [x], {"blocksize": 2, "mode": mode}, opset=13)


@pytest.mark.parametrize("mode", ["DCR", "CRD"])
def test_space_to_depth_inverts_depth_to_space(mode):
    x = RNG.standard_normal((2, 8, 4, 6)).astype(np.float32)
    attrs = {"blocksize": 2, "mode": mode}
    np.testing.assert_array_equal(
        kernel_outputs("SpaceToDepth", kernel_outputs("DepthToSpace", [x], attrs), attrs)[0], x
    )


@pytest.mark.parametrize(("batch_axis", "time_axis"), [(1, 0), (0, 1)])
def test_reverse_sequence(batch_axis, time_axis):
    x = RNG.standard_normal((4, 4, 3)).astype(np.float32)
    attrs = {"batch_axis": batch_axis, "time_axis": time_axis}
    assert_matches_onnxruntime("ReverseSequence", [x, i64(4, 1, 0, 2)], attrs, opset=10)


X_CROP = np.arange(60, dtype=np.float32).reshape(3, 4, 5)


@pytest.mark.parametrize(
    ("shape", "axes", "expected"),
    [
        # axis 0 pads 3 -> 5 (1 each side), axis 1 crops 4 -> 2 from 1, axis 2 pads 5 -> 7
        ((5, 2, 7), None, np.pad(X_CROP[:, 1:3, :], ((1, 1), (0, 0), (1, 1)))),
        # axis 0 crops 3 -> 1 from 1; axis 2 pads 5 -> 6, the odd pixel at the end
        ((1, 6), [0, 2], np.pad(X_CROP[1:2], ((0, 0), (0, 0), (0, 1)))),
        ((2,), [-1], X_CROP[:, :, 1:3]),
    ],
)
def test_center_crop_pad(shape, axes, expected):
    (out,) = kernel_outputs("CenterCropPad", [X_CROP, i64(*shape)], {} if axes is None else {"axes": axes})
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize(("upper", "k"), [(1, 0), (0, 0), (1, -2), (0, 3)])
def test_trilu_batched(upper, k):
    x = RNG.standard_normal((2, 4, 5)).astype(np.float32)
    assert_matches_onnxruntime("Trilu", [x, np.array(k, np.int64)], {"upper": upper}, opset=14)


# --- indexing -----------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_dims", [0, 1, 2])
def test_gather_nd_batch_dims(batch_dims):
    data = RNG.standard_normal((2, 3, 4, 5)).astype(np.float32)
    batch_shape = data.shape[:batch_dims]
    coords = [RNG.integers(-d, d, size=(*batch_shape, 3)) for d in data.shape[batch_dims : batch_dims + 2]]
    indices = np.stack(coords, axis=-1).astype(np.int64)
    assert_matches_onnxruntime("GatherND", [data, indices], {"batch_dims": batch_dims}, opset=13)


@pytest.mark.parametrize("reduction", ["none", "add", "mul", "max", "min"])
def test_scatter_elements_reductions(reduction):
    data = RNG.standard_normal((3, 4)).astype(np.float32)
    indices = i64(1, -1, 1, 0, 2, 1).reshape(2, 3)
    updates = RNG.standard_normal((2, 3)).astype(np.float32)
    attrs = {"axis": 1} if reduction == "none" else {"axis": 1, "reduction": reduction}
    if reduction == "none":
        indices = i64(1, -1, 0, 0, 2, 1).reshape(2, 3)  # duplicates are undefined without a reduction
    assert_matches_onnxruntime("ScatterElements", [data, indices, updates], attrs, opset=18)


@pytest.mark.parametrize("reduction", ["add", "mul", "max", "min"])
def test_scatter_nd_reductions_with_duplicates(reduction):
    data = RNG.standard_normal((4, 3)).astype(np.float32)
    indices = i64(1, 3, 1, 0).reshape(4, 1)
    updates = RNG.standard_normal((4, 3)).astype(np.float32)
    assert_matches_onnxruntime("ScatterND", [data, indices, updates], {"reduction": reduction}, opset=18)


def test_scatter_opset9():
    data = np.zeros((3, 3), np.float32)
    assert_matches_onnxruntime(
        "Scatter",
        [data, i64(1, 0, 2, 0, 2, 1).reshape(2, 3), np.ones((2, 3), np.float32)],
        {"axis": 0},
        opset=9,
    )


def test_gather_elements_smaller_indices():
    data = RNG.standard_normal((3, 4)).astype(np.float32)
    assert_matches_onnxruntime(
        "GatherElements", [data, i64(3, -1, 0, 2).reshape(2, 2)], {"axis": 1}, opset=13
    )


def test_gather_rejects_out_of_range():
    with pytest.raises(ValueError, match="Gather"):
        kernel_outputs("Gather", [X345, i64(3)])


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_one_hot_axes(axis):
    indices = i64(0, 3, -1, 9, -5).reshape(5, 1)
    values = np.array([-1, 4], np.int32)
    (out,) = kernel_outputs("OneHot", [indices, np.array(4, np.int64), values], {"axis": axis})
    expected_hot = np.array([[1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 0, 1], [0, 0, 0, 0], [0, 0, 0, 0]], bool)
    expected = np.where(np.moveaxis(expected_hot[:, None, :], -1, axis), 4, -1).astype(np.int32)
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("axis", [None, 0, 1])
def test_compress(axis):
    condition = np.array([True, False, True], bool)
    attrs = {} if axis is None else {"axis": axis}
    assert_matches_onnxruntime("Compress", [X345, condition], attrs, opset=11)


def test_non_zero():
    x = np.array([[0, 2, 0], [1, 0, 3]], np.int32)
    assert_matches_onnxruntime("NonZero", [x], {}, opset=13)


@pytest.mark.parametrize(("sorted_", "axis"), itertools.product([0, 1], [None, 0, 1]))
def test_unique(sorted_, axis):
    x = np.array([[3, 1, 3, 1], [2, 2, 2, 2], [3, 1, 3, 1]], np.int64)
    attrs = {"sorted": sorted_} if axis is None else {"sorted": sorted_, "axis": axis}
    assert_matches_onnxruntime("Unique", [x], attrs, opset=11, num_outputs=4)


def test_array_feature_extractor():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    (out,) = kernel_outputs("ArrayFeatureExtractor", [x, i64(3, 0)], domain="ai.onnx.ml")
    np.testing.assert_array_equal(out, x[:, [3, 0]])
    (row,) = kernel_outputs("ArrayFeatureExtractor", [x[0], i64(1)], domain="ai.onnx.ml")
    assert row.shape == (1, 1)


# --- resize -------------------------------------------------------------------------------------

# onnxruntime computes source coordinates in float32, ONNX in float64: where a coordinate lands within
# rounding error of a nearest-mode tie the two pick different neighbours. Nearest is swept on sizes
# whose scales are exact in both (x2, x3, x0.5, x0.25); filters are continuous and also take
# fractional ones.
EXACT_SIZES = [(8, 12), (12, 18), (2, 3), (1, 3), (8, 3)]
FRACTIONAL_SIZES = [(3, 9), (5, 4), (7, 2)]
COORDINATE_MODES = ("half_pixel", "asymmetric", "align_corners", "pytorch_half_pixel", "half_pixel_symmetric")
NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")


@pytest.mark.parametrize("sizes", EXACT_SIZES)
@pytest.mark.parametrize(("ctm", "nearest_mode"), itertools.product(COORDINATE_MODES, NEAREST_MODES))
def test_resize_nearest(ctm, nearest_mode, sizes):
    x = RNG.standard_normal((1, 2, 4, 6)).astype(np.float32)
    attrs = {
        "mode": "nearest",
        "coordinate_transformation_mode": ctm,
        "nearest_mode": nearest_mode,
        "axes": [2, 3],
    }
    assert_matches_onnxruntime("Resize", [x, None, None, i64(*sizes)], attrs, opset=19)


@pytest.mark.parametrize("sizes", EXACT_SIZES + FRACTIONAL_SIZES)
@pytest.mark.parametrize("ctm", COORDINATE_MODES)
@pytest.mark.parametrize(
    ("mode", "antialias", "exclude_outside"),
    [("linear", 0, 0), ("linear", 1, 0), ("cubic", 0, 0), ("cubic", 1, 0), ("cubic", 0, 1), ("cubic", 1, 1)],
)
def test_resize_filters(mode, ctm, sizes, antialias, exclude_outside):
    x = RNG.standard_normal((1, 2, 4, 6)).astype(np.float32)
    attrs = {
        "mode": mode,
        "coordinate_transformation_mode": ctm,
        "antialias": antialias,
        "exclude_outside": exclude_outside,
        "axes": [2, 3],
    }
    assert_matches_onnxruntime("Resize", [x, None, None, i64(*sizes)], attrs, opset=19, atol=1e-4)


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.float16])
@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_resize_keeps_dtype(dtype, mode):
    x = (RNG.random((1, 1, 4, 4)) * 200).astype(dtype)
    scales = np.array([1, 1, 2, 0.5], np.float32)
    assert_matches_onnxruntime("Resize", [x, None, scales], {"mode": mode}, opset=13, atol=1)


@pytest.mark.parametrize("policy", ["not_larger", "not_smaller"])
def test_resize_keep_aspect_ratio(policy):
    x = RNG.standard_normal((1, 1, 4, 6)).astype(np.float32)
    attrs = {"mode": "linear", "keep_aspect_ratio_policy": policy, "axes": [3, 2]}
    assert_matches_onnxruntime("Resize", [x, None, None, i64(9, 5)], attrs, opset=19)


def test_resize_tf_crop_and_resize_extrapolates():
    x = RNG.standard_normal((1, 1, 4, 4)).astype(np.float32)
    roi = np.array([0, 0, -0.5, 0.2, 1, 1, 0.7, 1.4], np.float32)
    attrs = {
        "mode": "linear",
        "coordinate_transformation_mode": "tf_crop_and_resize",
        "extrapolation_value": 7.0,
    }
    assert_matches_onnxruntime("Resize", [x, roi, None, i64(1, 1, 5, 6)], attrs, opset=13)


ENLARGING = [(2.0, 3.0), (2.5, 1.0)]
LEGACY_CASES = [("Resize", 10, s) for s in [*ENLARGING, (0.5, 0.6), (1.5, 0.7)]] + [
    ("Upsample", 9, s) for s in ENLARGING
]


@pytest.mark.parametrize(("op", "opset", "scales"), LEGACY_CASES)
@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_legacy_resize(op, opset, scales, mode):
    x = RNG.standard_normal((1, 2, 5, 7)).astype(np.float32)
    assert_matches_onnxruntime(op, [x, np.array((1, 1, *scales), np.float32)], {"mode": mode}, opset=opset)


def test_upsample_opset7_scales_attribute():
    x = RNG.standard_normal((1, 1, 2, 3)).astype(np.float32)
    assert_matches_onnxruntime("Upsample", [x], {"mode": "nearest", "scales": [1.0, 1.0, 2.0, 3.0]}, opset=7)


@pytest.mark.parametrize(
    ("attrs", "message"),
    [
        ({"mode": "bicubic"}, "mode"),
        ({"coordinate_transformation_mode": "corners"}, "coordinate_transformation_mode"),
        ({"nearest_mode": "round"}, "nearest_mode"),
    ],
)
def test_resize_rejects_unknown_attributes(attrs, message):
    with pytest.raises(ValueError, match=message):
        kernel_outputs("Resize", [X345, None, np.array([1, 2, 2], np.float32)], attrs, opset=19)
