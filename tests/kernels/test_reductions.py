"""Reduction, normalization, softmax, loss and linear-algebra kernels on what ONNX's node tests miss.

The node tests cover mostly float32 at the latest opset. These cases add older opset signatures,
float16 and integer inputs, ties, empty axes and edge values, with onnxruntime as the oracle
(where it implements the case) or hand-computed expectations.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import ml_dtypes
import numpy as np
import pytest

from tests.kernels.oracle import assert_outputs_close, kernel_outputs, onnxruntime_outputs

pytest.importorskip("onnxruntime")


@dataclass
class Case:
    name: str
    op: str
    inputs: list[np.ndarray]
    attrs: dict[str, Any] = field(default_factory=dict)
    opset: int = 23
    outputs: int = 1
    rtol: float = 1e-5
    atol: float = 1e-6


def _run(op: str, *inputs: np.ndarray, opset: int = 0, outputs: int = 1, **attrs: Any) -> list[np.ndarray]:
    return kernel_outputs(op, inputs, attrs, opset, outputs)


def _rand(*shape: int, dtype: Any = np.float32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


_X = _rand(2, 3, 4)
_X16 = _rand(2, 3, 4, dtype=np.float16)
_INTS = np.random.default_rng(1).integers(-5, 6, size=(3, 4)).astype(np.int32)
_TIES = np.array([[1, 3, 3, 0], [2, 2, 1, 2], [0, 0, 0, 0]], dtype=np.float32)
_LOG_PROB = _rand(3, 5, 2, seed=2)
_TARGET = np.array([[0, 4], [1, -1], [3, 3]], dtype=np.int32)
_IMAGE = _rand(2, 4, 3, 3, seed=3)
_CHANNEL = _rand(4, seed=4)
_VARIANCE = np.abs(_rand(4, seed=5)) + 0.5

ORACLE_CASES = [
    *[
        Case(f"{op}_attr_axes_opset13", op, [_X], {"axes": [0, 2], "keepdims": 0}, opset=13)
        for op in ("ReduceMax", "ReduceMean", "ReduceL2", "ReduceLogSumExp", "ReduceSumSquare")
    ],
    Case("ReduceSum_attr_axes_opset11", "ReduceSum", [_X], {"axes": [-1]}, opset=11),
    *[
        Case(
            f"{op}_noop_empty_axes",
            op,
            [np.abs(_X) + 0.1, np.array([], np.int64)],
            {"noop_with_empty_axes": 1},
        )
        for op in ("ReduceSum", "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceSumSquare", "ReduceLogSumExp")
    ],
    *[
        Case(f"{op}_int32_all_axes", op, [_INTS], {"keepdims": 0})
        for op in ("ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1")
    ],
    *[
        Case(f"{op}_float16", op, [_X16, np.array([1], np.int64)], rtol=1e-3, atol=1e-3)
        for op in ("ReduceSum", "ReduceMean", "ReduceLogSumExp", "ReduceL2")
    ],
    Case("ReduceLogSumExp_large", "ReduceLogSumExp", [_X * 1000, np.array([2], np.int64)], rtol=1e-5),
    *[
        Case(f"{op}_ties_last{last}", op, [_TIES], {"axis": 1, "select_last_index": last, "keepdims": 0})
        for op in ("ArgMax", "ArgMin")
        for last in (0, 1)
    ],
    Case("ArgMax_float16", "ArgMax", [_X16], {"axis": -1}),
    Case(
        "CumSum_int32_reverse_exclusive",
        "CumSum",
        [_INTS, np.array(1, np.int32)],
        {"reverse": 1, "exclusive": 1},
    ),
    Case("CumSum_float16_axis0", "CumSum", [_X16, np.array([0], np.int64)], rtol=1e-3, atol=1e-3),
    *[
        Case(
            f"TopK_ties_largest{largest}",
            "TopK",
            [_TIES, np.array([3], np.int64)],
            {"largest": largest},
            outputs=2,
        )
        for largest in (0, 1)
    ],
    Case(
        "TopK_uint8_axis0",
        "TopK",
        [np.abs(_INTS).astype(np.uint8), np.array([2], np.int64)],
        {"axis": 0},
        outputs=2,
    ),
    Case("TopK_opset1_attr_k", "TopK", [_X], {"k": 2, "axis": 1}, opset=1, outputs=2),
    Case("TopK_float16", "TopK", [_X16, np.array([2], np.int64)], outputs=2),
    *[
        Case(f"{op}_opset11_flattens", op, [_X], {"axis": 1}, opset=11)
        for op in ("Softmax", "LogSoftmax", "Hardmax")
    ],
    Case("Hardmax_ties_first_wins", "Hardmax", [_TIES]),
    Case("Softmax_float16", "Softmax", [_X16], {"axis": 1}, rtol=1e-3, atol=1e-3),
    Case("LogSoftmax_float16", "LogSoftmax", [_X16 * 8], {"axis": 0}, rtol=1e-3, atol=1e-3),
    Case(
        "LayerNormalization_float16_stats",
        "LayerNormalization",
        [_X16, _X16[0, 0]],
        {"axis": -1},
        outputs=3,
        rtol=1e-3,
        atol=1e-3,
    ),
    Case("RMSNormalization_axis1", "RMSNormalization", [_X, _X[0]], {"axis": 1}),
    Case(
        "InstanceNormalization_float16",
        "InstanceNormalization",
        [_IMAGE.astype(np.float16), _CHANNEL.astype(np.float16), _CHANNEL.astype(np.float16)],
        rtol=1e-2,
        atol=1e-2,
    ),
    Case(
        "GroupNormalization_opset18_per_group",
        "GroupNormalization",
        [_IMAGE, _CHANNEL[:2], _CHANNEL[2:]],
        {"num_groups": 2},
        opset=18,
    ),
    Case(
        "BatchNormalization_inference_3d",
        "BatchNormalization",
        [_rand(2, 4, 5), _CHANNEL, _CHANNEL, _CHANNEL, _VARIANCE],
    ),
    Case("LpNormalization_p1_axis0", "LpNormalization", [_X[0]], {"p": 1, "axis": 0}),
    Case(
        "MeanVarianceNormalization_axes_0_1", "MeanVarianceNormalization", [_X], {"axes": [0, 1]}, atol=1e-5
    ),
    Case("LRN_float16", "LRN", [_IMAGE.astype(np.float16)], {"size": 5, "alpha": 0.01}, rtol=1e-3, atol=1e-3),
    Case(
        "NegativeLogLikelihoodLoss_int32_ignore",
        "NegativeLogLikelihoodLoss",
        [_LOG_PROB, _TARGET, np.abs(_rand(5, seed=6))],
        {"ignore_index": -1},
    ),
    Case(
        "SoftmaxCrossEntropyLoss_none_ignore",
        "SoftmaxCrossEntropyLoss",
        [_LOG_PROB, _TARGET],
        {"ignore_index": -1, "reduction": "none"},
        outputs=2,
    ),
    Case(
        "Einsum_implicit_ellipsis",
        "Einsum",
        [_rand(2, 3, 4), _rand(2, 4, 5, seed=7)],
        {"equation": "...ij,...jk"},
    ),
    Case("Einsum_int32_trace", "Einsum", [_INTS[:, :3]], {"equation": "ii->"}),
    Case("Einsum_float16_outer", "Einsum", [_X16[0, 0], _X16[1, 1]], {"equation": "i, j -> ij"}, rtol=1e-3),
    Case("Det_batched", "Det", [_rand(3, 2, 2)], atol=1e-5),
]


@pytest.mark.parametrize("case", ORACLE_CASES, ids=[c.name for c in ORACLE_CASES])
def test_matches_onnxruntime(case: Case) -> None:
    # Strict shape inference types the outputs and checks that onnx accepts the node.
    expected = onnxruntime_outputs(
        case.op, case.inputs, case.attrs, case.opset, case.outputs, infer_shapes=True
    )
    actual = kernel_outputs(case.op, case.inputs, case.attrs, case.opset, case.outputs)
    assert_outputs_close(actual, expected, case.rtol, case.atol)


@pytest.mark.parametrize(
    ("op", "dtype", "identity"),
    [
        ("ReduceMax", np.int32, np.iinfo(np.int32).min),
        ("ReduceMin", np.uint8, 255),
        ("ReduceMin", np.bool_, True),
        ("ReduceProd", np.int64, 1),
        ("ReduceLogSum", np.float32, -np.inf),
    ],
)
def test_reducing_an_empty_set_gives_the_identity(op: str, dtype: Any, identity: Any) -> None:
    (out,) = _run(op, np.zeros((2, 0, 3), dtype), np.array([1], np.int64), keepdims=0)
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, np.full((2, 3), identity, dtype))


def test_cum_prod_reverse_exclusive_keeps_int32() -> None:
    x = np.array([[1, 2, 3], [4, 5, 6]], np.int32)
    (out,) = _run("CumProd", x, np.array(-1, np.int64), reverse=1, exclusive=1)
    np.testing.assert_array_equal(out, np.array([[6, 3, 1], [30, 6, 1]], np.int32))
    assert out.dtype == np.int32


def test_top_k_of_zero_elements_is_empty() -> None:
    values, indices = _run("TopK", _X, np.array([0], np.int64), outputs=2, axis=1)
    assert values.shape == indices.shape == (2, 0, 4)
    assert indices.dtype == np.int64


def test_lrn_with_even_size_takes_one_more_channel_after() -> None:
    size, alpha, beta, bias = 4, 0.01, 0.6, 1.5
    (out,) = _run("LRN", _IMAGE, size=size, alpha=alpha, beta=beta, bias=bias)
    channels = _IMAGE.shape[1]
    expected = np.empty_like(_IMAGE)
    for c in range(channels):
        window = _IMAGE[:, max(0, c - 1) : min(channels, c + 3)]
        expected[:, c] = _IMAGE[:, c] / (bias + alpha / size * np.sum(window**2, axis=1)) ** beta
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_batch_normalization_opset9_training_returns_saved_statistics() -> None:
    x = _rand(3, 4, 2, seed=8)
    momentum = 0.8
    y, running_mean, running_var, saved_mean, saved_var = _run(
        "BatchNormalization",
        x,
        _CHANNEL,
        _CHANNEL,
        _CHANNEL,
        _VARIANCE,
        opset=9,
        outputs=5,
        momentum=momentum,
    )
    batch_mean, batch_var = x.mean(axis=(0, 2)), x.var(axis=(0, 2))
    np.testing.assert_allclose(saved_mean, batch_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(saved_var, batch_var, rtol=1e-5)
    np.testing.assert_allclose(running_mean, _CHANNEL * momentum + batch_mean * (1 - momentum), rtol=1e-5)
    np.testing.assert_allclose(running_var, _VARIANCE * momentum + batch_var * (1 - momentum), rtol=1e-5)
    per_channel = (1, 4, 1)
    expected = (x - batch_mean.reshape(per_channel)) / np.sqrt(batch_var.reshape(per_channel) + 1e-5)
    expected = expected * _CHANNEL.reshape(per_channel) + _CHANNEL.reshape(per_channel)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


_BFLOAT16_CASES = [
    ("ReduceSum", [_X, np.array([1], np.int64)], {}),
    ("ReduceLogSumExp", [_X], {}),
    ("CumSum", [_X, np.array(2, np.int64)], {}),
    ("Softmax", [_X], {}),
    ("LogSoftmax", [_X], {"axis": 0}),
    ("LayerNormalization", [_X, _X[0, 0]], {}),
    ("GroupNormalization", [_IMAGE, _CHANNEL, _CHANNEL], {"num_groups": 2}),
    ("Einsum", [_X, _X], {"equation": "bij,bkj->bik"}),
    ("Det", [_X[:, :3, :3]], {}),
]


@pytest.mark.parametrize(("op", "inputs", "attrs"), _BFLOAT16_CASES, ids=[c[0] for c in _BFLOAT16_CASES])
def test_bfloat16_stays_bfloat16_and_matches_float32(op: str, inputs: list, attrs: dict) -> None:
    as_bf16 = [x.astype(ml_dtypes.bfloat16) if x.dtype == np.float32 else x for x in inputs]
    # The float32 reference (onnxruntime) sees the same bfloat16-rounded values.
    rounded = [x.astype(np.float32) if x.dtype == ml_dtypes.bfloat16 else x for x in as_bf16]
    (reference,) = onnxruntime_outputs(op, rounded, attrs, opset=21, infer_shapes=True)
    (out,) = _run(op, *as_bf16, opset=21, **attrs)
    assert out.dtype == ml_dtypes.bfloat16
    np.testing.assert_allclose(out.astype(np.float32), reference, rtol=2e-2, atol=2e-2)


def test_top_k_bfloat16_keeps_dtype_and_order() -> None:
    values, indices = _run(
        "TopK", np.array([1, 3, 3, -2], ml_dtypes.bfloat16), np.array([3], np.int64), outputs=2
    )
    assert values.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(indices, [1, 2, 0])


@pytest.mark.parametrize(
    ("op", "inputs", "attrs", "message"),
    [
        ("ReduceSum", [_X, np.array([3], np.int64)], {}, "ReduceSum: axes"),
        ("ReduceMean", [_X, np.array([1, -2], np.int64)], {}, "repeated"),
        ("ArgMax", [_X], {"axis": 5}, "ArgMax: axis"),
        ("TopK", [_X, np.array([9], np.int64)], {}, "TopK: k=9"),
        ("CumSum", [_X, np.array([0, 1], np.int64)], {}, "CumSum: axis"),
        ("Softmax", [_X], {"axis": 3}, "Softmax: axis"),
        ("LpNormalization", [_X], {"p": 3}, "LpNormalization: p=3"),
        ("GroupNormalization", [_IMAGE, _CHANNEL, _CHANNEL], {"num_groups": 3}, "num_groups=3"),
        ("LayerNormalization", [_X, _X[0, 0]], {"stash_type": 7}, "stash_type 7"),
        ("LRN", [_IMAGE], {"size": 0}, "LRN: size=0"),
        ("NegativeLogLikelihoodLoss", [_LOG_PROB, _TARGET], {"reduction": "avg"}, "reduction 'avg'"),
        ("NegativeLogLikelihoodLoss", [_LOG_PROB, _TARGET], {}, "outside [0, 5)"),
        ("Einsum", [_X], {"equation": "ij,jk->ik"}, "names 2 inputs, got 1"),
        ("Einsum", [_X], {"equation": "ij->j"}, "does not fit input shapes"),
        ("Det", [_X], {}, "square matrices"),
    ],
)
def test_unsupported_values_raise_a_value_error_naming_the_op(
    op: str, inputs: list, attrs: dict, message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        _run(op, *inputs, **attrs)
