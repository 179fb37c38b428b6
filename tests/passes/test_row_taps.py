"""row_taps: an int8 (or float) 3x3 stride-1 convolution accumulates its kernel rows on the MXM from a
1x3 Im2Col in a halo layout. The integer arithmetic is the same sum in another order, so its outputs
must equal the build without the pass bit for bit; both are checked against fp32 onnxruntime, and
the SXM must stream fewer vectors for the same model MACs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import lpuc
import lpuc.passes.row_taps as row_taps_pass
from lpuc.kernels.windows import halo_index, halo_tiles
from tests.kernels.oracle import run_onnxruntime
from tests.similarity import cosine

SHAPE = (1, 16, 20, 20)


def _model(path: Path) -> Path:
    """3x3 convolutions of 64 and 128 channels (K 576, 1152: several K tiles), stride 1 and padding
    1, a strided one (left alone) and a 1x1 one; 20x20 = 400 rows, cut into tiles of 134 rows."""
    torch.manual_seed(3)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(16, 64, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(64, 128, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(128, 64, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(64, 32, 3, stride=2, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(32, 8, 1),
    ).eval()
    with torch.no_grad():
        x = (torch.randn(*SHAPE),)
        torch.onnx.export(net, x, str(path), input_names=["x"], output_names=["y"], dynamo=False)
    return path


def test_halo_tiles_hold_each_steps_rows_and_the_halo_after_them():
    assert halo_tiles(10, 4, 3) == [(0, 7), (4, 11), (8, 13)]
    np.testing.assert_array_equal(halo_index(5, 3, 2), [0, 1, 2, 3, 4, 3, 4, 5, 6])


def test_row_taps_match_the_im2col_build_bit_for_bit(tmp_path):
    path = _model(tmp_path / "convs.onnx")
    # (tails off: the 128-channel convolution takes them otherwise, test_tails_take_fewer_row_passes)
    tapped = lpuc.compile(path, precision="int8", dump_ir=tmp_path / "ir", disable_passes=["tap_tails"])
    plain = lpuc.compile(path, precision="int8", disable_passes=["row_taps"])
    final = (tmp_path / "ir" / "99_final.graph.txt").read_text()
    # The second and third convolutions (the first reads the model input, channels-first, and the
    # fourth is strided: both keep their Im2Col).
    assert final.count("row_taps=") == 2
    assert final.count("kernel_shape=[1, 3]") == 2
    assert "kernel_shape=[3, 3]" in final  # the strided convolution keeps its Im2Col
    # The same model MACs and MXM bound; fewer vectors through the SXM, more MXM row passes.
    assert tapped.summary["macs"] == plain.summary["macs"]
    bound = tapped.summary["lower_bound_cycles"]["mxm"]
    assert bound == plain.summary["lower_bound_cycles"]["mxm"]

    def vectors(program, opcode: str) -> int:
        return sum(i.work.vectors for i in program.instructions if i.opcode == opcode)

    assert vectors(tapped, "sxm.kernel") < vectors(plain, "sxm.kernel")
    assert vectors(tapped, "mxm.mm") > vectors(plain, "mxm.mm")
    proto = onnx.load(str(path))
    rng = np.random.default_rng(11)
    for _ in range(2):
        x = rng.standard_normal(SHAPE).astype(np.float32)
        got, ref = tapped.run({"x": x})["y"], plain.run({"x": x})["y"]
        np.testing.assert_array_equal(got, ref)
        assert cosine(got, run_onnxruntime(proto, {"x": x})[0]) >= 0.99


@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_float_row_taps_match_onnxruntime_and_the_interpreter(tmp_path, monkeypatch, precision):
    """Every eligible convolution tapped (worth_it forced): a float product sums K in another order
    (tap rows outermost), so the outputs are checked against onnxruntime (fp16: cosine, fp32: rtol
    1e-4), the execution plan against the plain interpreter bit for bit."""
    path = _model(tmp_path / "convs.onnx")
    monkeypatch.setattr(row_taps_pass, "worth_it", lambda *args: True)
    tapped = lpuc.compile(path, precision=precision, dump_ir=tmp_path / "ir")
    plain = lpuc.compile(path, precision=precision, disable_passes=["row_taps"])
    final = (tmp_path / "ir" / "99_final.graph.txt").read_text()
    assert final.count("row_taps=") == 2
    assert tapped.summary["macs"] == plain.summary["macs"]
    proto = onnx.load(str(path))
    x = np.random.default_rng(5).standard_normal(SHAPE).astype(np.float32)
    got, ref = tapped.run({"x": x})["y"], run_onnxruntime(proto, {"x": x})[0]
    np.testing.assert_array_equal(got, tapped.run({"x": x}, interpret=True)["y"])
    if precision == "fp16":
        assert cosine(got, ref) >= 0.999
    else:
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()))


def test_fp16_taps_only_the_convolutions_that_add_no_mxm_row_passes(tmp_path):
    """fp16 MXM rows take 2 cycles through a 160-row K tile, and the MXM bounds the build: of 160
    channels (K 1440 -> 3 x 480: 9 K tiles a row either way) the SXM streams fewer vectors for the
    same row passes, tapped; of 128 (K 1152 -> 3 x 384: 8 -> 9 K tiles) plain taps would save vectors
    for one more pass a row, left alone without tails (the int8 rule, one cycle a pass, taps both);
    with tails (3 x 320 + 3 x 64: 8 K tiles) it adds none and is tapped."""
    torch.manual_seed(4)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(16, 160, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(160, 128, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(128, 64, 3, padding=1),
    ).eval()
    path = tmp_path / "wide.onnx"
    with torch.no_grad():
        x = (torch.randn(*SHAPE),)
        torch.onnx.export(net, x, str(path), input_names=["x"], output_names=["y"], dynamo=False)
    tapped = {}
    for precision, disabled in (("fp16", ["tap_tails"]), ("int8", ["tap_tails"]), ("fp16", [])):
        ir = tmp_path / f"{precision}{len(disabled)}"
        lpuc.compile(path, precision=precision, dump_ir=ir, disable_passes=disabled)
        final = (ir / "99_final.graph.txt").read_text()
        lines = [line for line in final.splitlines() if "row_taps=" in line]
        tapped[precision, len(disabled)] = [(line.split("=")[0], "tap_columns=" in line) for line in lines]
    assert len(tapped["fp16", 1]) == 1 and "/2/Conv/" in tapped["fp16", 1][0][0]
    assert len(tapped["int8", 1]) == 2
    (plain, plain_tails), (tails, with_tails) = tapped["fp16", 0]
    assert "/2/Conv/" in plain and not plain_tails and "/4/Conv/" in tails and with_tails


def test_bias_columns_beyond_the_last_lane_tile_of_a_small_image(tmp_path):
    """A 192-channel 3x3 convolution on a 6x6 image (Inception v1's 5b branch): tapped, its 1x3
    Im2Col has 576 model columns and 76 bias columns (fold_bias_columns), 652 in all, one tile row of
    three lane tiles. Its slab is not cut into halves where the second would hold only constant
    columns (they read no input lanes: the validator refused the build). No tails: 320 + 3 x 256 +
    76 columns would take a lane tile more a row."""
    torch.manual_seed(6)
    net = torch.nn.Sequential(  # (a 1x1 reduction first: a model input is Im2Col'd channels-first)
        torch.nn.Conv2d(96, 192, 1), torch.nn.ReLU(), torch.nn.Conv2d(192, 384, 3, padding=1)
    ).eval()
    path = tmp_path / "late.onnx"
    shape = (1, 96, 6, 6)
    with torch.no_grad():
        torch.onnx.export(
            net, (torch.randn(*shape),), str(path), input_names=["x"], output_names=["y"], dynamo=False
        )
    program = lpuc.compile(path, precision="int8", dump_ir=tmp_path / "ir")
    final = (tmp_path / "ir" / "99_final.graph.txt").read_text()
    assert "row_taps=" in final and "const_columns=" in final and "keep_columns=" not in final
    x = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
    got = program.run({"x": x})["y"]
    np.testing.assert_array_equal(got, program.run({"x": x}, interpret=True)["y"])
    assert cosine(got, run_onnxruntime(onnx.load(str(path)), {"x": x})[0]) >= 0.99


def _dense_layer(path: Path, shape: tuple[int, ...]) -> Path:
    """A DenseNet layer's pair: a 1x1 convolution to 128 channels, then a 128 -> 32 3x3 one."""
    torch.manual_seed(8)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(shape[1], 128, 1), torch.nn.ReLU(), torch.nn.Conv2d(128, 32, 3, padding=1)
    ).eval()
    with torch.no_grad():
        torch.onnx.export(
            net, (torch.randn(*shape),), str(path), input_names=["x"], output_names=["y"], dynamo=False
        )
    return path


def test_tails_take_fewer_row_passes_for_the_same_integers(tmp_path):
    """int8, 128 -> 32 3x3 on 20x20 (400 result rows in tiles of 134): a kernel row's 1x3 window is
    384 columns, 320 + 64 and bias columns, two K chunks a tap, six a result row. With tails the
    columns hold kernel row 0's first 320 and the three kernel rows' last 64 and the bias: three tap
    chunks and one, four a row, as the whole Im2Col's 1152 + bias columns take; the SXM streams no
    more vectors than for the plain taps. Integer sums in another order: the same bits as both other
    builds, and near onnxruntime."""
    shape = (1, 16, 20, 20)
    path = _dense_layer(tmp_path / "dense.onnx", shape)
    tails = lpuc.compile(path, precision="int8", dump_ir=tmp_path / "ir")
    plain = lpuc.compile(path, precision="int8", disable_passes=["tap_tails"])
    whole = lpuc.compile(path, precision="int8", disable_passes=["row_taps"])
    final = (tmp_path / "ir" / "99_final.graph.txt").read_text()
    (product,) = [line for line in final.splitlines() if "tap_columns=" in line]
    assert "row_taps=[0, 20, 40, 0]" in product
    width = int(final.split("/row_taps: i8[")[1].split("]")[0].split(",")[1])
    bias = width - 320 - 3 * 64
    assert bias > 0 and f"tap_columns=[0, 320, 0, 320, 0, 320, 320, {width}]" in product
    assert "halo_columns=320" in final and "kernel_shape=[3, 3]" in final

    def vectors(program, opcode: str) -> int:
        return sum(i.work.vectors for i in program.instructions if i.opcode == opcode)

    rows = 400  # (and the 1x1 convolution's one pass a row in each build)
    assert vectors(plain, "mxm.mm") == (6 + 1) * rows and vectors(tails, "mxm.mm") == (4 + 1) * rows
    assert vectors(whole, "mxm.mm") == (4 + 1) * rows
    assert vectors(tails, "sxm.kernel") <= vectors(plain, "sxm.kernel") < vectors(whole, "sxm.kernel")
    assert tails.summary["macs"] == plain.summary["macs"] == whole.summary["macs"]
    # The tails' lane tile is written in each result row once, not in the halo rows (no tap reads it
    # there); the first lane tile in every row of the halo layout.
    layout_rows = sum(v1 - v0 for v0, v1 in halo_tiles(rows, 134, 2 * 20))
    tapped = [i for i in tails.instructions if i.attrs.get("kernel") == "Im2Col" and "/2/Conv" in i.node]
    writes = [(tails.tiles[a.buf].c0 + a.lane0, a.nrows) for i in tapped for a in i.writes]
    assert sum(n for c, n in writes if c == 0) == layout_rows > rows
    assert sum(n for c, n in writes if c == 320) == rows
    proto = onnx.load(str(path))
    x = np.random.default_rng(12).standard_normal(shape).astype(np.float32)
    got = tails.run({"x": x})["y"]
    np.testing.assert_array_equal(got, plain.run({"x": x})["y"])
    np.testing.assert_array_equal(got, whole.run({"x": x})["y"])
    np.testing.assert_array_equal(got, tails.run({"x": x}, interpret=True)["y"])
    assert cosine(got, run_onnxruntime(proto, {"x": x})[0]) >= 0.99


def test_the_tapped_graph_with_tails_computes_the_convolution(tmp_path):
    """The graph IR after the passes (fp32: tails, 3 x 2 + 2 K tiles of 160 as the whole Im2Col's 8)
    evaluated node by node with the graph kernels (Im2Col keep_columns / halo_columns, the product's
    tap_columns), not the lowered program: it matches onnxruntime."""
    from lpuc.frontend.importer import import_model
    from lpuc.ir.evaluate import evaluate_graph_ir
    from lpuc.passes.pipeline import PassContext, run_pipeline
    from lpuc.target import load_target

    shape = (1, 16, 9, 7)
    path = _dense_layer(tmp_path / "dense.onnx", shape)
    proto = onnx.load(str(path))
    graph = run_pipeline(import_model(proto, "dense"), PassContext(load_target("tsp-v1"), "fp32"))
    (product,) = [n for n in graph.nodes if n.attr("tap_columns")]
    assert [int(t) for t in product.attr("row_taps")] == [0, 7, 14, 0]
    x = np.random.default_rng(13).standard_normal(shape).astype(np.float32)
    seen = {}
    evaluate_graph_ir(graph, {graph.inputs[0]: x}, seen.__setitem__)
    (want,) = run_onnxruntime(proto, {"x": x})
    got = seen[graph.outputs[0]]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))


def test_tails_of_a_one_tile_row_image_in_column_halves(tmp_path):
    """int8 128 -> 32 3x3 on 7x7 (DenseNet's last block): 49 result rows, one tile row of the 569
    columns' two lane tiles, which two slabs write as halves (one per SXM): the second, the tails and
    bias, reads the channels its kept columns use and writes the result rows only. The same bits as
    plain taps, and near onnxruntime."""
    shape = (1, 16, 7, 7)
    path = _dense_layer(tmp_path / "dense7.onnx", shape)
    tails = lpuc.compile(path, precision="int8", dump_ir=tmp_path / "ir")
    plain = lpuc.compile(path, precision="int8", disable_passes=["tap_tails"])
    assert "tap_columns=" in (tmp_path / "ir" / "99_final.graph.txt").read_text()
    tapped = [i for i in tails.instructions if i.attrs.get("kernel") == "Im2Col" and "/2/Conv" in i.node]
    halves = sorted((tails.tiles[i.writes[0].buf].c0, i) for i in tapped)
    assert [c for c, _ in halves] == [0, 320]
    assert [a.nrows for a in halves[1][1].writes] == [49]  # (the halo layout: 49 + 14 rows)
    x = np.random.default_rng(14).standard_normal(shape).astype(np.float32)
    got = tails.run({"x": x})["y"]
    np.testing.assert_array_equal(got, plain.run({"x": x})["y"])
    np.testing.assert_array_equal(got, tails.run({"x": x}, interpret=True)["y"])
    assert cosine(got, run_onnxruntime(onnx.load(str(path)), {"x": x})[0]) >= 0.99
