"""band_conv_rows: a narrow convolution a MaxPool reads packs bands of image rows side by side; the
pool runs on the banded result and UnbandRows puts its rows in place. Numerics are onnxruntime's,
the MXM streams fewer rows and the bound counts no more than the convolution's own MACs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lpuc
from lpuc.passes.band_conv_rows import row_bands
from tests.models import export_as_is, ort_run
from tests.similarity import assert_matches


def _onet_stem(tmp_path) -> str:
    """ONet's first stage: 3x3 conv of RGB to 32 channels (46x46 results), PReLU, 3x3 stride-2
    MaxPool in ceil mode (its last window reads past the map), then a 3x3 conv."""
    torch.manual_seed(7)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 32, 3),
        torch.nn.PReLU(32),
        torch.nn.MaxPool2d(3, 2, ceil_mode=True),
        torch.nn.Conv2d(32, 16, 3),
    ).eval()
    with torch.no_grad():
        net[1].weight.uniform_(0.0, 0.5)  # distinct slopes per channel: their tiling is checked
    return export_as_is(net, (1, 3, 48, 48), tmp_path / "onet_stem.onnx")


@pytest.mark.parametrize("kh,sh,pad", [(3, 2, 1), (3, 2, 0), (2, 2, 0), (3, 1, 0), (3, 3, 2)])
@pytest.mark.parametrize("hc", [20, 33, 46, 47])
@pytest.mark.parametrize("p", [2, 4, 8])
def test_bands_cover_every_pooled_row_once_from_inside_the_band(hc, kh, sh, pad, p):
    """Kept rows tile the pooled rows in order; each kept row's window lies inside its band, except
    the last band's, which ends where the map ends (so its end padding is the model's)."""
    ho = (hc + pad - kh) // sh + 1
    bands = row_bands(hc, ho, kh, sh, p)
    assert bands is not None
    starts, keep, rows = bands
    assert 1 <= len(starts) <= p and all(k >= 1 for k in keep)
    assert [r for s, k in zip(starts, keep) for r in range(s, s + k)] == list(range(ho))
    assert sh * starts[-1] + rows == hc  # the last band ends at the map's end
    for s in starts:
        assert sh * s + rows <= hc  # every band inside the map
    for k in keep[:-1]:
        assert sh * (k - 1) + kh <= rows  # its last kept window inside the band


def test_onet_geometry():
    """ONet (46 rows, 3x3 stride 2, ceil): 4 bands of 14 rows keep 6, 6, 4 and 7 pooled rows."""
    assert row_bands(46, 23, 3, 2, 4) == ([0, 6, 12, 16], [6, 6, 4, 7], 14)


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_banded_stem_matches_onnxruntime(tmp_path, precision):
    path = _onet_stem(tmp_path)
    program = lpuc.compile(path, precision=precision, dump_ir=tmp_path / "ir")
    final = (tmp_path / "ir" / "99_final.graph.txt").read_text()
    assert "UnbandRows" in final and "row_bands" in final
    x = np.random.default_rng(4).standard_normal((1, 3, 48, 48)).astype(np.float32)
    (want,) = ort_run(path, {"x": x})
    got = program.run({"x": x})["y"]
    assert_matches(got, want, precision)


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_banding_streams_fewer_rows_and_counts_no_more_macs(tmp_path, precision):
    """The banded product streams fewer rows than the unpacked one; its model MACs (what the MXM
    bound counts) are at most the convolution's own though the MXM multiplies zero blocks and the
    bands' overlapping rows too, and the banded schedule is faster than the one without banding
    (fp16: with pack_conv_rows' consecutive rows instead, which need unpacking for the pool)."""
    path = _onet_stem(tmp_path)
    banded = lpuc.compile(path, precision=precision)
    plain = lpuc.compile(path, precision=precision, disable_passes=["band_conv_rows"])
    unpacked = lpuc.compile(path, precision=precision, disable_passes=["band_conv_rows", "pack_conv_rows"])

    def mm_rows(program) -> int:
        return sum(i.work.vectors for i in program.instructions if i.opcode == "mxm.mm")

    assert mm_rows(banded) < mm_rows(unpacked)
    assert 0.95 * plain.summary["macs"] <= banded.summary["macs"] <= plain.summary["macs"]
    for kind in ("mxm", "lw"):
        assert banded.summary["lower_bound_cycles"][kind] <= plain.summary["lower_bound_cycles"][kind]
    assert banded.summary["cycles"] < plain.summary["cycles"]


def _wide_stem(tmp_path) -> str:
    """A SqueezeNet-like stem on a 96x96 image (288 rows of its channels-first view: more than a
    banded op reads whole): 3x3 stride-2 conv to 64 channels, ReLU, 3x3 stride-2 MaxPool."""
    torch.manual_seed(3)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 64, 3, stride=2), torch.nn.ReLU(), torch.nn.MaxPool2d(3, 2)
    ).eval()
    return export_as_is(net, (1, 3, 96, 96), tmp_path / "wide_stem.onnx")


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_banded_slabs_read_windows_of_a_large_input(tmp_path, precision):
    """Each copy of a banded Im2Col over a large image reads per band only the rows near the band's
    (fewer than the whole image), each copy of UnbandRows only the banded rows it places; the
    result is onnxruntime's."""
    path = _wide_stem(tmp_path)
    program = lpuc.compile(path, precision=precision, dump_ir=tmp_path / "ir")
    assert "UnbandRows" in (tmp_path / "ir" / "99_final.graph.txt").read_text()
    copies = {"im2col_banded": 0, "unband": 0}
    for ins in program.instructions:
        last = ins.node.split("/")[-1]  # (int8 names: .../matmul_banded/im2col_int8, unbandrows_int8)
        kind = "im2col_banded" if "im2col" in last and "banded" in ins.node else last[:6]
        if kind in copies and ins.opcode == "sxm.kernel":
            copies[kind] += 1
            whole = 3 * 96 if kind == "im2col_banded" else None
            rows = sum(r.nrows for r in ins.reads)
            assert whole is None or rows < whole
    assert copies["im2col_banded"] > 1 and copies["unband"] > 1
    unband_rows = sum(r.nrows for i in program.instructions if "/unband" in i.node for r in i.reads)
    assert unband_rows <= 23 * 23  # (each pooled row read once in all: none twice)
    x = np.random.default_rng(5).standard_normal((1, 3, 96, 96)).astype(np.float32)
    (want,) = ort_run(path, {"x": x})
    got = program.run({"x": x})["y"]
    assert_matches(got, want, precision)
