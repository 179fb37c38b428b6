"""Pool slabs (lpuc/lowering/pool_slabs.py): a channels-last MaxPool whose result is one tile row
while its input is several has its result cut into as many tiles, one slab each. Checked on ONet's
second stage (21x21x64 -> 10x10x64): the slabs match onnxruntime (and the execution plan the
interpreter, tests/conftest.py), stream at least the rows the single instruction streamed (no
cycle is charged less), and the schedule is shorter than with the strategy switched off."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lpuc
from tests.models import export_as_is, ort_run
from tests.similarity import assert_matches


def _onet_stage2(tmp_path) -> str:
    """ONet's second stage: 3x3 conv of 32 to 64 channels (21x21 results), PReLU, 3x3 stride-2
    MaxPool in ceil mode (10x10), then a 3x3 conv."""
    torch.manual_seed(11)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(32, 64, 3),
        torch.nn.PReLU(64),
        torch.nn.MaxPool2d(3, 2, ceil_mode=True),
        torch.nn.Conv2d(64, 64, 3),
    ).eval()
    with torch.no_grad():
        net[1].weight.uniform_(0.0, 0.5)
    return export_as_is(net, (1, 32, 23, 23), tmp_path / "onet_stage2.onnx")


def _pools(program) -> list:
    kernels = [i for i in program.instructions if i.opcode == "vxm.kernel"]
    return [i for i in kernels if i.attrs.get("kernel") == "MaxPool"]


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_pool_slabs_match_onnxruntime(tmp_path, precision):
    path = _onet_stage2(tmp_path)
    program = lpuc.compile(path, precision=precision)
    assert len(_pools(program)) == 3  # (441 input rows in three tiles: 40, 40 and 20 result rows)
    x = np.random.default_rng(5).standard_normal((1, 32, 23, 23)).astype(np.float32)
    (want,) = ort_run(path, {"x": x})
    got = program.run({"x": x})["y"]
    assert_matches(got, want, precision)


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_pool_slabs_charge_no_less_and_shorten_the_schedule(tmp_path, precision):
    path = _onet_stage2(tmp_path)
    sliced = lpuc.compile(path, precision=precision)
    whole = lpuc.compile(path, precision=precision, disable_passes=["pool_slabs"])
    (one,) = _pools(whole)
    slabs = _pools(sliced)
    assert len(slabs) == 3
    # The slabs together stream every input row their windows read (shared rows twice) and every
    # result row: at least what the single instruction streamed.
    assert sum(i.work.vectors for i in slabs) >= one.work.vectors
    assert sum(i.work.alu_ops for i in slabs) >= one.work.alu_ops
    assert len({i.unit for i in slabs}) > 1  # side by side on several ALU groups
    assert sliced.summary["cycles"] < whole.summary["cycles"]
