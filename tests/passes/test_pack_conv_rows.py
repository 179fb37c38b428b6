"""pack_conv_rows: a float build's tall, narrow convolution streams p Im2Col rows side by side
(block-diagonal weights), unpacked by one reshape; the numerics are onnxruntime's and the MXM bound
does not count the zero blocks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lpuc
import lpuc.passes.pack_conv_rows as pack_conv_rows
from lpuc.passes.pack_conv_rows import rows_side_by_side
from tests.models import ort_run

# The stems' MaxPool would have band_conv_rows pack their convolution by bands of image rows first.
NO_BANDS = "band_conv_rows"


def _stem(tmp_path, size: int = 32) -> str:
    """A stem's shape: a 3x3 convolution of RGB to 16 channels, ReLU, 2x2 MaxPool, a 1x1 conv."""
    torch.manual_seed(3)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 8, 1),
    ).eval()
    path = tmp_path / f"stem{size}.onnx"
    with torch.no_grad():
        torch.onnx.export(
            net, (torch.randn(1, 3, size, size),), str(path), input_names=["x"], output_names=["y"],
            opset_version=17, dynamo=False,
        )  # fmt: skip
    return str(path)


@pytest.fixture
def low_threshold(monkeypatch):
    monkeypatch.setattr(pack_conv_rows, "PACK_MIN_ROWS", 256)  # the test's 1024 result rows pack


def test_choice_of_rows_side_by_side():
    """tsp-v1 fp16 (k_tile 160): RGB 3x3 to 64 channels packs 4 rows in one weight tile (5 would not
    divide 12544); 7x7 (K 147): as many passes packed by 4 as unpacked, a tie the larger p wins
    unless ties are off; 64 channels 3x3 (K 576) fills its tiles already: no packing."""
    assert rows_side_by_side(12544, 27, 64, 320, 160) == (4, 1)
    assert rows_side_by_side(12321, 27, 64, 320, 160) == (3, 1)  # 111 x 111: 3 divides, 4 and 5 not
    assert rows_side_by_side(12544, 147, 64, 320, 160) == (4, 4)
    assert rows_side_by_side(12544, 147, 64, 320, 160, ties=False) == (1, 1)
    assert rows_side_by_side(12544, 576, 64, 320, 160) == (1, 4)
    assert rows_side_by_side(12544, 27, 24, 320, 160) == (8, 2)  # 216 lanes in 2 tiles
    assert rows_side_by_side(12544, 27, 24, 320, 160, ties=False) == (4, 1)


@pytest.mark.parametrize("precision,check", [("fp32", "allclose"), ("fp16", "cosine")])
def test_packed_stem_matches_onnxruntime(tmp_path, low_threshold, precision, check):
    path = _stem(tmp_path)
    program = lpuc.compile(path, precision=precision, dump_ir=tmp_path / "ir", disable_passes=[NO_BANDS])
    final = (tmp_path / "ir" / "99_final.graph.txt").read_text()
    assert "pack_rows=16" in final  # 432 lanes: 3 weight tiles for 16 rows
    assert {i.attrs.get("block_diagonal") for i in program.instructions if i.opcode == "mxm.mm"} >= {16}
    x = np.random.default_rng(4).standard_normal((1, 3, 32, 32)).astype(np.float32)
    (want,) = ort_run(path, {"x": x})
    got = program.run({"x": x})["y"]
    if check == "allclose":
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    else:
        a, b = got.astype(np.float64).ravel(), want.astype(np.float64).ravel()
        assert a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) >= 0.999


def test_packing_streams_fewer_rows_and_keeps_the_mxm_bound(tmp_path, low_threshold):
    """The MXM streams fewer activation rows packed; the bound's MACs and weights are the
    convolution's own, so the MXM and weight-load bounds are the unpacked build's although the MXM
    loads and multiplies the zero blocks too."""
    path = _stem(tmp_path)
    packed = lpuc.compile(path, precision="fp16", disable_passes=[NO_BANDS])
    plain = lpuc.compile(path, precision="fp16", disable_passes=["pack_conv_rows", NO_BANDS])

    def mm_rows(program) -> int:
        return sum(i.work.vectors for i in program.instructions if i.opcode == "mxm.mm")

    assert mm_rows(packed) < mm_rows(plain)
    assert packed.summary["macs"] == plain.summary["macs"]  # the convolution's, no zero block's
    for kind in ("mxm", "lw"):  # the weight loads' bound counts the model's weights, not p^2 times
        assert packed.summary["lower_bound_cycles"][kind] == plain.summary["lower_bound_cycles"][kind]


def test_int8_builds_are_left_to_quantize_int8(tmp_path, low_threshold):
    """quantize_int8 packs int8 products its own way; this pass leaves int8 builds as they are."""
    path = _stem(tmp_path)
    a = lpuc.compile(path, precision="int8")
    b = lpuc.compile(path, precision="int8", disable_passes=["pack_conv_rows"])
    assert a.summary["cycles"] == b.summary["cycles"] and len(a.instructions) == len(b.instructions)


def test_int8_packed_bound_counts_the_convolutions_macs(tmp_path, monkeypatch):
    """quantize_int8's packed product (rows side by side from its PACK_MIN_ROWS) is block_diagonal
    too: the MACs the bound counts are the two convolutions' own, not the zero blocks' the MXM
    multiplies; the numerics stay onnxruntime's (cosine)."""
    import lpuc.passes.quantize_int8 as quantize_int8

    monkeypatch.setattr(quantize_int8, "PACK_MIN_ROWS", 256)
    path = _stem(tmp_path, size=40)
    program = lpuc.compile(path, precision="int8", dump_ir=tmp_path / "ir", disable_passes=[NO_BANDS])
    final = (tmp_path / "ir" / "99_final.graph.txt").read_text()
    assert "pack_rows=20" in final  # 1600 rows of 16 channels: 20 side by side in 320 lanes
    mms = [i for i in program.instructions if i.opcode == "mxm.mm"]
    lanes = [i.attrs["lanes"] if i.attrs.get("keep") else i.writes[0].nlanes for i in mms]
    streamed = sum(i.reads[0].nrows * i.reads[0].nlanes * n for i, n in zip(mms, lanes))
    assert streamed > 1600 * 27 * 16 + 400 * 16 * 8  # the zero blocks pass the MXM too
    assert sum(i.work.macs for i in mms) == 1600 * 27 * 16 + 400 * 16 * 8
    x = np.random.default_rng(5).standard_normal((1, 3, 40, 40)).astype(np.float32)
    (want,) = ort_run(path, {"x": x})
    a, b = program.run({"x": x})["y"].astype(np.float64).ravel(), want.astype(np.float64).ravel()
    assert a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) >= 0.99


def test_short_results_pack_only_for_half_the_mxm_passes(tmp_path):
    """Under PACK_MIN_ROWS a product packs only if that at least halves its MXM row passes: 1024
    rows of K 27 do (16 side by side in 3 weight tiles), of K 144 (16 channels 3x3) not (10 side by
    side would take 9 tiles: the golden small ResNet got slower so)."""
    assert pack_conv_rows.PACK_MIN_ROWS > 1024
    torch.manual_seed(5)
    for channels, packs in ((3, True), (16, False)):
        net = torch.nn.Sequential(torch.nn.Conv2d(channels, 16, 3, padding=1), torch.nn.ReLU()).eval()
        path = tmp_path / f"conv{channels}.onnx"
        with torch.no_grad():
            torch.onnx.export(
                net, (torch.randn(1, channels, 32, 32),), str(path), input_names=["x"],
                output_names=["y"], opset_version=17, dynamo=False,
            )  # fmt: skip
        lpuc.compile(str(path), precision="fp16", dump_ir=tmp_path / f"ir{channels}")
        final = (tmp_path / f"ir{channels}" / "99_final.graph.txt").read_text()
        assert ("pack_rows=16" in final) is packs and ("pack_rows" in final) is packs
