"""Concats along the channels done in place (lowering strategy concat_in_place,
lpuc/lowering/concat_in_place.py): the operands' MMs write the result's tiles at their lane offsets,
DenseNet's chain of Concats becomes one tensor with one SXM Pad for its pooled input, and numerics
match onnxruntime with the strategy on and off."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lpuc
from lpuc.program import Program
from tests.models import export, ort_run
from tests.similarity import assert_matches

OFF = ["concat_in_place"]


class _Fire(torch.nn.Module):
    """SqueezeNet's fire module: a 1x1 and a 3x3 expansion of one squeeze, concatenated."""

    def __init__(self) -> None:
        super().__init__()
        self.squeeze = torch.nn.Conv2d(16, 16, 1)
        self.e1 = torch.nn.Conv2d(16, 32, 1)
        self.e3 = torch.nn.Conv2d(16, 48, 3, padding=1)
        self.head = torch.nn.Conv2d(80, 16, 1)

    def forward(self, x):
        s = torch.relu(self.squeeze(x))
        y = torch.cat([torch.relu(self.e1(s)), torch.relu(self.e3(s))], 1)
        return self.head(y)


class _Dense(torch.nn.Module):
    """A DenseNet block: x[k+1] = cat(x[k], convs(relu(bn(x[k])))) on a pooled input, then its
    transition's BN, ReLU and 1x1 convolution."""

    def __init__(self, bottleneck: bool, layers: int = 3) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 32, 3, padding=1)
        self.norms = torch.nn.ModuleList(torch.nn.BatchNorm2d(32 + 16 * k) for k in range(layers + 1))
        # With DenseNet's 1x1 bottleneck the 3x3 convolution's K is 288; without, up to 576, which
        # an fp16 build splits over planes, summed by a map that writes the Concat's lanes.
        self.convs = torch.nn.ModuleList(
            torch.nn.Sequential(
                torch.nn.Conv2d(32 + 16 * k, 32, 1), torch.nn.ReLU(), torch.nn.Conv2d(32, 16, 3, padding=1)
            )
            if bottleneck
            else torch.nn.Conv2d(32 + 16 * k, 16, 3, padding=1)
            for k in range(layers)
        )
        self.head = torch.nn.Conv2d(32 + 16 * layers, 8, 1)

    def forward(self, x):
        x = torch.nn.functional.max_pool2d(self.stem(x), 2)
        for norm, conv in zip(self.norms, self.convs):
            x = torch.cat([x, conv(torch.relu(norm(x)))], 1)
        return self.head(torch.relu(self.norms[-1](x)))


class _PooledBranch(torch.nn.Module):
    """The concat's second operand is also max-pooled (a kernel reads it whole): it stays a copy."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Conv2d(8, 16, 1)
        self.b = torch.nn.Conv2d(8, 16, 1)

    def forward(self, x):
        b = self.b(x)
        return torch.cat([self.a(x), b], 1), torch.nn.functional.max_pool2d(b, 2)


def _randomized(model: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("concat_in_place")
    x, x3 = torch.randn(1, 16, 20, 20), torch.randn(1, 3, 24, 24)
    return {
        "fire": export(_randomized(_Fire()), (x,), d / "fire.onnx", output_names=["y"]),
        "dense": export(_randomized(_Dense(True)), (x3,), d / "dense.onnx", output_names=["y"]),
        "dense_wide": export(_randomized(_Dense(False)), (x3,), d / "dense_wide.onnx", output_names=["y"]),
        "pooled": export(
            _PooledBranch(), (torch.randn(1, 8, 12, 12),), d / "pooled.onnx", output_names=["y", "p"]
        ),
    }


def _concats(p: Program) -> list:
    return [i for i in p.instructions if i.attrs.get("kernel") == "Concat"]


def _pads(p: Program) -> list:
    return [i for i in p.instructions if i.attrs.get("kernel") == "Pad"]


def _feeds(path, seed=1) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    inp = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_inputs()[0]
    shape = [int(d) for d in inp.shape]
    return {inp.name: np.random.default_rng(seed).standard_normal(shape).astype(np.float32)}


def _check(path, p: Program, precision: str) -> None:
    feeds = _feeds(path)
    want = ort_run(path, feeds)
    got = p.run(feeds)
    interpreted = p.run(feeds, interpret=True)
    for name, w in zip(p.outputs, want):
        g = got[name.name]
        np.testing.assert_array_equal(g, interpreted[name.name])
        assert np.std(w) > 0
        assert_matches(g, w, precision, atol=1e-5 * np.abs(w).max())


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_fire_concat_is_written_by_its_convolutions(models, precision):
    """No Concat copy is left: the 3x3 expansion's MMs write the result's tiles from lane 32 on (the
    1x1's 32 channels first), their weights and per-channel epilogue constants read from copies at
    those lanes;
    fewer cycles than with the copy; outputs match onnxruntime (and the interpreter bit for bit)."""
    path = models["fire"]
    on = lpuc.compile(path, precision=precision)
    off = lpuc.compile(path, precision=precision, disable_passes=OFF)
    assert _concats(off) and not _concats(on) and not _pads(on)
    shifted = [
        i
        for i in on.instructions
        if i.opcode == "mxm.mm" and i.writes and i.writes[0].lane0 - on.tiles[i.writes[0].buf].lane == 32
    ]
    assert shifted and all(w.nlanes == 48 for i in shifted for w in i.writes)
    loads = {i.attrs["group"]: i for i in on.instructions if i.opcode == "mxm.lw"}
    for i in shifted:  # the weights and per-channel epilogue constants sit at the result's lanes
        consts = [a for a in i.reads[1:] if on.tiles[a.buf].kind == "const" and a.nlanes == 48]
        assert all(a.lane0 - on.tiles[a.buf].lane == 32 for a in consts)
        weights = loads[i.attrs["group"]].reads
        assert weights and all(w.lane0 - on.tiles[w.buf].lane == 32 for w in weights)
    assert on.summary["cycles"] < off.summary["cycles"]
    _check(path, on, precision)


@pytest.mark.parametrize(
    ("model", "precision"),
    [("dense", "fp32"), ("dense", "fp16"), ("dense", "int8"), ("dense_wide", "fp16"), ("dense_wide", "fp32")],
)
def test_dense_block_is_one_tensor_with_one_copy_of_its_input(models, model, precision):
    """Three chained Concats: no copy of a growing tensor is left, only a Pad per row tile copying the
    pooled input into the block's tensor; numerics match onnxruntime. Without the bottleneck (fp16)
    the K-split parts' MMs write their partial sums at the lanes their sum map writes."""
    path = models[model]
    on = lpuc.compile(path, precision=precision)
    off = lpuc.compile(path, precision=precision, disable_passes=OFF)
    assert len({i.node for i in _concats(off)}) == 3
    assert not _concats(on) and _pads(on) and len({i.node for i in _pads(on)}) == 1
    pad_vectors = sum(i.work.vectors for i in _pads(on))
    assert pad_vectors < sum(i.work.vectors for i in _concats(off)) / 2
    assert on.summary["cycles"] < off.summary["cycles"]
    # Every MM writing at later lanes of its tile (the K-split parts' too) loads its weights there.
    loads = {i.attrs["group"]: i for i in on.instructions if i.opcode == "mxm.lw"}
    shifted = [
        (i, i.writes[0].lane0 - on.tiles[i.writes[0].buf].lane)
        for i in on.instructions
        if i.opcode == "mxm.mm" and i.writes and i.writes[0].lane0 > on.tiles[i.writes[0].buf].lane
    ]
    assert shifted
    for mm, shift in shifted:
        assert all(w.lane0 - on.tiles[w.buf].lane == shift for w in loads[mm.attrs["group"]].reads)
    _check(path, on, precision)


def test_an_operand_a_kernel_also_reads_is_copied(models):
    """The second operand is max-pooled as well (a kernel reads its tiles whole, where its own layout
    puts them): it cannot move into the Concat's tiles at lane 16, so a Pad copies it there; the first
    operand's MM still writes the Concat's tiles. Numerics match onnxruntime."""
    path = models["pooled"]
    p = lpuc.compile(path, precision="fp32")
    assert not _concats(p) and _pads(p)
    for pad in _pads(p):
        assert pad.attrs["attrs"]["pads"][1] == 16
    concat_tiles = {w.buf for pad in _pads(p) for w in pad.writes}
    writers = [i for i in p.instructions if i.opcode == "mxm.mm" and {w.buf for w in i.writes} & concat_tiles]
    assert writers and all(w.lane0 == p.tiles[w.buf].lane for i in writers for w in i.writes)
    _check(path, p, "fp32")
