"""`lpuc run --check MODEL --all-tensors`: every surviving intermediate against onnxruntime."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

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
