"""Same model and options -> byte-identical .lpu, whatever the hash seed."""

from __future__ import annotations

import os
import subprocess
import sys

import lpuc


def test_two_compiles_are_byte_identical(residual_onnx):
    a = lpuc.compile(residual_onnx, precision="fp16").to_bytes()
    b = lpuc.compile(residual_onnx, precision="fp16").to_bytes()
    assert a == b


def test_identical_across_hash_seeds(mlp_onnx, tmp_path):
    outputs = []
    for seed in ("0", "12345", "random"):
        out = tmp_path / f"mlp_{seed}.lpu"
        env = {**os.environ, "PYTHONHASHSEED": seed}
        subprocess.run([sys.executable, "-m", "lpuc.cli", "compile", str(mlp_onnx), "-o", str(out)],
                       check=True, env=env, capture_output=True)
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1] == outputs[2]
