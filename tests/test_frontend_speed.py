"""The frontend never serializes the weights: onnx's checker, version converter and shape inference
run on a weightless copy of the model, and the weights are read once, from the model's own tensors.

Counted, not timed: every ModelProto.SerializeToString during a compile is recorded with its size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import lpuc
from lpuc.errors import ModelError
from lpuc.frontend.loader import STUB_MIN_ELEMENTS, canonicalize_opset
from tests.models import ort_run

MLP = Path(__file__).resolve().parents[1] / "models" / "mlp.onnx"
WIDTH = 320  # 320 x 320 = 102,400 elements: above the stub limit, 400 KB of fp32 weights
assert WIDTH * WIDTH > STUB_MIN_ELEMENTS


def _mlp(layers: int, opset: int = 21, typed: bool = False) -> onnx.ModelProto:
    rng = np.random.default_rng(layers)
    nodes, inits = [], []
    for k in range(layers):
        w = (rng.standard_normal((WIDTH, WIDTH)) / WIDTH**0.5).astype(np.float32)
        tensor = (
            helper.make_tensor(f"w{k}", TensorProto.FLOAT, w.shape, w.ravel().tolist())
            if typed
            else numpy_helper.from_array(w, f"w{k}")
        )
        inits.append(tensor)
        nodes.append(helper.make_node("MatMul", [f"h{k}", f"w{k}"], [f"m{k}"]))
        nodes.append(helper.make_node("Relu", [f"m{k}"], [f"h{k + 1}"]))
    nodes[0].input[0] = "x"
    nodes[-1].output[0] = "y"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, WIDTH])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


@pytest.fixture
def serialized(monkeypatch) -> list[int]:
    """Sizes of every ModelProto serialized while the test runs."""
    sizes: list[int] = []
    original = onnx.ModelProto.SerializeToString

    def counting(self, *args, **kwargs):
        data = original(self, *args, **kwargs)
        sizes.append(len(data))
        return data

    monkeypatch.setattr(onnx.ModelProto, "SerializeToString", counting)
    return sizes


@pytest.mark.parametrize("opset", [21, 9])  # 9: the version converter runs too
def test_weights_are_never_serialized_and_calls_do_not_grow_with_depth(serialized, tmp_path, opset):
    counts = {}
    for layers in (2, 6):
        path = tmp_path / f"mlp{layers}.onnx"
        onnx.save(_mlp(layers, opset), str(path))
        serialized.clear()
        lpuc.compile(path, precision="fp32")
        weights = layers * WIDTH * WIDTH * 4
        assert serialized, "the checker and shape inference serialize the (weightless) model"
        assert max(serialized) < weights / layers / 4, f"a serialized model holds weights: {serialized}"
        counts[layers] = len(serialized)
    assert counts[6] == counts[2]


@pytest.mark.parametrize("opset,typed", [(21, False), (9, False), (9, True)])
def test_weightless_frontend_matches_onnxruntime(tmp_path, opset, typed):
    path = tmp_path / "mlp.onnx"
    onnx.save(_mlp(3, opset, typed), str(path))
    x = np.random.default_rng(0).standard_normal((4, WIDTH)).astype(np.float32)
    got = lpuc.compile(path, precision="fp32").run({"x": x})["y"]
    np.testing.assert_allclose(got, ort_run(path, {"x": x})[0], rtol=1e-4, atol=1e-5)


def test_converted_model_keeps_its_weights():
    model = _mlp(2, opset=9)
    converted = canonicalize_opset(model)
    assert converted.opset_import[0].version > 9
    assert [t.SerializeToString() for t in converted.graph.initializer] == [
        t.SerializeToString() for t in model.graph.initializer
    ]


def test_raw_data_too_short_for_its_dims_is_the_checkers_error(tmp_path):
    """The checker sees a stub of a large tensor, so the importer refuses short raw data in its words."""
    model = _mlp(1)
    model.graph.initializer[0].raw_data = model.graph.initializer[0].raw_data[:-4]
    with pytest.raises(onnx.checker.ValidationError) as checked:
        onnx.checker.check_model(model)
    path = tmp_path / "short.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ModelError) as refused:
        lpuc.compile(path)
    expected = str(checked.value).strip().splitlines()[0]
    assert str(refused.value) == f"{path}: invalid ONNX model ({expected})"


def test_verbose_compile_prints_each_stages_time_and_peak_rss(tmp_path):
    from click.testing import CliRunner

    from lpuc.cli import main

    result = CliRunner().invoke(main, ["compile", str(MLP), "-o", str(tmp_path / "m.lpu"), "-v"])
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.output.splitlines() if line.startswith("  ")}
    for stage in ("frontend", "passes", "lowering", "schedule", "validate", "encode"):
        mib = float(lines[stage].split("peak RSS")[1].split()[0])
        assert 10 < mib < 4096  # this process's resident set, in MiB


def test_a_files_weights_are_never_parsed(tmp_path, monkeypatch):
    """Large raw-data weights are read apart from the protobuf (lpuc.frontend.wire): every model
    parsed during a compile is weightless, and the compile still matches onnxruntime."""
    parsed: list[int] = []
    original = onnx.ModelProto.ParseFromString

    def counting(self, data, *args, **kwargs):
        parsed.append(len(data))
        return original(self, data, *args, **kwargs)

    monkeypatch.setattr(onnx.ModelProto, "ParseFromString", counting)
    path = tmp_path / "mlp.onnx"
    onnx.save(_mlp(3), str(path))
    x = np.random.default_rng(1).standard_normal((4, WIDTH)).astype(np.float32)
    program = lpuc.compile(path, precision="fp32")
    assert parsed and max(parsed) < WIDTH * WIDTH * 4 / 4, f"a parsed model holds weights: {parsed}"
    monkeypatch.undo()
    np.testing.assert_allclose(program.run({"x": x})["y"], ort_run(path, {"x": x})[0], rtol=1e-4, atol=1e-5)
