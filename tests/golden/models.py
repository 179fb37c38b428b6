"""The golden model set: the bundled `models/*.onnx` plus torch models the tests define, exported to
ONNX with fixed seeds so that the same torch gives the same files.

The tests' MLP and residual block (tests/conftest.py) export byte-identical to the bundled
`models/mlp.onnx` and `models/residual.onnx`, so they are covered by those; `residual96` is the
tests' 96-feature residual block (partial 64-lane tiles on small targets).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from tests import zoo
from tests.models import ResidualBlock, export

ROOT = Path(__file__).resolve().parents[2]
BUNDLED = ROOT / "models"

# name: (module factory, example input factory); exported with tests.models.export at seed 0, which
# re-initializes every parameter from the seed.
TORCH_MODELS: dict[str, tuple[Callable[[], torch.nn.Module], Callable[[], torch.Tensor]]] = {
    "residual96": (lambda: ResidualBlock(96), lambda: torch.zeros(2, 40, 96)),
    "resnet": (lambda: zoo.randomize_batchnorm(zoo.ResNetish(), seed=3), lambda: torch.zeros(1, 3, 32, 32)),
    "encoder": (lambda: zoo.transformer_encoder(norm_first=False), lambda: torch.zeros(2, 16, 64)),
    "gpt": (lambda: zoo.GPT(), lambda: torch.zeros(1, 24, dtype=torch.int64)),
    "lstm": (lambda: zoo.Recurrent("lstm"), lambda: torch.zeros(2, 12, 16)),
}


def bundled_names() -> list[str]:
    return sorted(p.stem for p in BUNDLED.glob("*.onnx"))


def names() -> list[str]:
    """Every golden model, sorted; a bundled model and a torch model never share a name."""
    bundled = bundled_names()
    clash = set(bundled) & set(TORCH_MODELS)
    if clash:
        raise ValueError(f"golden model names used twice: {sorted(clash)}")
    return sorted([*bundled, *TORCH_MODELS])


def model_path(name: str, directory: Path) -> Path:
    """The ONNX file of golden model `name`: the bundled file, or a fresh export into `directory`."""
    if name in TORCH_MODELS:
        make_module, make_input = TORCH_MODELS[name]
        torch.manual_seed(0)
        path = Path(directory) / f"{name}.onnx"
        return export(make_module(), (make_input(),), path, input_names=["input"], output_names=["output"])
    path = BUNDLED / f"{name}.onnx"
    if not path.is_file():
        raise KeyError(f"unknown golden model {name!r}")
    return path
