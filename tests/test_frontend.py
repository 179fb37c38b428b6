"""Frontend: opset conversion, external data, dynamic dims, compile-time folding, IR dumps."""

from __future__ import annotations

import numpy as np
import onnx
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import lpuc
from lpuc.cli import main
from lpuc.frontend.importer import import_model
from lpuc.frontend.loader import CANONICAL_OPSET, canonicalize_opset, load_model
from tests.models import ort_run


def _softmax_model(opset: int) -> onnx.ModelProto:
    node = helper.make_node("Softmax", ["x"], ["y"], axis=1)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 4])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_old_opsets_convert_to_the_canonical_one_and_keep_their_meaning(tmp_path):
    old = _softmax_model(9)  # Softmax-9 flattens from `axis`: a different meaning from Softmax-13
    converted = canonicalize_opset(old)
    assert converted.opset_import[0].version == CANONICAL_OPSET
    path = tmp_path / "softmax9.onnx"
    onnx.save(old, str(path))
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    got = lpuc.compile(path, precision="fp32").run({"x": x})["y"]
    np.testing.assert_allclose(got, ort_run(path, {"x": x})[0], rtol=1e-5, atol=1e-6)


def test_conversion_that_changes_the_signature_is_refused():
    """Scan-8 -> 9 drops the batch axis from the inputs: the model is kept at its own opset."""
    body = helper.make_graph(
        [helper.make_node("Add", ["s", "v"], ["s2"]), helper.make_node("Identity", ["s2"], ["o"])],
        "body",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2]) for n in ("s", "v")],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2]) for n in ("s2", "o")],
    )
    scan = helper.make_node("Scan", ["", "init", "xs"], ["final", "ys"], num_scan_inputs=1, body=body)
    graph = helper.make_graph(
        [scan],
        "g",
        [
            helper.make_tensor_value_info("init", TensorProto.FLOAT, [1, 2]),
            helper.make_tensor_value_info("xs", TensorProto.FLOAT, [1, 3, 2]),
        ],
        [
            helper.make_tensor_value_info("final", TensorProto.FLOAT, [1, 2]),
            helper.make_tensor_value_info("ys", TensorProto.FLOAT, [1, 3, 2]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 8)])
    assert canonicalize_opset(model).opset_import[0].version == 8


def test_external_data_is_loaded(tmp_path):
    w = np.random.default_rng(1).standard_normal((64, 64)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 64])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    path = tmp_path / "ext.onnx"
    onnx.save(model, str(path), save_as_external_data=True, location="ext.data", size_threshold=0)
    assert (tmp_path / "ext.data").exists()
    x = np.ones((2, 64), np.float32)
    np.testing.assert_allclose(lpuc.compile(path, precision="fp32").run({"x": x})["y"], x @ w, rtol=1e-5)


def test_shape_subgraphs_fold_at_compile_time():
    """Shape -> Gather -> Concat -> Reshape (what exporters emit) becomes a constant reshape."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "zero1"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus1"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["a", "b"])],
        [
            numpy_helper.from_array(np.array(0, np.int64), "zero"),
            numpy_helper.from_array(np.array([0], np.int64), "zero1"),
            numpy_helper.from_array(np.array([-1], np.int64), "minus1"),
        ],
    )
    g = import_model(load_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])), "t")
    assert [n.op for n in g.nodes] == ["Reshape"] and g.values["y"].shape == (2, 12)


def test_dump_ir_writes_every_stage(tmp_path, mlp_onnx):
    out = tmp_path / "ir"
    result = CliRunner().invoke(
        main, ["compile", str(mlp_onnx), "-o", str(tmp_path / "m.lpu"), "--dump-ir", str(out)]
    )
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in out.iterdir())
    assert names[0] == "00_import.graph.txt" and "90_schedule.txt" in names
    assert any("fuse_elementwise" in n for n in names)
    assert "mxm.mm" in (out / "90_schedule.txt").read_text()
