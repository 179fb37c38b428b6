"""Bias + activation after a MatMul (Linear + GELU / ReLU as torch exports them) is already one VXM map:
fuse_gelu makes the decomposed erf GELU one Gelu and fuse_elementwise fuses the bias Add with it."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

import lpuc
from lpuc.frontend.importer import import_model
from lpuc.passes.pipeline import run_pipeline
from tests.models import export, ort_run
from tests.passes.helpers import CTX


class Mlp(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.up, self.down = torch.nn.Linear(64, 256), torch.nn.Linear(256, 64)

    def forward(self, x):
        return torch.relu(self.down(torch.nn.functional.gelu(self.up(x))))


@pytest.fixture(scope="module")
def mlp_onnx(tmp_path_factory):
    path = tmp_path_factory.mktemp("mlp") / "mlp.onnx"
    return export(Mlp(), (torch.zeros(2, 40, 64),), path, input_names=["x"], opset_version=17)


def test_bias_and_activation_fuse_into_one_map(mlp_onnx):
    graph = run_pipeline(import_model(onnx.load(mlp_onnx), "mlp"), CTX)
    maps = [n for n in graph.nodes if n.op == "Fused"]
    assert [n.op for n in graph.nodes] == ["MatMul", "Fused", "MatMul", "Fused"]
    assert [[s["op"] for s in n.attrs["expr"]] for n in maps] == [["Add", "Gelu"], ["Add", "Relu"]]


def test_fused_mlp_matches_onnxruntime_and_is_cheaper(mlp_onnx):
    x = np.random.default_rng(0).standard_normal((2, 40, 64)).astype(np.float32)
    (want,) = ort_run(mlp_onnx, {"x": x})
    cycles = {}
    for disabled in ((), ("fuse_elementwise",)):
        program = lpuc.compile(mlp_onnx, precision="fp32", host_fallback=False, disable_passes=disabled)
        (got,) = program.run({"x": x}).values()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
        cycles[disabled] = program.summary["cycles"]
    assert cycles[()] < cycles[("fuse_elementwise",)]
