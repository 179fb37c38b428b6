"""Models the tests build themselves: torch modules exported to ONNX with fixed seeds."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch


class MLP(torch.nn.Module):
    """Three Linear + ReLU, then Softmax: the issue's MLP."""

    def __init__(self, sizes=(64, 128, 128, 10)):
        super().__init__()
        self.layers = torch.nn.ModuleList(torch.nn.Linear(a, b) for a, b in zip(sizes, sizes[1:]))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        return torch.softmax(x, dim=-1)


class ResidualBlock(torch.nn.Module):
    """Linear -> Tanh -> Linear plus the residual Add (MatMul sees a batched 3-D operand)."""

    def __init__(self, width=256):
        super().__init__()
        self.fc1 = torch.nn.Linear(width, width)
        self.fc2 = torch.nn.Linear(width, width)

    def forward(self, x):
        return x + self.fc2(torch.tanh(self.fc1(x)))


def export(
    module: torch.nn.Module,
    example: tuple,
    path: Path,
    seed: int = 0,
    dynamo: bool = False,
    input_names=None,
    output_names=None,
    dynamic_axes=None,
    opset_version: int | None = None,
) -> Path:
    """Export `module` (weights re-initialized from `seed`) to ONNX at `path`."""
    torch.manual_seed(seed)
    for p in module.parameters():  # deterministic weights independent of construction order
        with torch.no_grad():
            p.copy_(torch.randn(p.shape) * (1.0 / max(1, p.shape[-1]) ** 0.5))
    module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            example,
            str(path),
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=dynamic_axes,
            dynamo=dynamo,
            opset_version=opset_version,
        )
    return path


def export_as_is(module: torch.nn.Module, input_shape: tuple[int, ...], path: Path) -> str:
    """Export `module` in eval mode with the weights it has (seed torch before building it) to ONNX
    at `path`, opset 17: one input "x" of `input_shape` (random example), one output "y"."""
    with torch.no_grad():
        torch.onnx.export(
            module.eval(), (torch.randn(*input_shape),), str(path), input_names=["x"],
            output_names=["y"], opset_version=17, dynamo=False,
        )  # fmt: skip
    return str(path)


def ort_run(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def random_feeds(path: Path, seed: int = 1) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    feeds = {}
    for i in session.get_inputs():
        shape = [d if isinstance(d, int) else 1 for d in i.shape]
        feeds[i.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds
