"""Issue 3 acceptance: real model shapes, built with fixed seeds, compile with no host fallback and
match onnxruntime in exact (fp32) mode."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import lpuc
from tests import zoo
from tests.models import ort_run

RTOL, ATOL = 1e-4, 1e-5


def _export(module: torch.nn.Module, example: torch.Tensor, path, seed: int, dynamo: bool = False):
    torch.manual_seed(seed)
    module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, (example,), str(path), input_names=["input"], output_names=["output"], dynamo=dynamo
        )
    return path


def _check(path, feeds: dict[str, np.ndarray]):
    program = lpuc.compile(path, precision="fp32", host_fallback=False)
    assert program.summary["host_ops"] == 0
    got = program.run(feeds)["output"]
    (want,) = ort_run(path, feeds)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    return program


@pytest.mark.parametrize("norm_first", [False, True])
def test_transformer_encoder(norm_first, tmp_path):
    torch.manual_seed(0)
    model = zoo.transformer_encoder(norm_first)
    x = torch.randn(2, 16, 64, generator=torch.Generator().manual_seed(1))
    path = _export(model, x, tmp_path / "encoder.onnx", seed=0)
    _check(path, {"input": x.numpy()})


def test_gpt_decoder(tmp_path):
    torch.manual_seed(0)
    model = zoo.GPT()
    ids = torch.randint(0, 96, (1, 24), generator=torch.Generator().manual_seed(2))
    path = _export(model, ids, tmp_path / "gpt.onnx", seed=0)
    program = _check(path, {"input": ids.numpy()})
    ops = {i.attrs.get("kernel") for i in program.instructions if i.opcode.endswith(".kernel")}
    assert "LayerNormalization" in ops or "ReduceMean" in ops  # layer norms ran on the chip


def test_resnet_style_cnn(tmp_path):
    torch.manual_seed(0)
    model = zoo.randomize_batchnorm(zoo.ResNetish(), seed=3)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    path = _export(model, x, tmp_path / "resnet.onnx", seed=0)
    program = _check(path, {"input": x.numpy()})
    assert program.summary["instructions_by_opcode"]["mxm.mm"] > 0


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_recurrent(kind, tmp_path):
    torch.manual_seed(0)
    model = zoo.Recurrent(kind)
    x = torch.randn(2, 12, 16, generator=torch.Generator().manual_seed(5))
    path = _export(model, x, tmp_path / f"{kind}.onnx", seed=0)
    _check(path, {"input": x.numpy()})


def test_mobilenet_style_depthwise(tmp_path):
    torch.manual_seed(0)
    model = zoo.randomize_batchnorm(zoo.MobileNetish(), seed=6)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    path = _export(model, x, tmp_path / "mobilenet.onnx", seed=0)
    _check(path, {"input": x.numpy()})


def test_dynamo_exported_transformer(tmp_path):
    """The torch.export-based exporter's graph (different op patterns) also compiles."""
    torch.manual_seed(0)
    model = zoo.transformer_encoder(norm_first=True)
    x = torch.randn(2, 16, 64, generator=torch.Generator().manual_seed(1))
    path = _export(model, x, tmp_path / "encoder_dynamo.onnx", seed=0, dynamo=True)
    _check(path, {"input": x.numpy()})
