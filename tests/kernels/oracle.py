"""onnxruntime as the oracle of the kernel tests: one-node models, their outputs and the comparison.

Inputs are a list (named in0, in1, ...) or a mapping from names to arrays; a None input is an omitted
optional input (an empty name in the node). Outputs are named out0, out1, ...
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
import pytest
from onnx import helper

from lpuc.kernels.registry import KernelContext, run_kernel

Inputs = Sequence[np.ndarray | None] | Mapping[str, np.ndarray | None]

# The IR version of the models: onnxruntime loads it at every opset these tests use.
IR_VERSION = 10


def _named(inputs: Inputs) -> list[tuple[str, np.ndarray | None]]:
    if isinstance(inputs, Mapping):
        return list(inputs.items())
    return [(f"in{i}", value) for i, value in enumerate(inputs)]


def feeds(inputs: Inputs) -> dict[str, np.ndarray]:
    """The present inputs by name, as a session or `evaluate_model` takes them."""
    return {name: value for name, value in _named(inputs) if value is not None}


def single_node_model(
    op: str,
    inputs: Inputs,
    attrs: dict | None = None,
    opset: int = 21,
    num_outputs: int = 1,
    domain: str = "",
    *,
    infer_shapes: bool = False,
) -> onnx.ModelProto:
    """A model of one `op` node. Its outputs are untyped unless `infer_shapes`, which types them by
    (strict) shape inference and so also checks that inference accepts the node."""
    named = _named(inputs)
    outputs = [f"out{i}" for i in range(num_outputs)]
    input_names = [name if value is not None else "" for name, value in named]
    graph = helper.make_graph(
        [helper.make_node(op, input_names, outputs, domain=domain, **(attrs or {}))],
        op,
        [
            helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(value.dtype), value.shape)
            for name, value in named
            if value is not None
        ],
        [onnx.ValueInfoProto(name=name) for name in outputs],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid(domain, opset)], ir_version=IR_VERSION
    )
    return onnx.shape_inference.infer_shapes(model, strict_mode=True) if infer_shapes else model


def run_onnxruntime(model: onnx.ModelProto, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """All outputs of `model` on CPU; the test is skipped where onnxruntime is not installed."""
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, dict(inputs))


def onnxruntime_outputs(
    op: str,
    inputs: Inputs,
    attrs: dict | None = None,
    opset: int = 21,
    num_outputs: int = 1,
    domain: str = "",
    *,
    infer_shapes: bool = False,
) -> list[np.ndarray]:
    """onnxruntime's outputs of a single-node model (see `single_node_model`)."""
    model = single_node_model(op, inputs, attrs, opset, num_outputs, domain, infer_shapes=infer_shapes)
    return run_onnxruntime(model, feeds(inputs))


def kernel_outputs(
    op: str,
    inputs: Sequence[np.ndarray | None],
    attrs: dict | None = None,
    opset: int = 21,
    num_outputs: int = 1,
    domain: str = "",
) -> list[np.ndarray]:
    """The lpuc kernel's outputs for the same node (opset 0: the latest)."""
    ctx = KernelContext(op, attrs=attrs or {}, opset=opset, num_outputs=num_outputs, domain=domain)
    return run_kernel(ctx, list(inputs))


def assert_outputs_close(
    actual: Sequence[np.ndarray], expected: Sequence[np.ndarray], rtol: float, atol: float
) -> None:
    """As many outputs as expected, each of the expected dtype and shape, with values allclose
    (compared in float64 whatever the dtype: bfloat16, float 8 and integers included)."""
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected, strict=True):
        assert got.dtype == want.dtype
        assert got.shape == want.shape
        np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=rtol, atol=atol)


def assert_matches_onnxruntime(
    op: str,
    inputs: Sequence[np.ndarray | None],
    attrs: dict | None = None,
    opset: int = 21,
    num_outputs: int = 1,
    domain: str = "",
    *,
    rtol: float = 1e-5,
    atol: float = 1e-5,
) -> list[np.ndarray]:
    """Run one node through the kernel and onnxruntime and compare; returns the kernel's outputs."""
    expected = onnxruntime_outputs(op, inputs, attrs, opset, num_outputs, domain)
    actual = kernel_outputs(op, inputs, attrs, opset, num_outputs, domain)
    assert_outputs_close(actual, expected, rtol, atol)
    return actual
