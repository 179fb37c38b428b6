"""Same model and options -> byte-identical .lpu, whatever the hash seed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

import lpuc


def test_two_compiles_are_byte_identical(residual_onnx):
    a = lpuc.compile(residual_onnx, precision="fp16").to_bytes()
    b = lpuc.compile(residual_onnx, precision="fp16").to_bytes()
    assert a == b


SQUEEZENET = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / "light_squeezenet.onnx"


@pytest.mark.parametrize("model", ["mlp", "squeezenet"])
def test_identical_across_hash_seeds(model, mlp_onnx, tmp_path):
    """Also a CNN: conv lowering, pooling, concat, placement and allocation over many tiles."""
    path = mlp_onnx if model == "mlp" else SQUEEZENET
    outputs = []
    for seed in ("0", "12345", "random"):
        out = tmp_path / f"{model}_{seed}.lpu"
        env = {**os.environ, "PYTHONHASHSEED": seed}
        subprocess.run(
            [sys.executable, "-m", "lpuc.cli", "compile", str(path), "-o", str(out)],
            check=True,
            env=env,
            capture_output=True,
        )
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1] == outputs[2]
