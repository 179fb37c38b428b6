"""Build small ONNX graphs, import them to Graph IR, and compare compiled programs with onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import lpuc
from lpuc.frontend.importer import import_model
from lpuc.ir.graph import Graph
from lpuc.ir.verify import verify_graph
from lpuc.passes.pipeline import PassContext
from lpuc.target import load_target

CTX = PassContext(load_target("tsp-v1"), "fp32")


def model(
    nodes,
    inputs: dict[str, list[int]],
    outputs: dict[str, list[int]],
    inits: dict | None = None,
    opset: int = 21,
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "test",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs.items()],
        [numpy_helper.from_array(np.asarray(v), n) for n, v in (inits or {}).items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def imported(m: onnx.ModelProto) -> Graph:
    return import_model(m, "test")


def ops(graph: Graph) -> list[str]:
    return [n.op for n in graph.nodes]


def run_pass(pass_fn, graph: Graph) -> Graph:
    out = pass_fn(graph, CTX)
    verify_graph(out)
    return out


def assert_matches_onnxruntime(m: onnx.ModelProto, feeds: dict[str, np.ndarray], rtol=1e-4, atol=1e-5, **kw):
    program = lpuc.compile(m, precision="fp32", host_fallback=False, **kw)
    got = program.run(feeds)
    session = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    for name, want in zip([o.name for o in session.get_outputs()], session.run(None, feeds)):
        np.testing.assert_allclose(got[name], want, rtol=rtol, atol=atol)
    return program


def rand(*shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
