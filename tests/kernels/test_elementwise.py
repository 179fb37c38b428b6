"""Elementwise, casting and dropout kernels on what ONNX's node tests miss.

The node tests cover mostly float32 at the latest opset. These cases add older opset signatures,
float16/bfloat16 and integer inputs, edge values and the accuracy of the hand-written Erf, with
onnxruntime as the oracle where it implements the case and hand-computed expectations elsewhere.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import ml_dtypes
import numpy as np
import pytest
from onnx import TensorProto, helper
from onnx.numpy_helper import saturate_cast

from lpuc.kernels.registry import KernelContext, run_kernel
from tests.kernels.oracle import assert_outputs_close, kernel_outputs, onnxruntime_outputs


def _run(op: str, *inputs: np.ndarray | None, opset: int = 0, outputs: int = 1, **attrs: Any) -> list:
    with np.errstate(all="ignore"):
        return kernel_outputs(op, inputs, attrs, opset, outputs)


@dataclass
class Case:
    name: str
    op: str
    inputs: list[np.ndarray | None]
    attrs: dict[str, Any] = field(default_factory=dict)
    opset: int = 22
    outputs: int = 1
    rtol: float = 1e-6
    atol: float = 1e-7


def _rand(*shape: int, dtype: Any = np.float32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _dtype_name(dtype: Any) -> str:
    return np.dtype(dtype).name


_X = _rand(3, 4) * 3
_X16 = _X.astype(np.float16)
_SIGNED = np.array([[-7, 7, -7, 7], [-6, 6, 5, -5], [0, 1, -1, 9]], np.int32)
_DIVISORS = np.array([2, -2, 3, -4], np.int32)

_F16_TOLERANCE = {"rtol": 1e-3, "atol": 1e-3}

ORACLE_CASES = [
    *[
        Case(f"{op}_float16", op, [_X16], **_F16_TOLERANCE)
        for op in ("Erf", "Gelu", "Sigmoid", "Softplus", "Mish", "Elu", "Selu", "HardSwish", "Tanh")
    ],
    Case("Gelu_tanh_float16", "Gelu", [_X16], {"approximate": "tanh"}, **_F16_TOLERANCE),
    Case("Sigmoid_extremes", "Sigmoid", [np.array([-1e4, -90, 0, 90, 1e4], np.float32)]),
    Case("Softplus_extremes", "Softplus", [np.array([-1e4, -90, 0, 90, 1e4], np.float32)]),
    Case("Relu_int8", "Relu", [np.array([-128, -1, 0, 127], np.int8)]),
    Case("Abs_int8", "Abs", [np.array([-127, -1, 0, 5], np.int8)]),
    Case("Sign_int32", "Sign", [_SIGNED]),
    Case("Round_halves_to_even", "Round", [np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5], np.float32)]),
    Case("Clip_opset6_attributes", "Clip", [_X], {"min": -1.0, "max": 0.5}, opset=6),
    Case("Clip_int32_min_only", "Clip", [_SIGNED, np.array(-2, np.int32)], opset=13),
    Case("Shrink_int32", "Shrink", [_SIGNED], {"lambd": 2.0, "bias": 1.0}, opset=9),
    Case("Div_int32_truncates", "Div", [_SIGNED, _DIVISORS]),
    Case("Div_int8_truncates", "Div", [_SIGNED.astype(np.int8), _DIVISORS.astype(np.int8)]),
    Case("Mod_int32_floor", "Mod", [_SIGNED, _DIVISORS]),
    Case("Mod_int32_fmod", "Mod", [_SIGNED, _DIVISORS], {"fmod": 1}),
    Case("Mod_float16_fmod", "Mod", [_X16, np.float16(0.7) * np.ones(4, np.float16)], {"fmod": 1}),
    Case("Pow_float16_int64", "Pow", [_X16, np.array([2, 3, 0, 1], np.int64)], **_F16_TOLERANCE),
    Case("Pow_int64_float32", "Pow", [np.array([2, 3, 4], np.int64), np.array([0.5, 1.5, 2.0], np.float32)]),
    Case("Add_int8_wraps", "Add", [np.array([120, -120], np.int8), np.array([10, -10], np.int8)]),
    Case("Mean_float16", "Mean", [_X16, _X16[0], _X16[:, :1]], **_F16_TOLERANCE),
    Case("Max_uint8_broadcast", "Max", [np.array([[1], [200]], np.uint8), np.array([3, 100], np.uint8)]),
    Case(
        "BitShift_uint64_right",
        "BitShift",
        [np.array([2**63, 12345678901234], np.uint64), np.array([63, 7], np.uint64)],
        {"direction": "RIGHT"},
    ),
    Case("Cast_float16_to_int32", "Cast", [_X16], {"to": TensorProto.INT32}),
    Case(
        "Cast_int64_to_int8_wraps", "Cast", [np.array([200, -200, 65537], np.int64)], {"to": TensorProto.INT8}
    ),
    Case(
        "Cast_float32_to_bool",
        "Cast",
        [np.array([0.0, -0.0, 0.1, np.nan], np.float32)],
        {"to": TensorProto.BOOL},
    ),
    Case("Where_int64_broadcast", "Where", [_X > 0, np.array([1, 2, 3, 4], np.int64), np.array(0, np.int64)]),
]


@pytest.mark.parametrize("case", ORACLE_CASES, ids=[c.name for c in ORACLE_CASES])
def test_matches_onnxruntime(case: Case) -> None:
    # Strict shape inference types the outputs and checks that onnx accepts the node.
    expected = onnxruntime_outputs(
        case.op, case.inputs, case.attrs, case.opset, case.outputs, infer_shapes=True
    )
    actual = _run(case.op, *case.inputs, opset=case.opset, outputs=case.outputs, **case.attrs)
    assert_outputs_close(actual, expected, case.rtol, case.atol)


@pytest.mark.parametrize(
    ("dtype", "rtol"), [(np.float32, 1e-7), (np.float64, 1e-14)], ids=["float32", "float64"]
)
def test_erf_is_accurate_across_its_range(dtype: Any, rtol: float) -> None:
    x = np.concatenate([np.linspace(-7, 7, 100_001), np.geomspace(1e-30, 7, 2_001)]).astype(dtype)
    expected = np.array([math.erf(float(v)) for v in x])
    (got,) = _run("Erf", x)
    assert got.dtype == dtype
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=0)


def test_erf_special_values() -> None:
    (got,) = _run("Erf", np.array([0.0, -0.0, np.inf, -np.inf, np.nan], np.float32))
    np.testing.assert_array_equal(got, [0.0, -0.0, 1.0, -1.0, np.nan])
    assert np.signbit(got[1])


_FLOAT_UNARY_OPS = (
    "Abs Neg Sign Ceil Floor Round Sqrt Reciprocal Exp Log Sin Cos Tan Asin Acos Atan Sinh Cosh Tanh "
    "Asinh Acosh Atanh Erf Sigmoid Softplus Softsign Relu LeakyRelu ThresholdedRelu Elu Selu Celu "
    "HardSigmoid HardSwish Shrink Swish Mish Gelu Clip"
).split()


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.log1p(np.exp(x))


_SELU_ALPHA, _SELU_GAMMA = 1.67326319217681884482, 1.05070102157308181102

# Independent float64 formulas of the ops at their default attributes (ONNX operator definitions).
_FLOAT64_FORMULAS = {
    "Abs": np.abs,
    "Neg": np.negative,
    "Sign": np.sign,
    "Ceil": np.ceil,
    "Floor": np.floor,
    "Round": np.round,  # half to even, like ONNX
    "Sqrt": np.sqrt,
    "Reciprocal": np.reciprocal,
    "Exp": np.exp,
    "Log": np.log,
    "Sin": np.sin,
    "Cos": np.cos,
    "Tan": np.tan,
    "Asin": np.arcsin,
    "Acos": np.arccos,
    "Atan": np.arctan,
    "Sinh": np.sinh,
    "Cosh": np.cosh,
    "Tanh": np.tanh,
    "Asinh": np.arcsinh,
    "Acosh": np.arccosh,
    "Atanh": np.arctanh,
    "Erf": np.vectorize(math.erf),
    "Sigmoid": _sigmoid,
    "Softplus": _softplus,
    "Softsign": lambda x: x / (1 + np.abs(x)),
    "Relu": lambda x: np.maximum(x, 0),
    "LeakyRelu": lambda x: np.where(x < 0, 0.01 * x, x),
    "ThresholdedRelu": lambda x: np.where(x > 1.0, x, 0),
    "Elu": lambda x: np.where(x < 0, np.expm1(x), x),
    "Selu": lambda x: _SELU_GAMMA * np.where(x <= 0, _SELU_ALPHA * np.expm1(x), x),
    "Celu": lambda x: np.maximum(x, 0) + np.minimum(0, np.expm1(x)),
    "HardSigmoid": lambda x: np.clip(0.2 * x + 0.5, 0, 1),
    "HardSwish": lambda x: x * np.clip(x / 6 + 0.5, 0, 1),
    "Shrink": lambda x: np.where(x < -0.5, x, np.where(x > 0.5, x, 0)),
    "Swish": lambda x: x * _sigmoid(x),
    "Mish": lambda x: x * np.tanh(_softplus(x)),
    "Gelu": lambda x: 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2))),
    "Clip": lambda x: x,  # no bounds given
}


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16, np.float32, np.float64], ids=_dtype_name)
@pytest.mark.parametrize("op", _FLOAT_UNARY_OPS)
def test_unary_float_ops_keep_dtype_and_match_a_float64_formula(op: str, dtype: Any) -> None:
    x = np.linspace(-0.95, 0.95, 24).reshape(4, 6).astype(dtype)  # in every op's domain but Acosh
    if op == "Acosh":
        x = (x.astype(np.float32) + 2).astype(dtype)
    (out,) = _run(op, x)
    # The formula sees the same (rounded) inputs; only the kernel's own rounding differs.
    reference = _FLOAT64_FORMULAS[op](x.astype(np.float64))
    assert out.dtype == np.dtype(dtype)
    assert out.shape == x.shape
    tolerance = 1e-6 if np.dtype(dtype).itemsize >= 4 else 1e-2
    np.testing.assert_allclose(out.astype(np.float64), reference, rtol=tolerance, atol=tolerance)


_NUMPY_BINARY = {"Add": np.add, "Mul": np.multiply, "Sub": np.subtract, "Div": np.divide, "Pow": np.power}


@pytest.mark.parametrize(
    ("op", "attrs", "b_shape", "aligned_shape"),
    [
        ("Add", {"broadcast": 1, "axis": 1}, (3, 4), (1, 3, 4, 1)),
        ("Mul", {"broadcast": 1, "axis": 0}, (2,), (2, 1, 1, 1)),
        ("Sub", {"broadcast": 1}, (4, 5), (4, 5)),
        ("Div", {"broadcast": 1, "axis": -2}, (4,), (1, 1, 4, 1)),
        ("Pow", {"broadcast": 1, "axis": 2}, (4, 5), (1, 1, 4, 5)),
    ],
)
def test_opset6_broadcast_aligns_b_at_axis(
    op: str, attrs: dict, b_shape: tuple, aligned_shape: tuple
) -> None:
    a = np.abs(_rand(2, 3, 4, 5)) + 1
    b = np.abs(_rand(*b_shape, seed=1)) + 1
    (legacy,) = _run(op, a, b, opset=6, **attrs)
    expected = _NUMPY_BINARY[op](a.astype(np.float64), b.reshape(aligned_shape).astype(np.float64))
    np.testing.assert_allclose(legacy, expected, rtol=1e-6)


def test_opset1_comparison_broadcast_aligns_b_at_axis() -> None:
    a = _rand(2, 3)
    (out,) = _run("Greater", a, np.array([0.0, 1.0], np.float32), opset=1, broadcast=1, axis=0)
    np.testing.assert_array_equal(out, a > np.array([[0.0], [1.0]], np.float32))


def test_opset6_prelu_slope_is_per_channel() -> None:
    x = -np.ones((2, 3, 2), np.float32)
    (out,) = _run("PRelu", x, np.array([1, 2, 3], np.float32), opset=6)
    np.testing.assert_array_equal(out[0], [[-1, -1], [-2, -2], [-3, -3]])


def test_integer_pow_with_negative_exponents_truncates_like_c() -> None:
    base = np.array([2, -1, -1, 1, 0, 3, -2], np.int32)
    exponent = np.array([-1, -3, -2, -5, 0, 2, 3], np.int32)
    (out,) = _run("Pow", base, exponent)
    np.testing.assert_array_equal(out, [0, -1, 1, 1, 1, 9, -8])
    assert out.dtype == np.int32


def test_bit_shift_out_of_range_amounts_leave_the_sign_fill() -> None:
    x = np.array([-5, 5, -1, 1], np.int64)
    shift = np.array([64, 63, -1, 200], np.int64)
    (right,) = _run("BitShift", x, shift, direction="RIGHT")
    (left,) = _run("BitShift", x, shift, direction="LEFT")
    np.testing.assert_array_equal(right, [-1, 0, -1, 0])
    np.testing.assert_array_equal(left, [0, np.iinfo(np.int64).min, 0, 0])


def test_is_inf_detects_only_the_requested_signs() -> None:
    x = np.array([np.inf, -np.inf, 1.0, np.nan], np.float32)
    (negative_only,) = _run("IsInf", x, detect_positive=0)
    (neither,) = _run("IsInf", x, detect_positive=0, detect_negative=0)
    np.testing.assert_array_equal(negative_only, [False, True, False, False])
    np.testing.assert_array_equal(neither, [False] * 4)


def test_binarizer_keeps_the_input_dtype() -> None:
    ctx = KernelContext("Binarizer", {"threshold": 0.5}, domain="ai.onnx.ml")
    (out,) = run_kernel(ctx, [np.array([-1, 0, 1, 2], np.int64)])
    np.testing.assert_array_equal(out, [0, 0, 1, 1])
    assert out.dtype == np.int64


# --- Cast / BitCast --------------------------------------------------------------------------------

_FLOAT8_EDGES = np.array([1e6, -1e6, np.inf, -np.inf, np.nan, 0.3, -0.0, 300, 1e-9, 449, -57345], np.float32)


@pytest.mark.parametrize(
    "to",
    [
        TensorProto.FLOAT8E4M3FN,
        TensorProto.FLOAT8E4M3FNUZ,
        TensorProto.FLOAT8E5M2,
        TensorProto.FLOAT8E5M2FNUZ,
    ],
)
@pytest.mark.parametrize("source", [np.float32, np.float16, np.float64], ids=_dtype_name)
def test_cast_to_float8_saturates_by_default(to: int, source: Any) -> None:
    with np.errstate(over="ignore"):  # 1e6 overflows float16 to inf, itself an edge case
        x = _FLOAT8_EDGES.astype(source)
    (saturated,) = _run("Cast", x, to=to)
    (unsaturated,) = _run("Cast", x, to=to, saturate=0)
    target = helper.tensor_dtype_to_np_dtype(to)
    np.testing.assert_array_equal(saturated.view(np.uint8), saturate_cast(x, target).view(np.uint8))
    np.testing.assert_array_equal(unsaturated.view(np.uint8), x.astype(target).view(np.uint8))


def test_cast_to_e8m0_rounds_by_mode() -> None:
    x = np.array([0.0, 1.0, 1.5, 3.0, 0.75, 1e-40, 2.0**127 * 1.5, np.inf, np.nan], np.float32)
    exponents = {
        ("up", 1): [-127, 0, 1, 2, 0, -127, 127, 127, None],
        ("down", 1): [-127, 0, 0, 1, -1, -127, 127, 127, None],
        ("nearest", 0): [None, 0, 1, 2, 0, None, None, None, None],
    }
    for (mode, saturate), expected in exponents.items():
        (out,) = _run("Cast", x, to=TensorProto.FLOAT8E8M0, round_mode=mode, saturate=saturate)
        want = np.array([np.nan if e is None else 2.0**e for e in expected])
        np.testing.assert_array_equal(out.astype(np.float64), want, err_msg=f"{mode}, saturate={saturate}")


def test_cast_before_opset6_names_the_type() -> None:
    (out,) = _run("Cast", np.array([1.7, -1.7], np.float32), opset=1, to="INT32")
    np.testing.assert_array_equal(out, [1, -1])
    assert out.dtype == np.int32


def test_cast_like_takes_the_target_dtype() -> None:
    (out,) = _run("CastLike", np.array([1.5, 2.25], ml_dtypes.bfloat16), np.zeros(0, np.float16))
    assert out.dtype == np.float16
    np.testing.assert_array_equal(out, [1.5, 2.25])


def test_cast_between_strings_and_numbers() -> None:
    (numbers,) = _run("Cast", np.array(["1e-5", "-INF", "nan", "3.5"], dtype=object), to=TensorProto.FLOAT)
    np.testing.assert_array_equal(numbers, np.array([1e-5, -np.inf, np.nan, 3.5], np.float32))
    (strings,) = _run("Cast", np.array([1.5, 2.0], np.float32), to=TensorProto.STRING)
    assert list(strings) == ["1.5", "2.0"]


def test_bit_cast_reinterprets_bits_and_keeps_shape() -> None:
    x = np.array([[1.0, -2.0]], np.float32).T  # not C-contiguous
    (out,) = _run("BitCast", x, to=TensorProto.INT32)
    np.testing.assert_array_equal(out, [[0x3F800000], [-0x40000000]])
    (as_bool,) = _run("BitCast", np.array([0, 1, 2], np.uint8), to=TensorProto.BOOL)
    np.testing.assert_array_equal(as_bool, [False, True, True])


# --- Dropout ---------------------------------------------------------------------------------------


def test_dropout_training_with_a_seed_is_reproducible_and_rescales() -> None:
    x = np.ones((8, 8), np.float32)
    ratio, training = np.array(0.25, np.float32), np.array(True)
    first = _run("Dropout", x, ratio, training, outputs=2, seed=3)
    second = _run("Dropout", x, ratio, training, outputs=2, seed=3)
    out, mask = first
    np.testing.assert_array_equal(out, second[0])
    assert out.dtype == np.float32 and mask.dtype == np.bool_
    np.testing.assert_allclose(out, np.where(mask, 1 / 0.75, 0).astype(np.float32))
    assert 0 < mask.sum() < mask.size


def test_dropout_of_everything_gives_zeros() -> None:
    out, mask = _run("Dropout", _X, np.array(1.0, np.float32), np.array(True), outputs=2)
    np.testing.assert_array_equal(out, np.zeros_like(_X))
    assert not mask.any()


@pytest.mark.parametrize("opset", [7, 10, 22])
def test_dropout_at_inference_is_identity_with_a_keep_everything_mask(opset: int) -> None:
    out, mask = _run("Dropout", _X, opset=opset, outputs=2, ratio=0.3)
    np.testing.assert_array_equal(out, _X)
    assert mask.dtype == (np.float32 if opset < 10 else np.bool_)
    np.testing.assert_array_equal(mask, np.ones_like(_X))


def test_dropout_before_opset7_trains_unless_is_test_and_masks_in_the_data_type() -> None:
    x = np.ones((4, 4), np.float32)
    out, mask = _run("Dropout", x, opset=6, outputs=2, ratio=0.5)
    assert mask.dtype == np.float32
    assert set(np.unique(out)) <= {0.0, 2.0}
    out, mask = _run("Dropout", x, opset=6, outputs=2, ratio=0.5, is_test=1)
    np.testing.assert_array_equal(out, x)
    np.testing.assert_array_equal(mask, np.ones_like(x))


# --- Errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("op", "inputs", "attrs", "message"),
    [
        ("Gelu", [_X], {"approximate": "erf"}, "Gelu: approximate"),
        ("Mod", [_SIGNED, _DIVISORS], {"fmod": 2}, "Mod: fmod"),
        ("BitShift", [_SIGNED, _DIVISORS], {"direction": "UP"}, "BitShift: direction"),
        ("Cast", [_X], {"to": TensorProto.FLOAT8E8M0, "round_mode": "even"}, "Cast: round_mode"),
        ("BitCast", [_X], {"to": TensorProto.INT64}, "BitCast: cannot reinterpret float32 as int64"),
    ],
)
def test_unsupported_values_raise_a_value_error_naming_the_op(
    op: str, inputs: list, attrs: dict, message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        _run(op, *inputs, **attrs)
