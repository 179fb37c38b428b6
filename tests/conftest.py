from __future__ import annotations

import pytest
import torch

from tests.models import MLP, ResidualBlock, export


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def mlp_onnx(models_dir):
    return export(
        MLP(), (torch.zeros(8, 64),), models_dir / "mlp.onnx", input_names=["x"], output_names=["y"]
    )


@pytest.fixture(scope="session")
def residual_onnx(models_dir):
    return export(
        ResidualBlock(),
        (torch.zeros(2, 64, 256),),
        models_dir / "residual.onnx",
        input_names=["x"],
        output_names=["y"],
    )


@pytest.fixture(scope="session")
def small_residual_onnx(models_dir):
    """96 features: one full and one partial 64-lane block on tsp-mini."""
    return export(
        ResidualBlock(96),
        (torch.zeros(2, 40, 96),),
        models_dir / "residual96.onnx",
        input_names=["x"],
        output_names=["y"],
    )


@pytest.fixture(scope="session")
def mlp_program(mlp_onnx):
    import lpuc

    return lpuc.compile(mlp_onnx, precision="fp32")
