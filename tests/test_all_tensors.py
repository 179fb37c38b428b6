"""`lpuc run --check MODEL --all-tensors`: every surviving intermediate against onnxruntime."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from lpuc.kernels import registry
from tests.cli_helpers import invoke

MLP = Path(__file__).resolve().parent.parent / "models" / "mlp.onnx"


@pytest.fixture(scope="module")
def mlp_lpu(tmp_path_factory):
    art = tmp_path_factory.mktemp("all") / "mlp.lpu"
    assert invoke("compile", MLP, "-o", art, "--precision", "fp32").exit_code == 0
    return art


def test_all_tensors_agree(mlp_lpu):
    result = invoke("run", mlp_lpu, "--check", MLP, "--all-tensors")
    assert result.exit_code == 0, result.output
    assert "intermediate tensors compared, 0 beyond tolerance" in result.output
    assert "first divergence" not in result.output


def test_names_the_first_diverging_node(mlp_lpu, monkeypatch):
    """Relu's kernel made wrong at run time only: both Relus and everything after diverge,
    and the first (in topological order) is named."""
    key = ("", "Relu")
    registry.get_kernel("Relu")  # load every kernel module before patching
    good = registry._KERNELS[key]
    monkeypatch.setitem(
        registry._KERNELS, key, dataclasses.replace(good, fn=lambda ctx, x: good.fn(ctx, x) + 1.0)
    )
    result = invoke("run", mlp_lpu, "--check", MLP, "--all-tensors")
    assert result.exit_code == 1, result.output
    line = next(x for x in result.output.splitlines() if x.startswith("check --all-tensors"))
    assert "first divergence at node '/Relu' (Relu) output '/Relu_output_0'" in line, line
    assert "cosine" in line and "SQNR" in line


def test_all_tensors_needs_check(mlp_lpu):
    result = invoke("run", mlp_lpu, "--all-tensors")
    assert result.exit_code == 2 and "give --check" in result.output


def test_unused_outputs_are_not_compared(tmp_path):
    """An opset-9 Dropout's mask feeds nothing; onnxruntime returns zeros for it where the spec's
    reference returns ones. Without skipping unused tensors this reported a false divergence."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["a"], name="mm"),
            helper.make_node("Dropout", ["a"], ["d", "mask"], name="drop"),
            helper.make_node("Relu", ["d"], ["y"], name="relu"),
        ],
        "dropout",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])],
        [w],
    )
    model, art = tmp_path / "dropout.onnx", tmp_path / "dropout.lpu"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)]), model)
    # (eliminate_identity would remove the Dropout, whose mask nothing reads: kept here, so the
    # program computes the mask the check must skip)
    keep = ("--disable-pass", "eliminate_identity")
    compiled = invoke("compile", model, "-o", art, "--precision", "fp32", *keep)
    assert compiled.exit_code == 0, compiled.output
    result = invoke("run", art, "--check", model, "--all-tensors")
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if x.startswith("check --all-tensors"))
    assert "0 beyond tolerance" in line and "3 intermediate tensors compared" in line, line
