"""Small hand-built ONNX graphs for frontend and error-path tests."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def single_op_model(
    op: str,
    inputs: list[tuple[str, list]],
    outputs: list[tuple[str, list]],
    opset: int = 21,
    initializers: dict[str, np.ndarray] | None = None,
    **attrs,
) -> onnx.ModelProto:
    node = helper.make_node(
        op, [n for n, _ in inputs] + list(initializers or {}), [n for n, _ in outputs], **attrs
    )
    graph = helper.make_graph(
        [node],
        f"{op.lower()}_graph",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
        [numpy_helper.from_array(v, n) for n, v in (initializers or {}).items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def embedding_matmul_model(
    vocab: int, width: int = 64, ids_shape: tuple[int, ...] = (1, 8)
) -> onnx.ModelProto:
    """ids -> Gather(table [vocab, width], name "embed") -> MatMul(w [width, width]), seeded weights."""
    rng = np.random.default_rng(0)
    table = rng.standard_normal((vocab, width)).astype(np.float32)
    w = rng.standard_normal((width, width)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "ids"], ["x"], name="embed"),
            helper.make_node("MatMul", ["x", "w"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, list(ids_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [*ids_shape, width])],
        [numpy_helper.from_array(table, "table"), numpy_helper.from_array(w, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def unsupported_ops_model() -> onnx.ModelProto:
    """Three nodes of two op types lpuc has no kernel for (a custom domain)."""
    nodes = [
        helper.make_node("Frobnicate", ["x"], ["a"], name="frob_1", domain="com.acme"),
        helper.make_node("Frobnicate", ["a"], ["b"], name="frob_2", domain="com.acme"),
        helper.make_node("Twiddle", ["b"], ["y"], name="twiddle", domain="com.acme"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.acme", 3)]
    )


def dynamic_batch_model() -> onnx.ModelProto:
    return single_op_model("Relu", [("x", ["batch", 16])], [("y", ["batch", 16])])
