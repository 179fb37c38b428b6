"""The lowering strategies that bring schedules near the chip (lpuc.lowering.STRATEGIES), each shown
on the program it produces and checked against onnxruntime; `disable_passes` turns each one off."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import lpuc
from lpuc.lowering import STRATEGIES
from tests.models import export, ort_run
from tests.onnx_builders import single_op_model


def _matmul(tmp_path, m: int, k: int, n: int, name: str = "mm.onnx"):
    w = np.random.default_rng(0).normal(size=(k, n)).astype(np.float32)
    path = tmp_path / name
    onnx.save(single_op_model("MatMul", [("x", [m, k])], [("y", [m, n])], initializers={"w": w}), path)
    return path


def _check(program, path, feeds, rtol=2e-2, atol=1e-3):
    (want,) = ort_run(path, feeds)
    got = program.run(feeds)["y"]
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol * float(np.abs(want).max()))
    assert np.std(want) > 0


def test_k_chunks_accumulate_in_the_plane(tmp_path):
    """K = 400: three chunks. Each 320-row segment is one chain on one plane: the first two MMs keep
    their sums (no write), the last writes; each MM takes in its rows while the previous one's results
    drain (fp32: 6 cycles per row, so one bank port serves each MM's fp32 activations)."""
    path = _matmul(tmp_path, 1280, 400, 16)
    program = lpuc.compile(path, precision="fp32")
    mms = [i for i in program.instructions if i.opcode == "mxm.mm"]
    chains = [sorted((i for i in mms if i.unit == u), key=lambda i: i.start) for u in {i.unit for i in mms}]
    assert len(chains) == 4  # one per plane
    for chain in chains:
        assert [bool(i.attrs.get("keep")) for i in chain] == [True, True, False]
        assert [bool(i.attrs.get("from_acc")) for i in chain] == [False, True, True]
        assert [len(i.writes) for i in chain] == [0, 0, 1] and len({i.unit for i in chain}) == 1
        assert all(a.start < b.start < a.end for a, b in zip(chain, chain[1:])), "the plane pipelines"
    feeds = {"x": np.random.default_rng(1).normal(size=(1280, 400)).astype(np.float32)}
    _check(program, path, feeds, rtol=1e-4, atol=1e-6)
    old = lpuc.compile(path, precision="fp32", disable_passes=["mxm_accumulators"])
    assert sum(bool(i.attrs.get("acc")) for i in old.instructions) == 8  # through SRAM
    assert program.summary["cycles"] < old.summary["cycles"]
    np.testing.assert_allclose(old.run(feeds)["y"], program.run(feeds)["y"], rtol=1e-6, atol=1e-5)


def test_k_split_over_planes_when_chains_are_few(tmp_path):
    """One 300-row chain of three K chunks would keep one plane busy and three idle: it becomes three
    one-chunk parts on three planes, writing partial results that a VXM map adds into the output.
    (fp16: an fp32 build, the exact reference, keeps the sequential sum over K.)"""
    path = _matmul(tmp_path, 300, 400, 16)
    program = lpuc.compile(path, precision="fp16")
    mms = [i for i in program.instructions if i.opcode == "mxm.mm"]
    assert len(mms) == 3 and len({i.unit for i in mms}) == 3
    assert not any(i.attrs.get("keep") or i.attrs.get("from_acc") for i in mms)
    (add,) = [i for i in program.instructions if i.opcode == "vxm.map"]
    assert {a.buf for a in add.reads} == {w.buf for i in mms for w in i.writes}
    feeds = {"x": np.random.default_rng(1).normal(size=(300, 400)).astype(np.float32)}
    _check(program, path, feeds)
    exact = lpuc.compile(path, precision="fp32")
    assert not any(i.opcode == "vxm.map" for i in exact.instructions)


@pytest.mark.parametrize(("k", "split"), [(768, False), (1600, True)])
def test_k_split_only_for_long_chains_or_idle_planes(tmp_path, k, split):
    """Three 128-row chains (N = 768: three chunks) on four planes: with K = 768 (five chunks, a
    transformer's attention output) each chain stays whole, its sum in the plane's accumulators; with
    K = 1600 (ten chunks, two or more per plane) K is split and maps add the fp32 partial results."""
    path = _matmul(tmp_path, 128, k, 768)
    program = lpuc.compile(path, precision="fp16")
    mms = [i for i in program.instructions if i.opcode == "mxm.mm"]
    maps = [i for i in program.instructions if i.opcode == "vxm.map"]
    chains = [i for i in mms if not i.attrs.get("from_acc")]  # the first MM of each chain
    if split:
        assert len(chains) > 3 and maps
        assert {a.buf for i in maps for a in i.reads} == {w.buf for i in mms for w in i.writes}
    else:
        assert len(chains) == 3 and not maps
        assert all(i.attrs["k"][2] == k for i in mms)  # every MM sums over the whole K
    feeds = {"x": np.random.default_rng(4).normal(size=(128, k)).astype(np.float32)}
    _check(program, path, feeds)


def test_weights_spread_over_slices(tmp_path):
    """A 160-row fp16 weight chunk is four 40-row tiles in four slices: one LW reads them all."""
    path = _matmul(tmp_path, 64, 160, 320)
    program = lpuc.compile(path, precision="fp16")
    (lw,) = [i for i in program.instructions if i.opcode == "mxm.lw"]
    assert [a.nrows for a in lw.reads] == [40, 40, 40, 40]
    assert len({a.slice for a in lw.reads}) == 4
    single = lpuc.compile(path, precision="fp16", disable_passes=["weight_spread"])
    (lw1,) = [i for i in single.instructions if i.opcode == "mxm.lw"]
    assert len(lw1.reads) == 1 and lw.duration < lw1.duration
    _check(program, path, {"x": np.random.default_rng(2).normal(size=(64, 160)).astype(np.float32)})


def test_broadcast_constant_copied_for_parallel_maps(tmp_path):
    """A bias row added to 1280 rows: four maps, reading different copies of the bias."""
    rng = np.random.default_rng(3)
    model = single_op_model(
        "Add",
        [("x", [1280, 64])],
        [("y", [1280, 64])],
        initializers={"b": rng.normal(size=64).astype(np.float32)},
    )
    path = tmp_path / "add.onnx"
    onnx.save(model, path)
    program = lpuc.compile(path)
    maps = [i for i in program.instructions if i.opcode == "vxm.map"]
    bias_slots = {(i.reads[1].slice, i.reads[1].addr) for i in maps}
    assert len(maps) == 4 and len(bias_slots) == 4
    one = lpuc.compile(path, disable_passes=["constant_replicas"])
    assert len({(i.reads[1].slice, i.reads[1].addr) for i in one.instructions if i.opcode == "vxm.map"}) == 1
    _check(program, path, {"x": rng.normal(size=(1280, 64)).astype(np.float32)}, rtol=1e-6, atol=1e-7)


class _ConvPool(torch.nn.Module):
    def __init__(self, pool: str):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 16, 3, padding=1)  # an RGB stem: channels-first slabs
        self.conv2 = torch.nn.Conv2d(16, 16, 3, padding=2, dilation=2)
        self.pool = (
            torch.nn.MaxPool2d(3, 2, 1)
            if pool == "max"
            else torch.nn.AvgPool2d(3, 2, 1, count_include_pad=pool == "avg_pad")
        )

    def forward(self, x):
        return self.conv2(self.pool(torch.relu(self.conv(x))))


@pytest.mark.parametrize("pool", ["max", "avg", "avg_pad"])
def test_windowed_ops_in_row_slabs(tmp_path, pool):
    """Channels-last Im2Col and pooling of a 32x32 map: one instruction per result tile row,
    each reading only the input rows its windows touch; same numbers as onnxruntime (fp32)."""
    torch.manual_seed(0)
    path = export(
        _ConvPool(pool),
        (torch.zeros(1, 3, 64, 64),),
        tmp_path / f"cp_{pool}.onnx",
        input_names=["x"],
        output_names=["y"],
    )
    # (pack_conv_rows off: the stem's rows side by side would pool in packed rows, not these slabs)
    program = lpuc.compile(path, precision="fp32", disable_passes=["pack_conv_rows"])
    slabs = [i for i in program.instructions if i.attrs.get("attrs", {}).get("slab")]
    assert len(slabs) >= 5  # the pooling and each conv's Im2Col
    first = [i for i in slabs if i.attrs["attrs"]["slab"].get("channels_first")]
    assert first
    for ins in first:  # conv on the NCHW input (3x3, pad 1): per channel plane, the image rows it needs
        r0, r1 = ins.attrs["attrs"]["slab"]["out_rows"]
        image_rows = min(63, (r1 - 1) // 64 + 1) + 1 - max(0, r0 // 64 - 1)
        assert sum(a.nrows for a in ins.reads) == 3 * image_rows
    channels_last = [i for i in slabs if i not in first]
    # 1024 rows, shorter than four 320-row tiles: short_tiles cuts five (205 rows, the last 204)
    im2col = [i for i in channels_last if i.attrs["kernel"] == "Im2Col"]
    assert len(im2col) == 5 and all(len(i.reads) < 4 for i in im2col), "a slab reads only the tiles it needs"
    for ins in channels_last:  # ... and of those tiles only the rows its windows touch (C <= 16 lanes)
        r0, r1 = ins.attrs["attrs"]["slab"]["out_rows"]
        pool = ins.attrs["kernel"] != "Im2Col"  # 3x3 stride 2 pad 1 on 64x64; conv2: dilation 2 pad 2
        size, stride, pad, dilation = (64, 2, 1, 1) if pool else (32, 1, 2, 2)
        rows = [
            h * size + w
            for oh, ow in (divmod(r, 32) for r in range(r0, r1))
            for h in (oh * stride - pad + k * dilation for k in range(3))
            for w in (ow * stride - pad + k * dilation for k in range(3))
            if 0 <= h < size and 0 <= w < size
        ]
        assert sum(a.nrows for a in ins.reads) == max(rows) + 1 - min(rows) < size * size
    feeds = {"x": np.random.default_rng(4).normal(size=(1, 3, 64, 64)).astype(np.float32)}
    (want,) = ort_run(path, feeds)
    scale = float(np.abs(want).max())
    np.testing.assert_allclose(program.run(feeds)["y"], want, rtol=1e-4, atol=1e-5 * scale)
    whole = lpuc.compile(path, precision="fp32", disable_passes=["row_slabs", "pack_conv_rows"])
    got, whole_got = program.run(feeds)["y"], whole.run(feeds)["y"]
    if pool == "max":  # copies and maxima: the same bits
        np.testing.assert_array_equal(got, whole_got)
    np.testing.assert_allclose(got, whole_got, rtol=1e-5, atol=1e-6 * scale)


def test_fp16_storage_only_where_every_use_rounds(tmp_path):
    """x -> MatMul -> r = Relu -> MatMul(r) and r + y: r is read by an Add, so it stays fp32; the
    MatMul-only value h = Reshape(y) feeding the second MatMul is stored fp16. Outputs identical bit for
    bit to the build without the strategy."""
    rng = np.random.default_rng(5)
    w1, w2 = (numpy_helper.from_array(rng.normal(size=(64, 64)).astype(np.float32), n) for n in ("w1", "w2"))
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["m"]),
        helper.make_node("Relu", ["m"], ["r"]),
        helper.make_node("Neg", ["r"], ["h"]),
        helper.make_node("MatMul", ["h", "w2"], ["z"]),
        helper.make_node("Add", ["z", "r"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [400, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [400, 64])],
        [w1, w2],
    )
    path = tmp_path / "f16.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    program = lpuc.compile(path, precision="fp16", disable_passes=["fuse_elementwise"])
    dtypes = {t.tensor: t.dtype for t in program.tiles}
    assert dtypes["h"] == "float16" and dtypes["r"] == "float32" and dtypes["y"] == "float32"
    plain = lpuc.compile(path, precision="fp16", disable_passes=["fuse_elementwise", "fp16_storage"])
    assert {t.dtype for t in plain.tiles if t.tensor == "h"} == {"float32"}
    feeds = {"x": rng.normal(size=(400, 64)).astype(np.float32)}
    np.testing.assert_array_equal(program.run(feeds)["y"], plain.run(feeds)["y"])
    _check(program, path, feeds)


def test_every_strategy_can_be_disabled(mlp_onnx):
    for name in STRATEGIES:
        assert lpuc.compile(mlp_onnx, disable_passes=[name]).summary["options"]["disabled_passes"] == [name]


class _Residual(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(16, 16, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(16, 16, 3, padding=1)

    def forward(self, x):
        return torch.relu(self.conv2(torch.relu(self.conv1(x))) + x)


@pytest.mark.parametrize(("size", "cut"), [(14, [98, 98]), (13, [85, 84])])
def test_short_tiles_in_conv_nets(tmp_path, size, cut):
    """A 14x14 map (196 rows) is shorter than two tiles: in a conv net its tensors are cut into two
    tiles of 98 rows, so the second conv's first Im2Col slab starts on the first half of the first
    conv's result; a 13x13 map into 85 + 84. Same numbers as onnxruntime and as the build without the
    strategy (fp32)."""
    torch.manual_seed(0)
    example = (torch.zeros(1, 16, size, size),)
    path = export(_Residual(), example, tmp_path / "res.onnx", input_names=["x"], output_names=["y"])
    program = lpuc.compile(path, precision="fp32")
    im2col_tiles = sorted({(t.r0, t.rows) for t in program.tiles if "im2col" in t.tensor.lower()})
    assert [rows for _, rows in im2col_tiles] == cut
    slabs = [i for i in program.instructions if i.attrs.get("attrs", {}).get("slab")]
    # The second Im2Col in two row slabs; the first reads the 16-channel NCHW input in one op (a slab
    # would gather a window from every channel plane: lpuc/lowering/windowed.py).
    assert len(slabs) == 2
    feeds = {"x": np.random.default_rng(6).normal(size=(1, 16, size, size)).astype(np.float32)}
    (want,) = ort_run(path, feeds)
    got = program.run(feeds)["y"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * float(np.abs(want).max()))
    whole = lpuc.compile(path, precision="fp32", disable_passes=["short_tiles"])
    assert {t.rows for t in whole.tiles if "im2col" in t.tensor.lower()} == {size * size}
    np.testing.assert_allclose(got, whole.run(feeds)["y"], rtol=1e-5, atol=1e-6 * float(np.abs(want).max()))


def test_reshape_that_regroups_rows_in_slabs(tmp_path):
    """A Reshape that changes the [rows, cols] view ([700, 96] -> [1400, 48], as int8 packing and
    unpacking do) is a row-major copy: one instruction per result tile row, each reading only the
    input rows holding its values. Bit-identical to onnxruntime and to the build without row_slabs."""
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["r"]),
        helper.make_node("Neg", ["r"], ["y"]),
    ]
    shape = numpy_helper.from_array(np.array([1400, 48], dtype=np.int64), "shape")
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [700, 96])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1400, 48])],
        [shape],
    )
    path = tmp_path / "regroup.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    program = lpuc.compile(path, precision="fp32", disable_passes=["sink_reshapes"])
    slabs = [i for i in program.instructions if i.attrs.get("kernel") == "ReshapeRows"]
    assert len(slabs) == 5  # 1400 rows: five tiles (no convolution: 320 rows each, the last 120)
    for ins in slabs:
        r0, r1 = ins.attrs["attrs"]["slab"]["out_rows"]
        assert sum(a.nrows for a in ins.reads) == -(-r1 // 2) - r0 // 2  # two result rows per input row
    feeds = {"x": np.random.default_rng(7).normal(size=(700, 96)).astype(np.float32)}
    (want,) = ort_run(path, feeds)
    np.testing.assert_array_equal(program.run(feeds)["y"], want)
    whole = lpuc.compile(path, precision="fp32", disable_passes=["sink_reshapes", "row_slabs"])
    assert not any(i.attrs.get("kernel") == "ReshapeRows" for i in whole.instructions)
    np.testing.assert_array_equal(whole.run(feeds)["y"], want)


@pytest.mark.parametrize("batch, slabs", [(1, 3), (2, 0)])
def test_matrix_transpose_in_slabs(tmp_path, batch, slabs):
    """A Transpose of one matrix ([1, 128, 700] -> [1, 700, 128], an attention K^T) is one SXM
    instruction per result tile row, each reading only the input's lane tile that becomes its rows
    (so it starts when that tile is written, and the slabs run on both SXMs). A batch of matrices
    stays one instruction. Bit-identical to onnxruntime and to the build without row_slabs."""
    path = tmp_path / "transpose.onnx"
    model = single_op_model(
        "Transpose", [("x", [batch, 128, 700])], [("y", [batch, 700, 128])], perm=[0, 2, 1]
    )
    onnx.save(model, path)
    program = lpuc.compile(path, precision="fp32")
    cut = [i for i in program.instructions if i.attrs.get("kernel") == "TransposeRows"]
    assert len(cut) == slabs
    for ins in cut:
        r0, r1 = ins.attrs["attrs"]["slab"]["out_rows"]
        assert [(a.nrows, a.nlanes) for a in ins.reads] == [(128, r1 - r0)]
        assert sum(a.nrows for a in ins.writes) == r1 - r0
    feeds = {"x": np.random.default_rng(8).normal(size=(batch, 128, 700)).astype(np.float32)}
    (want,) = ort_run(path, feeds)
    np.testing.assert_array_equal(program.run(feeds)["y"], want)
    whole = lpuc.compile(path, precision="fp32", disable_passes=["row_slabs"])
    assert not any(i.attrs.get("kernel") == "TransposeRows" for i in whole.instructions)
    np.testing.assert_array_equal(whole.run(feeds)["y"], want)


@pytest.mark.parametrize("op", ["Concat", "Split"])
def test_lane_concat_and_split_in_slabs(tmp_path, op):
    """A Concat or Split along the last axis (channels-last feature maps) takes each result row from
    the same row of every operand: one SXM instruction per tile row (700 rows: 320, 320, 60), each
    reading only those rows. Bit-identical to onnxruntime and to the build without row_slabs."""
    if op == "Concat":
        nodes = [
            helper.make_node("Neg", ["x"], ["a"]),
            helper.make_node("Relu", ["x"], ["b"]),
            helper.make_node("Concat", ["a", "b", "x"], ["c"], axis=-1),
            helper.make_node("Neg", ["c"], ["y"]),
        ]
        y_cols, outputs = 3 * 96, ["y"]
    else:
        nodes = [
            helper.make_node("Neg", ["x"], ["a"]),
            helper.make_node("Split", ["a"], ["p", "q"], axis=1, num_outputs=2),
            helper.make_node("Mul", ["p", "q"], ["y"]),
        ]
        y_cols, outputs = 48, ["y"]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [700, 96])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, [700, y_cols]) for o in outputs],
    )
    path = tmp_path / "lanes.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    program = lpuc.compile(path, precision="fp32")
    cut = [i for i in program.instructions if i.attrs.get("kernel") == op]
    offsets = {i.attrs["outputs"][0]["row_offset"]: i for i in cut}
    assert len(cut) == 3 and sorted(offsets) == [0, 320, 640]
    operands = 3 if op == "Concat" else 1
    for (_, ins), rows in zip(sorted(offsets.items()), [320, 320, 60]):
        assert [a.nrows for a in ins.reads if a.nlanes > 1] == [rows] * operands
        assert sum(a.nrows for a in ins.writes) == rows * (1 if op == "Concat" else 2)
    feeds = {"x": np.random.default_rng(9).normal(size=(700, 96)).astype(np.float32)}
    (want,) = ort_run(path, feeds)
    np.testing.assert_array_equal(program.run(feeds)["y"], want)
    whole = lpuc.compile(path, precision="fp32", disable_passes=["row_slabs"])
    assert len([i for i in whole.instructions if i.attrs.get("kernel") == op]) == 1
    np.testing.assert_array_equal(whole.run(feeds)["y"], want)


def test_k_split_partials_take_the_tiles_of_the_result(tmp_path):
    """y = LayerNorm(relu(x) @ w + r) over 128 rows: row segments cut the sum and so the product into 64-row
    tiles. K = 3072 is split (front-loaded parts); each part's MM covers all 128 rows and writes them
    over two 64-row partial tiles, so the map adding the partials of a segment (one per tile of the
    product) reads tiles no other map reads, not the rows of one 128-row tile that both maps would
    queue for."""
    rng = np.random.default_rng(5)
    k, n = 3072, 768
    nodes = [
        helper.make_node("Relu", ["x"], ["h"]),  # activations computed on the chip (front-loaded parts)
        helper.make_node("MatMul", ["h", "w"], ["p"]),
        helper.make_node("Add", ["p", "r"], ["s"]),
        helper.make_node("LayerNormalization", ["s", "g", "b"], ["y"], axis=-1),
    ]
    inits = {
        "w": (rng.normal(size=(k, n)) / np.sqrt(k)).astype(np.float32),
        "g": rng.normal(size=n).astype(np.float32),
        "b": rng.normal(size=n).astype(np.float32),
    }
    graph = helper.make_graph(
        nodes,
        "mlp_out",
        [helper.make_tensor_value_info(v, TensorProto.FLOAT, [128, d]) for v, d in (("x", k), ("r", n))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [128, n])],
        [numpy_helper.from_array(v, name) for name, v in inits.items()],
    )
    path = tmp_path / "mlp_out.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    program = lpuc.compile(path, precision="fp16")
    mms = [i for i in program.instructions if i.opcode == "mxm.mm" and i.writes]
    assert mms and all([a.nrows for a in i.writes] == [64, 64] for i in mms)
    # Twenty K chunks in four parts, front-loaded (the last part's input arrives last): 6, 5, 5, 4
    # chunks, K widths 960, 800, 800 and 512 (its last chunk 32 wide).
    assert sorted({i.attrs["k"][2] for i in mms}, reverse=True) == [960, 800, 512]
    assert sorted(i.attrs["k"][2] for i in mms).count(800) == 2 * 3  # two parts, three N chunks each
    partials = {a.buf for i in mms for a in i.writes}
    maps = [i for i in program.instructions if i.opcode == "vxm.map" and {a.buf for a in i.reads} & partials]
    reads = [a.buf for i in maps for a in i.reads if a.buf in partials]
    assert len(maps) == 6 and sorted(reads) == sorted(partials)  # each partial tile read once
    feeds = {v: rng.normal(size=(128, d)).astype(np.float32) for v, d in (("x", k), ("r", n))}
    _check(program, path, feeds)


def test_one_tile_row_im2col_in_column_halves(tmp_path):
    """An Im2Col whose result is one tile row of several lane tiles (a 7x7 map of 256 channels: 49
    rows x 2304 columns, 8 tiles) is two instructions, each writing half of the lane tiles, so both
    SXMs work on it; same numbers as onnxruntime (fp32)."""
    torch.manual_seed(1)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(256, 256, 1), torch.nn.ReLU(), torch.nn.Conv2d(256, 32, 3, padding=1)
    ).eval()  # (the 1x1 convolution's result is channels-last, as between a net's layers)
    path = export(
        net, (torch.zeros(1, 256, 7, 7),), tmp_path / "c7.onnx", input_names=["x"], output_names=["y"]
    )
    # (row_taps would gather a 1x3 window instead: 768 columns, in a halo layout of its own)
    program = lpuc.compile(path, precision="fp32", disable_passes=["row_taps"])
    im2col = [i for i in program.instructions if i.attrs.get("kernel") == "Im2Col" and "/2/" in i.node]
    assert len(im2col) == 2
    written = [sorted((program.tiles[w.buf].c0, w.nlanes) for w in i.writes) for i in im2col]
    assert written[0] == [(0, 320), (320, 320), (640, 320), (960, 320)]
    assert written[1] == [(1280, 320), (1600, 320), (1920, 320), (2240, 64)]
    assert {i.unit for i in im2col} == {"SXM0", "SXM1"}
    feeds = {"x": np.random.default_rng(5).normal(size=(1, 256, 7, 7)).astype(np.float32)}
    (want,) = ort_run(path, feeds)
    np.testing.assert_allclose(
        program.run(feeds)["y"], want, rtol=1e-4, atol=1e-5 * float(np.abs(want).max())
    )


def test_im2col_slabs_read_only_the_rows_and_channels_they_use(tmp_path):
    """A channels-last Im2Col reads only what its columns use: a 1x1 stride-2 one (a downsample
    convolution of 640 channels, 2 lane tiles) in one instruction per lane tile, each reading that
    tile's lanes of the even image rows only; a 3x3 one on a 7x7 map of 512 channels in two column
    halves, each reading the channels of its half. Same numbers as onnxruntime (fp32)."""
    torch.manual_seed(2)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(64, 640, 1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(640, 512, 1, stride=2),
        torch.nn.ReLU(),
        torch.nn.Conv2d(512, 32, 3, padding=1),
    ).eval()
    path = export(
        net, (torch.zeros(1, 64, 14, 14),), tmp_path / "ds.onnx", input_names=["x"], output_names=["y"]
    )
    # (tap_tails would tap the 3x3 one: 3 x 9 + 2 K tiles a row, as its whole Im2Col's 29)
    program = lpuc.compile(path, precision="fp32", disable_passes=["tap_tails"])
    im2col = [i for i in program.instructions if i.attrs.get("kernel") == "Im2Col"]

    def lanes(accesses) -> list[tuple[int, int]]:  # (first input channel, channels) of each access
        return sorted({(program.tiles[a.buf].c0 + a.lane0, a.nlanes) for a in accesses})

    strided = sorted((i for i in im2col if "/2/" in i.node), key=lambda i: lanes(i.writes))
    assert [lanes(i.writes) for i in strided] == [[(0, 320)], [(320, 320)]]  # one per lane tile
    assert [lanes(i.reads) for i in strided] == [[(0, 320)], [(320, 320)]]
    for ins in strided:  # result rows 0..48 from image rows 0, 2, ..., 12, each up to position 12 of 14
        assert [a.nrows for a in ins.reads] == [13] * 7
    halves = sorted((i for i in im2col if "/4/" in i.node), key=lambda i: lanes(i.writes))
    # 4608 columns, 9 per channel: the first half's 8 lane tiles hold channels 0..284 (284 in both)
    assert [lanes(i.reads) for i in halves] == [[(0, 285)], [(284, 36), (320, 192)]]
    feeds = {"x": np.random.default_rng(6).normal(size=(1, 64, 14, 14)).astype(np.float32)}
    (want,) = ort_run(path, feeds)
    np.testing.assert_allclose(
        program.run(feeds)["y"], want, rtol=1e-4, atol=1e-5 * float(np.abs(want).max())
    )


def test_kernels_reading_one_tile_share_its_banks(tmp_path):
    """An int8 Conv of a 3-channel NCHW image: each Im2Col slab reads three plane windows of the one
    image tile, which would hold both of its slice's banks for the slab's whole duration. A kernel
    may book a single port per slice (lpuc.cost: it then streams its words more slowly, not at all
    here), and the scheduler tries that first: the slabs run on both SXMs side by side."""
    w = np.random.default_rng(0).normal(size=(32, 3, 3, 3)).astype(np.float32)
    path = tmp_path / "stem.onnx"
    onnx.save(
        single_op_model("Conv", [("x", [1, 3, 48, 48])], [("y", [1, 32, 46, 46])], initializers={"w": w}),
        path,
    )
    program = lpuc.compile(path, precision="int8")
    slabs = sorted(
        (i for i in program.instructions if i.attrs.get("kernel") == "Im2Col"), key=lambda i: i.start
    )
    assert len(slabs) > 2 and {i.unit for i in slabs} == {"SXM0", "SXM1"}
    assert any(b.start < a.end for a, b in zip(slabs, slabs[1:])), "two slabs overlap in time"
    x = np.random.default_rng(1).normal(size=(1, 3, 48, 48)).astype(np.float32)
    (want,) = ort_run(path, {"x": x})
    got = program.run({"x": x})["y"]
    assert np.corrcoef(got.reshape(-1), want.reshape(-1))[0, 1] > 0.99


def test_weight_loads_read_one_side_of_the_chip(tmp_path):
    """The constant tiles one LW reads sit on one side of the VXM (both sides get loads: the side of
    the least loaded slice), so a plane at that end loads them over at most half the chip; placement
    moves data, not arithmetic."""
    path = _matmul(tmp_path, 128, 1600, 640)
    program = lpuc.compile(path, precision="fp16")
    target = program.target
    vxm = target.position("VXM0")
    sides = [
        {target.slice_positions[program.tiles[a.buf].slice] > vxm for a in i.reads}
        for i in program.instructions
        if i.opcode == "mxm.lw"
    ]
    assert len(sides) == 20 and all(len(s) == 1 for s in sides)
    assert {True, False} == set().union(*sides)
    anywhere = lpuc.compile(path, precision="fp16", disable_passes=["weight_sides"])
    spans = [
        {target.slice_positions[anywhere.tiles[a.buf].slice] > vxm for a in i.reads}
        for i in anywhere.instructions
        if i.opcode == "mxm.lw"
    ]
    assert any(len(s) == 2 for s in spans)  # without it, some loads read both sides
    feeds = {"x": np.random.default_rng(2).normal(size=(128, 1600)).astype(np.float32)}
    np.testing.assert_array_equal(program.run(feeds)["y"], anywhere.run(feeds)["y"])
    _check(program, path, feeds)
