"""Regenerate the bundled demo models (fixed seeds, so the files are reproducible).

.venv/bin/python models/export_models.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.models import MLP, ResidualBlock, export  # noqa: E402

HERE = Path(__file__).resolve().parent

MODELS = {
    # name: (module, example input); all exported with the TorchScript exporter at seed 0
    "mlp": (lambda: MLP((64, 128, 128, 10)), (8, 64)),
    "residual": (lambda: ResidualBlock(256), (2, 64, 256)),
}


def main() -> None:
    for name, (make, shape) in MODELS.items():
        path = export(
            make(), (torch.zeros(*shape),), HERE / f"{name}.onnx", input_names=["x"], output_names=["y"]
        )
        print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
