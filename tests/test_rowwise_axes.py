"""Ops that reduce along one axis, compiled through lpuc on every axis, not just the last one.

The lowering runs last-axis ops row block by row block; any other axis must not take that path.
Each case is a one-node model compiled in fp32 and compared with onnxruntime (rtol 1e-4).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import lpuc
from tests.kernels.oracle import IR_VERSION, run_onnxruntime

SHAPES = {"3d": (3, 5, 7), "4d": (2, 3, 4, 5)}


def _model(
    op: str,
    shape: tuple[int, ...],
    opset: int,
    attrs: dict | None = None,
    extra_inputs: dict[str, np.ndarray] | None = None,
    consts: dict[str, np.ndarray] | None = None,
) -> onnx.ModelProto:
    """One `op` node on input x (plus `extra_inputs` fed at run time and `consts` as initializers)."""
    extra_inputs, consts = extra_inputs or {}, consts or {}
    f = TensorProto.FLOAT
    graph = helper.make_graph(
        [helper.make_node(op, ["x", *extra_inputs, *consts], ["y"], **(attrs or {}))],
        op,
        [helper.make_tensor_value_info("x", f, shape)]
        + [helper.make_tensor_value_info(n, f, v.shape) for n, v in extra_inputs.items()],
        [onnx.ValueInfoProto(name="y")],
        [numpy_helper.from_array(v, n) for n, v in consts.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=IR_VERSION)
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def _check(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> None:
    got = lpuc.compile(model, precision="fp32").run(feeds)["y"]
    (want,) = run_onnxruntime(model, feeds)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def _x(shape: tuple[int, ...]) -> np.ndarray:
    # Distinct values: no Hardmax ties; large enough spread that a wrong axis changes every row.
    return (np.random.default_rng(len(shape)).standard_normal(shape) * 2).astype(np.float32)


@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("axis", [0, 1, -2, -1])
@pytest.mark.parametrize("rank", sorted(SHAPES))
@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax", "Hardmax"])
def test_softmax_family_on_every_axis(op, rank, axis, opset):
    shape = SHAPES[rank]
    _check(_model(op, shape, opset, {"axis": axis}), {"x": _x(shape)})


REDUCE_CASES = [("3d", [1]), ("4d", [1]), ("4d", [1, 2]), ("4d", [-2]), ("4d", [0, 2])]


@pytest.mark.parametrize("keepdims", [0, 1])
@pytest.mark.parametrize(("rank", "axes"), REDUCE_CASES, ids=[f"{r}-{a}" for r, a in REDUCE_CASES])
@pytest.mark.parametrize("op", ["ReduceSum", "ReduceMean", "ReduceMax"])
def test_reduction_over_middle_axes(op, rank, axes, keepdims):
    shape = SHAPES[rank]
    # Opset 18: axes is an input (a constant here) for every reduction.
    model = _model(op, shape, 18, {"keepdims": keepdims}, consts={"axes": np.array(axes, np.int64)})
    _check(model, {"x": _x(shape)})


@pytest.mark.parametrize("op", ["ReduceMean", "ReduceMax"])
def test_reduction_axes_attribute_opset13(op):
    shape = SHAPES["4d"]
    _check(_model(op, shape, 13, {"axes": [1, 2], "keepdims": 0}), {"x": _x(shape)})


@pytest.mark.parametrize("rank", sorted(SHAPES))
def test_layer_normalization_from_axis_minus_2(rank):
    shape = SHAPES[rank]
    rng = np.random.default_rng(3)
    scale = rng.standard_normal(shape[-2:]).astype(np.float32)
    bias = rng.standard_normal(shape[-2:]).astype(np.float32)
    model = _model("LayerNormalization", shape, 17, {"axis": -2}, {"scale": scale, "bias": bias})
    _check(model, {"x": _x(shape), "scale": scale, "bias": bias})
