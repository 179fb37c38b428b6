"""int8 builds (passes/quantize_int8.py): weights per output channel, calibrated activations, int32
accumulation on the MXM's int8 mode. Numerics against fp32 onnxruntime, by cosine similarity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import lpuc
from lpuc.passes.quantize_int8 import quantize_weights
from tests.cli_helpers import assert_one_line_error, invoke
from tests.kernels.oracle import run_onnxruntime
from tests.models import ort_run
from tests.similarity import cosine
from tests.zoo import (
    MobileNetish,
    ResNetish,
    onet_probe_inputs,
    onet_real_weights,
    randomize_batchnorm,
    resnet50,
    vgg19,
)


def _export(module: torch.nn.Module, shape: tuple[int, ...], path: Path, outputs=("y",)) -> Path:
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        with torch.no_grad():
            torch.onnx.export(
                module,
                (torch.randn(*shape),),
                str(tmp),
                input_names=["x"],
                output_names=list(outputs),
                opset_version=17,
                dynamo=False,
            )
        tmp.rename(path)
    return path


@pytest.fixture(scope="module")
def small_cnn(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    net = randomize_batchnorm(ResNetish().eval(), 1)
    return _export(net, (1, 3, 32, 32), tmp_path_factory.mktemp("int8") / "resnetish.onnx")


def _mxm_modes(program) -> set[str]:
    return {i.attrs["precision"] for i in program.instructions if i.opcode == "mxm.mm"}


def _check_cosine(program, model: Path, shape, samples: int, seed: int = 7, minimum: float = 0.99):
    """Every output's cosine similarity to fp32 onnxruntime on `samples` random inputs; the worst."""
    rng = np.random.default_rng(seed)
    proto = onnx.load(str(model))
    worst = 1.0
    for _ in range(samples):
        x = rng.standard_normal(shape).astype(np.float32)
        expected = run_onnxruntime(proto, {"x": x})
        got = program.run({"x": x})
        for out, ref in zip(proto.graph.output, expected):
            worst = min(worst, cosine(got[out.name], ref))
    assert worst >= minimum, worst
    return worst


def test_weights_are_quantized_symmetrically_per_output_channel():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((50, 6)) * np.array([1e-3, 0.1, 1.0, 10.0, 100.0, 0.0])
    w_q, scale = quantize_weights(w)
    assert w_q.dtype == np.int8 and w_q.shape == w.shape
    assert np.abs(w_q).max() <= 127
    # Each non-zero column uses the full range with its own scale; an all-zero column gets scale 1.
    np.testing.assert_array_equal(np.abs(w_q[:, :5]).max(axis=0), 127)
    np.testing.assert_allclose(scale[:5], np.abs(w[:, :5]).max(axis=0) / 127)
    assert scale[5] == 1.0 and not w_q[:, 5].any()
    # Reconstruction within half a step of the column's own scale.
    assert np.all(np.abs(w_q * scale - w) <= scale / 2 + 1e-12)


def test_int8_matmul_accumulates_exactly_in_int32():
    """An int8 x int8 -> int32 product over K larger than the int8 k_tile (so partial sums are
    accumulated across weight groups) is bit-exact against onnxruntime's MatMulInteger."""
    rng = np.random.default_rng(1)
    a = rng.integers(-128, 128, (40, 700), dtype=np.int8)
    b = rng.integers(-128, 128, (700, 48), dtype=np.int8)
    node = helper.make_node("MatMulInteger", ["a", "b"], ["y"])
    graph = helper.make_graph(
        [node],
        "mmi",
        [helper.make_tensor_value_info("a", TensorProto.INT8, a.shape)],
        [helper.make_tensor_value_info("y", TensorProto.INT32, (40, 48))],
        [numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    program = lpuc.compile(model, precision="int8")
    assert _mxm_modes(program) == {"int8"} and program.summary["host_ops"] == 0
    (expected,) = run_onnxruntime(model, {"a": a})
    got = program.run({"a": a})["y"]
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(program.run({"a": a}, interpret=True)["y"], expected)


def test_small_cnn_int8_matches_fp32_onnxruntime_by_cosine(small_cnn):
    program = lpuc.compile(small_cnn, precision="int8")
    assert program.summary["precision"] == "int8"
    assert _mxm_modes(program) == {"int8"}  # every conv and the classifier run on the int8 mode
    _check_cosine(program, small_cnn, (1, 3, 32, 32), samples=4)


def test_int8_bound_uses_the_int8_mode(small_cnn):
    """The MXM lower bound charges the int8 mode's rate (a quarter of fp16's on tsp-v1: twice the
    rows per cycle, twice the K per tile)."""
    int8 = lpuc.compile(small_cnn, precision="int8").summary["lower_bound_cycles"]["mxm"]
    fp16 = lpuc.compile(small_cnn, precision="fp16").summary["lower_bound_cycles"]["mxm"]
    assert int8 < fp16 / 2


def test_summary_records_the_calibration(small_cnn, tmp_path):
    random = lpuc.compile(small_cnn, precision="int8")
    assert random.summary["options"]["calibration"] == "random-normal (4 samples, seed 0)"
    rng = np.random.default_rng(3)
    path = tmp_path / "calib.npz"
    np.savez(path, x=rng.standard_normal((3, 1, 3, 32, 32)).astype(np.float32))
    calibrated = lpuc.compile(small_cnn, precision="int8", calibrate=path)
    assert calibrated.summary["options"]["calibration"] == "calib.npz (3 samples)"
    # fp16 / fp32 builds have no calibration (and their options are unchanged).
    assert "calibration" not in lpuc.compile(small_cnn, precision="fp16").summary["options"]


def test_calibration_ranges_change_the_program(small_cnn, tmp_path):
    """The activation scales come from the calibration inputs: inputs 100x larger than the run's
    make a coarser quantization, and a worse result, than matching ones."""
    rng = np.random.default_rng(4)
    samples = rng.standard_normal((2, 1, 3, 32, 32)).astype(np.float32)
    matched = lpuc.compile(small_cnn, precision="int8", calibrate={"x": samples})
    coarse = lpuc.compile(small_cnn, precision="int8", calibrate={"x": samples * 100})
    x = rng.standard_normal((1, 3, 32, 32)).astype(np.float32)
    (expected,) = run_onnxruntime(onnx.load(str(small_cnn)), {"x": x})
    good, bad = (cosine(p.run({"x": x})["y"], expected) for p in (matched, coarse))
    assert good >= 0.99 and bad < good


def test_a_single_calibration_sample_may_have_the_input_shape(small_cnn, tmp_path):
    path = tmp_path / "one.npz"
    np.savez(path, x=np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32))
    program = lpuc.compile(small_cnn, precision="int8", calibrate=path)
    assert program.summary["options"]["calibration"] == "one.npz (1 sample)"


@pytest.mark.parametrize(
    ("arrays", "fragment"),
    [
        ({"y": np.zeros((1, 3, 32, 32), np.float32)}, "no calibration samples for input 'x' (has y)"),
        (
            {"x": np.zeros((2, 3, 16, 16), np.float32)},
            "input 'x' has shape [2, 3, 16, 16]; expected [1, 3, 32, 32]",
        ),
        ({"x": np.zeros((1, 3, 32, 32), np.int64)}, "input 'x' is int64, the model's is float32"),
    ],
)
def test_calibration_file_errors_are_one_line(small_cnn, tmp_path, arrays, fragment):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    result = invoke(
        "compile", small_cnn, "-o", tmp_path / "m.lpu", "--precision", "int8", "--calibrate", path
    )
    assert_one_line_error(result, str(path), fragment)
    assert not (tmp_path / "m.lpu").exists()


def test_calibration_is_refused_outside_int8_and_unreadable_files_are_errors(small_cnn, tmp_path):
    path = tmp_path / "c.npz"
    np.savez(path, x=np.zeros((1, 3, 32, 32), np.float32))
    result = invoke("compile", small_cnn, "-o", tmp_path / "m.lpu", "--calibrate", path)
    assert_one_line_error(result, "--precision int8, not fp16")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    result = invoke(
        "compile", small_cnn, "-o", tmp_path / "m.lpu", "--precision", "int8", "--calibrate", junk
    )
    assert_one_line_error(result, str(junk), "cannot read calibration inputs")


def test_cli_int8_build_is_checked_by_cosine(small_cnn, tmp_path):
    art = tmp_path / "m.lpu"
    result = invoke("compile", small_cnn, "-o", art, "--precision", "int8")
    assert result.exit_code == 0, result.output
    assert (
        "(int8)" in result.output and "int8 calibration: random-normal (4 samples, seed 0)" in result.output
    )
    result = invoke("run", art, "--check", small_cnn)
    assert result.exit_code == 0, result.output
    assert "(cosine >= 0.99, SQNR >= 10 dB): ok" in result.output, result.output
    # Elementwise tolerances still apply when given, and an int8 result is not within 1e-6.
    result = invoke("run", art, "--check", small_cnn, "--rtol", "1e-6", "--atol", "0")
    assert result.exit_code == 1 and "FAILED" in result.output, result.output
    result = invoke("run", art, "--check", small_cnn, "--min-cosine", "1.0")
    assert result.exit_code == 1 and "cosine >= 1" in result.output, result.output


def test_real_weight_cnn_int8():
    """MTCNN's ONet with the trained weights facenet-pytorch ships: cosine >= 0.99 on every output
    and the same top-1 class (face / not face) as fp32 onnxruntime on >= 95% of 20 inputs. No
    images ship offline, so the inputs are synthetic crops spanning the decision (probabilities
    from ~0 to ~1, several near 0.5: tests/zoo.py onet_probe_inputs), calibrated on another such
    set (seed 1). (With the default random-normal calibration the worst `prob` cosine is ~0.987:
    those samples do not look like these inputs.)"""
    net = onet_real_weights()
    if net is None:
        pytest.skip("facenet-pytorch (the package that ships ONet's weights) is not installed")
    path = _export(
        net, (1, 3, 48, 48), Path("/tmp/lpuc_test_onet.onnx"), outputs=("prob", "box", "landmarks")
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 19 small batched steps: threads only contend on a shared machine
    try:
        probes, calibration = onet_probe_inputs(net), onet_probe_inputs(net, seed=1)
    finally:
        torch.set_num_threads(threads)
    program = lpuc.compile(path, precision="int8", calibrate={"x": calibration})
    assert program.summary["options"]["calibration"] == "calibration inputs (20 samples)"
    proto = onnx.load(str(path))
    agree, worst, faces = 0, 1.0, 0
    for x in probes:
        prob, box, landmarks = run_onnxruntime(proto, {"x": x})
        got = program.run({"x": x})
        for name, ref in (("prob", prob), ("box", box), ("landmarks", landmarks)):
            worst = min(worst, cosine(got[name], ref))
        agree += int(np.argmax(got["prob"]) == np.argmax(prob))
        faces += int(np.argmax(prob) == 1)
    assert 5 <= faces <= 15, faces  # the inputs do exercise both classes
    assert worst >= 0.99 and agree >= 19, (worst, agree)


@pytest.mark.slow
def test_resnet50_v15_int8_cosine():
    path = _export(resnet50(), (1, 3, 224, 224), Path("/tmp/lpuc_test_resnet50_v15.onnx"))
    program = lpuc.compile(path, precision="int8")
    assert _mxm_modes(program) == {"int8"} and program.summary["host_ops"] == 0
    _check_cosine(program, path, (1, 3, 224, 224), samples=3)


@pytest.mark.slow
def test_spread_accesses_shortens_resnet50():
    """Tiles used at the same time placed on different slices (placement's spread_accesses) take port
    waits out of ResNet-50 v1.5's schedule: >= 5% fewer cycles than the balance-only placement in fp16
    (9.5% measured), fewer in int8 too (3.2%), with the same output bits (placement moves data, not
    arithmetic)."""
    path = _export(resnet50(), (1, 3, 224, 224), Path("/tmp/lpuc_test_resnet50_v15.onnx"))
    x = np.random.default_rng(3).standard_normal((1, 3, 224, 224)).astype(np.float32)
    for precision, most in (("fp16", 0.95), ("int8", 1.0)):
        spread = lpuc.compile(path, precision=precision)
        plain = lpuc.compile(path, precision=precision, disable_passes=["spread_accesses"])
        cycles = spread.summary["cycles"], plain.summary["cycles"]
        assert cycles[0] < most * cycles[1], (precision, cycles)
        np.testing.assert_array_equal(spread.run({"x": x})["y"], plain.run({"x": x})["y"])


@pytest.mark.slow
def test_vgg19_fits_tsp_v1_in_int8():
    """548 MiB of fp32 weights do not fit one chip in fp16; their int8 copy (~137 MiB) does."""
    path = _export(vgg19(), (1, 3, 224, 224), Path("/tmp/lpuc_test_vgg19.onnx"))
    program = lpuc.compile(path, precision="int8")
    s = program.summary
    assert s["sram_peak_bytes"] <= s["sram_capacity_bytes"]
    assert 130 * 2**20 <= s["sram_const_bytes"] <= 160 * 2**20, s["sram_const_bytes"]


def _conv_chain(size: int) -> torch.nn.Module:
    torch.manual_seed(2)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 32, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(32, 32, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(32, 64, 3, padding=1),
    ).eval()


def test_unsigned_activations_need_no_relu_op_and_keep_the_accuracy(tmp_path):
    """A ReLU's result that only int8 products read (through an Im2Col, a MaxPool) is quantized
    unsigned (passes/quantize_int8.py: zero point -128, 255 levels): the map that computes it takes
    no Max for the ReLU (the saturating cast's own lower bound), the Im2Cols reading it pad with
    -128, and the products' zero-point term joins their bias (no op more). As close to fp32
    onnxruntime as symmetric activations, on the same inputs."""
    path = _export(_conv_chain(16), (1, 3, 16, 16), tmp_path / "chain.onnx")
    # Each map stays apart, to count its ops; the biases stay in them (not in the accumulators).
    apart = ["mxm_epilogues", "map_chains", "fold_bias_columns"]
    unsigned = lpuc.compile(path, precision="int8", disable_passes=apart, dump_ir=tmp_path / "ir")
    symmetric = lpuc.compile(path, precision="int8", disable_passes=[*apart, "unsigned_activations"])

    def map_ops(program) -> list[int]:
        return sorted(
            {i.node: i.work.alu_ops for i in program.instructions if i.opcode == "vxm.map"}.values()
        )

    # The input quantize (Cast of its fp16 scale, Mul, SaturatingCast: store_int8_constants_fp16),
    # two requantize maps of Cast Mul Add [Max] SaturatingCast, the last product's dequantize (Cast
    # Mul Add).
    assert map_ops(symmetric) == [3, 3, 5, 5] and map_ops(unsigned) == [3, 3, 4, 4]
    final = (tmp_path / "ir" / "99_final.graph.txt").read_text().splitlines()
    im2cols = [line for line in final if "= lpuc.Im2Col(" in line]
    assert len(im2cols) == 3 and sum("pad_value=-128" in line for line in im2cols) == 2  # not the image's
    cosines = [_check_cosine(p, path, (1, 3, 16, 16), samples=3) for p in (unsigned, symmetric)]
    assert cosines[0] > cosines[1] - 1e-3, cosines
    # A residual sum read only by products (the second block's input): its zero point joins a
    # term's offset (distribute_scales), so its map takes 7 ops (Cast Cast Mul Add Mul Add
    # SaturatingCast; 9 with a separate Add of the zero point, 8 with a symmetric scale and its Max).
    residual = _export(_ResidualConvs().eval(), (1, 3, 16, 16), tmp_path / "residual.onnx")
    quantize = "/blocks.1/blocks.1.0/Conv/matmul/int8/round_cast"  # the map ending in it
    ops = [
        {i.work.alu_ops for i in p.instructions if i.opcode == "vxm.map" and i.node.endswith(quantize)}
        for p in (
            lpuc.compile(residual, precision="int8", disable_passes=[*apart, *more])
            for more in ([], ["distribute_scales"], ["unsigned_activations"])
        )
    ]
    assert ops == [{7}, {9}, {8}]


def test_conv_chain_requantizes_in_one_map_per_layer(tmp_path):
    """Between two convolutions, the int32 result is requantized, biased, ReLU'd and quantized for
    the next layer in one VXM map (through lower_conv's Reshape), and the MaxPool pools int8 data:
    no float tensor is stored between the MXM products."""
    path = _export(_conv_chain(16), (1, 3, 16, 16), tmp_path / "chain.onnx")
    lpuc.compile(path, precision="int8", dump_ir=tmp_path / "ir")
    final = (tmp_path / "ir" / "99_final.graph.txt").read_text().splitlines()
    ops = [
        line.split(" = ")[1].split("(")[0] for line in final if " = " in line and not line.startswith("const")
    ]
    assert ops.count("MatMulInteger") == 3 and "MatMul" not in ops
    assert "Relu" not in ops  # fused into the maps
    pooled = [line for line in final if "MaxPool(" in line]
    assert len(pooled) == 1 and ": i8[" in pooled[0]
    program = lpuc.compile(path, precision="int8")
    _check_cosine(program, path, (1, 3, 16, 16), samples=2)


def test_fold_requantize_cuts_the_maps_alu_ops_and_keeps_the_accuracy(small_cnn):
    """A residual CNN's requantization maps (dequant, bias, ReLU, the next layer's quantize) run in
    fewer ALU ops per element with fold_requantize (passes/fold_requantize.py), and its int8 output
    is as close to fp32 onnxruntime as the unfolded chain's."""
    # Each map stays apart, to count its ops; symmetric activations (unsigned ones drop the Max); the
    # biases stay in the maps (fold_bias_columns would move some into the accumulators).
    apart = ["mxm_epilogues", "map_chains", "unsigned_activations", "fold_bias_columns"]
    folded = lpuc.compile(small_cnn, precision="int8", disable_passes=apart)
    unfolded = lpuc.compile(small_cnn, precision="int8", disable_passes=[*apart, "fold_requantize"])

    def alu_ops(program) -> list[int]:
        return sorted({i.work.alu_ops for i in program.instructions if i.opcode == "vxm.map"})

    # Cast Mul Add Relu Mul Round Clip Cast (9) -> Cast Mul Add Max SaturatingCast (5).
    assert 9 in alu_ops(unfolded) and 9 not in alu_ops(folded) and 5 in alu_ops(folded)
    elem_ops = [sum(i.work.elem_ops for i in p.instructions) for p in (folded, unfolded)]
    assert elem_ops[0] < 0.8 * elem_ops[1], elem_ops
    fused = lpuc.compile(small_cnn, precision="int8")
    cosines = [_check_cosine(p, small_cnn, (1, 3, 32, 32), samples=2) for p in (folded, unfolded, fused)]
    assert max(cosines) - min(cosines) < 1e-3, cosines


class _ResidualConvs(torch.nn.Module):
    """Two residual blocks, the second with a 1x1 conv shortcut. The stem's output is read only by
    VXM maps (the first block's quantize map and residual add); each block's sum is fused with the
    next quantize map and never stored; the second block adds two int32 products (its conv's and
    its shortcut's)."""

    def __init__(self, width: int = 16):
        super().__init__()
        torch.manual_seed(4)
        conv = lambda c_in, c_out: torch.nn.Conv2d(c_in, c_out, 3, padding=1)  # noqa: E731
        self.stem = conv(3, width)
        self.blocks = torch.nn.ModuleList(
            torch.nn.Sequential(conv(width, width), torch.nn.ReLU(), conv(width, width)) for _ in range(2)
        )
        self.shortcut = torch.nn.Conv2d(width, width, 1)
        self.head = torch.nn.Conv2d(width, 8, 1)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(self.blocks[0](x) + x)
        x = torch.relu(self.blocks[1](x) + self.shortcut(x))
        return self.head(x)


def test_residual_sums_between_int8_layers_are_stored_as_fp16(tmp_path):
    """The float values that pass only between VXM maps (a residual block's sum, read by the next
    quantize map and the next residual add) are stored as fp16 (passes/store_int8_floats_fp16.py),
    with the conversions charged as ALU ops of the maps; the output stays as close to fp32
    onnxruntime as with float32 storage."""
    path = _export(_ResidualConvs().eval(), (1, 3, 16, 16), tmp_path / "residual.onnx")
    # Float residuals (quantize_residuals passes them on in int8 instead).
    keep = ["quantize_residuals"]
    narrow = lpuc.compile(path, precision="int8", dump_ir=tmp_path / "ir", disable_passes=keep)
    wide_passes = ["store_int8_floats_fp16", "store_int8_constants_fp16", *keep]
    wide = lpuc.compile(path, precision="int8", disable_passes=wide_passes)
    final = (tmp_path / "ir" / "99_final.graph.txt").read_text().splitlines()
    # (values: the constants store_int8_constants_fp16 narrows are not what this pass stores)
    stored = [line for line in final if ": f16[" in line.split(" = ")[0] and not line.startswith("const ")]
    assert len(stored) == 2 and all("= lpuc.Fused(" in line for line in stored), stored
    # The second block's map of two int32 products is split: each map reads one of them (each fuses
    # into its own MM), the conv's part passed on in fp16.
    assert stored[1].split(":")[0].endswith("/part"), stored
    # The part is the shortcut's (its product reads the block's input: it can run early); the rest
    # fuses into the MM of the block's last conv, on the block's chain.
    assert "= lpuc.Fused(%/shortcut/Conv/matmul/matmul_int8," in stored[1], stored
    maps = [line.split(" = lpuc.Fused(")[1].split(")")[0] for line in final if " = lpuc.Fused(" in line]
    assert max(m.count("matmul_int8,") + m.endswith("matmul_int8") for m in maps) == 1, maps
    assert "float16" in {t.dtype for t in narrow.tiles} and "float16" not in {t.dtype for t in wide.tiles}

    def alu_ops(program) -> int:
        return sum(
            i.work.alu_ops for i in program.instructions if i.opcode == "vxm.map" or i.work.relay_words
        )

    assert alu_ops(narrow) > alu_ops(wide)  # a conversion on each side of every fp16 value
    cosines = [_check_cosine(p, path, (1, 3, 16, 16), samples=2) for p in (narrow, wide)]
    assert abs(cosines[0] - cosines[1]) < 1e-3, cosines
    x = {"x": np.random.default_rng(5).standard_normal((1, 3, 16, 16)).astype(np.float32)}
    np.testing.assert_array_equal(narrow.run(x)["y"], narrow.run(x, interpret=True)["y"])  # plan = oracle


def test_residual_sums_beyond_fp16_range_stay_float32(tmp_path):
    """A value is stored as fp16 only with room to spare over its calibrated peak: calibrated on
    inputs 1e4 times larger, the residual sums reach ~1e4 (over 65504 / 8), so they and the product
    part joining them stay float32, and the output still matches fp32 onnxruntime on such inputs."""
    path = _export(_ResidualConvs().eval(), (1, 3, 16, 16), tmp_path / "residual.onnx")
    rng = np.random.default_rng(6)
    big = {"x": (1e4 * rng.standard_normal((2, 1, 3, 16, 16))).astype(np.float32)}
    program = lpuc.compile(path, precision="int8", calibrate=big)
    # (constants aside: store_int8_constants_fp16 stores the quantize maps' scalar scales as fp16)
    assert "float16" not in {t.dtype for t in program.tiles if t.kind != "const"}
    (want,) = ort_run(path, {"x": big["x"][0]})
    got = program.run({"x": big["x"][0]})["y"]
    assert np.isfinite(got).all() and cosine(got, want) >= 0.99


def test_packed_rows_keep_the_numerics(tmp_path, monkeypatch):
    """Rows packed into lanes (block-diagonal weights, the result unpacked by a reshape) compute the
    same convolution, compared with fp32 onnxruntime. (Whether packing saves SRAM depends on the
    size: test_vgg19_fits_tsp_v1_in_int8 is where it must.)"""
    import lpuc.passes.quantize_int8 as quantize_int8

    path = _export(_conv_chain(32), (1, 3, 32, 32), tmp_path / "chain32.onnx")
    monkeypatch.setattr(quantize_int8, "PACK_MIN_ROWS", 256)
    packed = lpuc.compile(path, precision="int8", dump_ir=tmp_path / "ir")
    final = (tmp_path / "ir" / "99_final.graph.txt").read_text()
    assert "pack_rows=8" in final  # 1024 rows of 32 channels: 8 side by side in 320 lanes
    _check_cosine(packed, path, (1, 3, 32, 32), samples=2)


def _stem(size: int) -> torch.nn.Module:
    """ResNet's stem shape: a 7x7 stride 2 convolution to few channels, a 3x3 stride 2 MaxPool."""
    torch.manual_seed(4)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 7, stride=2, padding=3),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(3, stride=2, padding=1),
        torch.nn.Conv2d(16, 32, 1),
    ).eval()


def test_maxpool_of_packed_rows_pools_rows_before_unpacking(tmp_path, monkeypatch):
    """split_packed_pool: the MaxPool after a packed convolution pools down the packed rows, then
    across the unpacked ones. The same values as one pool over the unpacked map (max is exact), and
    fp32 onnxruntime's by cosine; the unpacking moves half the rows."""
    import lpuc.passes.quantize_int8 as quantize_int8

    path = _export(_stem(64), (1, 3, 64, 64), tmp_path / "stem.onnx")
    monkeypatch.setattr(quantize_int8, "PACK_MIN_ROWS", 256)
    split = lpuc.compile(path, precision="int8", dump_ir=tmp_path / "ir")
    final = (tmp_path / "ir" / "99_final.graph.txt").read_text()
    assert "pack_rows=16" in final  # 1024 rows of 16 channels: 16 side by side in 320 lanes
    pools = [line for line in final.splitlines() if "MaxPool(" in line]
    assert len(pools) == 2 and "kernel_shape=[3, 1]" in pools[0] and "kernel_shape=[1, 3]" in pools[1]
    whole = lpuc.compile(path, precision="int8", disable_passes=["split_packed_pool"])
    x = np.random.default_rng(5).standard_normal((1, 3, 64, 64)).astype(np.float32)
    np.testing.assert_array_equal(split.run({"x": x})["y"], whole.run({"x": x})["y"])
    _check_cosine(split, path, (1, 3, 64, 64), samples=2)

    def unpacked_rows(program) -> int:
        unpacking = [i for i in program.instructions if i.attrs.get("kernel") == "ReshapeRows"]
        return sum(w.nrows for i in unpacking for w in i.writes)

    assert 0 < unpacked_rows(split) <= unpacked_rows(whole) // 2


def test_unpacking_before_a_strided_pool_copies_as_many_tiles_as_a_pool_slab_reads(tmp_path):
    """pooled_unpack: the packed stem's unpacking before the 1 x 3 stride 2 pool across the columns
    (split_packed_pool) copies two result tiles per SXM instruction (each pool slab reads two), half
    the instructions of one tile each, the same rows in all; the same output bits, and fp32
    onnxruntime's by cosine."""
    path = _export(_stem(224), (1, 3, 224, 224), tmp_path / "stem.onnx")  # ResNet's: 12,544 rows
    paired = lpuc.compile(path, precision="int8")
    single = lpuc.compile(path, precision="int8", disable_passes=["pooled_unpack"])

    def copies(program) -> list:
        return [i for i in program.instructions if i.attrs.get("kernel") == "ReshapeRows"]

    pool_tiles = {
        r.buf for i in paired.instructions if "pool_cols" in i.node for r in i.reads
    }  # the unpacked tiles the pool reads
    assert len(copies(single)) >= 4 and len(copies(paired)) == -(-len(copies(single)) // 2)
    assert all(len(i.writes) == 2 for i in copies(paired)[:-1])
    assert {w.buf for i in copies(paired) for w in i.writes} <= pool_tiles
    rows = [sum(w.nrows for i in copies(p) for w in i.writes) for p in (paired, single)]
    assert rows[0] == rows[1]
    x = np.random.default_rng(7).standard_normal((1, 3, 224, 224)).astype(np.float32)
    np.testing.assert_array_equal(paired.run({"x": x})["y"], single.run({"x": x})["y"])
    _check_cosine(paired, path, (1, 3, 224, 224), samples=2)


def _wide_stem() -> torch.nn.Module:
    """ResNet's stem with its 64 channels (4 pixels side by side in 320 lanes), a 64x64 image."""
    torch.manual_seed(5)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 64, 7, stride=2, padding=3),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(3, stride=2, padding=1),
        torch.nn.Conv2d(64, 32, 1),
    ).eval()


def test_packed_stem_in_pool_blocks_unpacks_only_the_pooled_pixels(tmp_path, monkeypatch):
    """pool_ordered_pack: the packed stem convolution lays each image row's 32 pixels out in 4 blocks
    of 9 rows (8 and a halo row), the whole 3 x 3 pool runs on the packed rows, and the SXM unpacks only
    the 16 x 16 pooled pixels (half the rows split_packed_pool's unpacking writes, 16 x 32); fp32
    onnxruntime's outputs by cosine, the same output bits as without the pass (max is exact) and
    the interpreter's."""
    import lpuc.passes.quantize_int8 as quantize_int8

    path = _export(_wide_stem(), (1, 3, 64, 64), tmp_path / "wide_stem.onnx")
    monkeypatch.setattr(quantize_int8, "PACK_MIN_ROWS", 256)
    blocks = lpuc.compile(path, precision="int8", dump_ir=tmp_path / "ir")
    final = (tmp_path / "ir" / "99_final.graph.txt").read_text()
    assert "pack_rows=4" in final and "pack_blocks=[9, 8, -1, 32]" in final
    assert "lpuc.UnpackBlocks(" in final
    pools = [line for line in final.splitlines() if "lpuc.MaxPool(" in line]
    assert len(pools) == 1 and "kernel_shape=[3, 3]" in pools[0] and "pads=[1, 0, 1, 0]" in pools[0]
    plain = lpuc.compile(path, precision="int8", disable_passes=["pool_ordered_pack"])

    def unpacked_rows(program, kernel: str) -> int:
        return sum(w.nrows for i in program.instructions if i.attrs.get("kernel") == kernel for w in i.writes)

    assert unpacked_rows(blocks, "ReshapeRows") == 0 and unpacked_rows(blocks, "UnpackBlocks") == 16 * 16
    assert unpacked_rows(plain, "ReshapeRows") == 16 * 32
    x = {"x": np.random.default_rng(8).standard_normal((1, 3, 64, 64)).astype(np.float32)}
    np.testing.assert_array_equal(blocks.run(x)["y"], plain.run(x)["y"])
    np.testing.assert_array_equal(blocks.run(x)["y"], blocks.run(x, interpret=True)["y"])  # plan = oracle
    _check_cosine(blocks, path, (1, 3, 64, 64), samples=2)


def test_projection_shortcut_maps_fuse_into_the_products(small_cnn):
    """sink_products: the map adding a block's main product to its shortcut's part (the shortcut's
    own map, store_int8_floats_fp16) fuses into that product once the product comes after the
    part's map in program order: more MMs carry their map, none is left to read an int32 product
    back from SRAM, the same output bits, and onnxruntime's by cosine. (Cycles: ResNet-50 v1.5 int8
    95,276 with it, 104,685 without.)"""
    sunk = lpuc.compile(small_cnn, precision="int8")
    kept = lpuc.compile(small_cnn, precision="int8", disable_passes=["sink_products"])

    def int32_maps(program) -> int:
        return sum(
            1
            for i in program.instructions
            if i.opcode == "vxm.map" and any(program.tiles[r.buf].np_dtype == np.int32 for r in i.reads)
        )

    def fused(program) -> int:
        return sum(1 for i in program.instructions if i.opcode == "mxm.mm" and "epilogue" in i.attrs)

    assert int32_maps(sunk) == 0 and fused(sunk) > fused(kept)
    x = np.random.default_rng(6).standard_normal((1, 3, 32, 32)).astype(np.float32)
    np.testing.assert_array_equal(sunk.run({"x": x})["y"], kept.run({"x": x})["y"])
    _check_cosine(sunk, small_cnn, (1, 3, 32, 32), samples=2)


def test_k_chunked_products_on_short_tiles_fuse_their_requantization(tmp_path):
    """A 28x28 map is 784 rows in tiles of 196 (short_tiles); a 3x3 convolution of 64 channels (K =
    576: two K chunks summed in a plane's accumulators) writes each tile with one MM (pieces of at
    most acc_rows rows counted from each tile's start, not cut at multiples of 320), so every
    requantization map fuses into its MM: no map reads an int32 product back from SRAM."""
    torch.manual_seed(3)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 64, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(64, 64, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(64, 16, 1),
    ).eval()
    path = _export(net, (1, 3, 28, 28), tmp_path / "k_chunks.onnx")
    program = lpuc.compile(path, precision="int8")
    int32_reads = [
        i.node
        for i in program.instructions
        if i.opcode == "vxm.map" and any(program.tiles[r.buf].np_dtype == np.int32 for r in i.reads)
    ]
    assert int32_reads == []
    chained = [i for i in program.instructions if i.opcode == "mxm.mm" and i.attrs.get("keep")]
    assert chained  # the 576-deep product does run as accumulation chains
    _check_cosine(program, path, (1, 3, 28, 28), samples=2)


def test_int8_artifact_is_deterministic(small_cnn, tmp_path):
    """Calibration (seeded samples, graph evaluation) and quantization leave no run-to-run freedom."""
    paths = [tmp_path / f"{k}.lpu" for k in range(2)]
    for path in paths:
        lpuc.compile(small_cnn, precision="int8").save(path)
    assert paths[0].read_bytes() == paths[1].read_bytes()


def test_quantized_residual_joins_the_block_epilogue(tmp_path):
    """A block output read by the next product (through its quantize map) and by the next residual
    add passes on in int8 (passes/quantize_residuals.py): the quantize map joins the map computing
    the sum, which is fused into the product as its epilogue, so the program has fewer maps; the
    output scale distributes over the sum's two terms (passes/distribute_scales.py), keeping that
    epilogue at 8 ALU ops. Both builds stay close to fp32 onnxruntime."""
    path = _export(_ResidualConvs().eval(), (1, 3, 16, 16), tmp_path / "residual.onnx")
    joined = lpuc.compile(path, precision="int8")
    apart = lpuc.compile(path, precision="int8", disable_passes=["quantize_residuals"])
    undistributed = lpuc.compile(path, precision="int8", disable_passes=["distribute_scales"])

    def maps(program) -> int:
        return sum(i.opcode == "vxm.map" for i in program.instructions)

    def int8_epilogue_alus(program) -> list[int]:
        return [
            i.work.alu_ops
            for i in program.instructions
            if i.opcode == "mxm.mm"
            and i.attrs.get("epilogue", {}).get("result") == "int32"
            and any(
                s["op"] == "Add" and all(a.startswith("s") for a in s["args"])
                for s in i.attrs["epilogue"]["expr"]
            )
        ]

    assert maps(joined) < maps(apart)
    assert int8_epilogue_alus(joined) and max(int8_epilogue_alus(joined)) <= 8
    assert max(int8_epilogue_alus(undistributed)) > max(int8_epilogue_alus(joined))
    for program in (joined, apart):
        _check_cosine(program, path, (1, 3, 16, 16), samples=2)
    x = {"x": np.random.default_rng(5).standard_normal((1, 3, 16, 16)).astype(np.float32)}
    np.testing.assert_array_equal(joined.run(x)["y"], joined.run(x, interpret=True)["y"])  # plan = oracle


@pytest.mark.parametrize("norm, fires", [("Relu", True), ("LayerNormalization", False)])
def test_residual_passes_on_in_int8_only_from_an_elementwise_op(tmp_path, norm, fires):
    """h = norm(x) feeds a product (quantized) and the residual add y = h @ w + h. From a ReLU, the
    quantize map joins the map computing h, so the add reads h's int8 form (quantize_residuals); from
    a LayerNorm kernel nothing would join, so the residual stays float (BERT-base int8 lost 2.7% of its
    cycles and cosine 0.99957 -> 0.99872 to it)."""
    rng = np.random.default_rng(7)
    extra = ["g", "b"] if norm == "LayerNormalization" else []
    nodes = [
        helper.make_node(norm, ["x", *extra], ["h"]),
        helper.make_node("MatMul", ["h", "w"], ["m"]),
        helper.make_node("Add", ["m", "h"], ["y"]),
    ]
    inits = {"w": (rng.standard_normal((64, 64)) / 8).astype(np.float32)}
    inits.update({"g": np.ones(64, np.float32), "b": np.zeros(64, np.float32)} if extra else {})
    graph = helper.make_graph(
        nodes,
        "residual",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [64, 64])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    path = tmp_path / "residual.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    program = lpuc.compile(path, precision="int8", dump_ir=tmp_path / "ir")
    final = (tmp_path / "ir" / "99_final.graph.txt").read_text()
    assert ("residual_dequant" in final) == fires
    _check_cosine(program, path, (64, 64), samples=2)


@pytest.fixture(scope="module")
def mobilenetish(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    net = randomize_batchnorm(MobileNetish().eval(), 2)
    return _export(net, (1, 3, 64, 64), tmp_path_factory.mktemp("int8") / "mobilenetish.onnx")


def test_depthwise_conv_values_are_stored_as_fp16(mobilenetish, tmp_path):
    """A depthwise conv between int8 1x1 convs reads and writes fp16 (passes/
    store_kernel_floats_fp16.py): the expand conv's epilogue writes half the bytes, so the
    schedule is shorter, the conversions are charged as ALU ops of the maps, and the output stays as
    close to fp32 onnxruntime as with float32 storage."""
    narrow = lpuc.compile(mobilenetish, precision="int8", dump_ir=tmp_path / "ir")
    wide = lpuc.compile(mobilenetish, precision="int8", disable_passes=["store_kernel_floats_fp16"])
    final = (tmp_path / "ir" / "99_final.graph.txt").read_text().splitlines()
    convs = [line.split(" = ")[0] for line in final if "= lpuc.DepthwiseConv(" in line]
    assert len(convs) == 3 and all(": f16[" in c for c in convs), convs
    # Each conv's input (the expand conv's epilogue, through its reshape) is fp16 too.
    epilogues = [line for line in final if "/HardSwish/cl/rows: f16[" in line.split(" = ")[0]]
    assert len(epilogues) == 3 and all("= lpuc.Fused(" in line for line in epilogues), epilogues

    def alu_ops(program) -> int:
        return sum(i.work.alu_ops for i in program.instructions if i.opcode == "vxm.map")

    assert alu_ops(narrow) > alu_ops(wide)  # a conversion on each side of every fp16 value
    assert narrow.summary["cycles"] < wide.summary["cycles"]
    cosines = [_check_cosine(p, mobilenetish, (1, 3, 64, 64), samples=2) for p in (narrow, wide)]
    assert abs(cosines[0] - cosines[1]) < 1e-3, cosines
    x = {"x": np.random.default_rng(5).standard_normal((1, 3, 64, 64)).astype(np.float32)}
    np.testing.assert_array_equal(narrow.run(x)["y"], narrow.run(x, interpret=True)["y"])  # plan = oracle


def test_depthwise_conv_values_beyond_fp16_range_stay_float32(mobilenetish):
    """Calibrated on inputs 1e5 times larger, the depthwise convs' values exceed 65504 / 8: they stay
    float32, and the output still matches fp32 onnxruntime on such inputs."""
    rng = np.random.default_rng(6)
    big = {"x": (1e5 * rng.standard_normal((2, 1, 3, 64, 64))).astype(np.float32)}
    program = lpuc.compile(mobilenetish, precision="int8", calibrate=big)
    convs = [i for i in program.instructions if "/Conv/cl" in i.node and i.opcode == "vxm.kernel"]
    assert convs and all(program.tiles[a.buf].dtype == "float32" for i in convs for a in i.writes), convs[:1]
    (want,) = ort_run(mobilenetish, {"x": big["x"][0]})
    got = program.run({"x": big["x"][0]})["y"]
    assert np.isfinite(got).all() and cosine(got, want) >= 0.99


class _ConcatConvs(torch.nn.Module):
    """Two branches' conv results joined by a Concat (channels last), pooled, read by a conv."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.stem = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.left = torch.nn.Conv2d(16, 16, 1)
        self.right = torch.nn.Conv2d(16, 24, 3, padding=1)
        self.head = torch.nn.Conv2d(40, 8, 1)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        joined = torch.cat([self.left(x), self.right(x)], 1)
        return self.head(torch.relu(torch.nn.functional.max_pool2d(joined, 2)))


def test_concatenated_float_values_are_stored_as_fp16(tmp_path):
    """The float conv results a Concat joins (and the MaxPool of it reads) are stored as fp16 with
    it (store_kernel_floats_fp16): each epilogue converts, the Concat moves fp16, the output stays
    as close to fp32 onnxruntime as with float32 storage."""
    path = _export(_ConcatConvs().eval(), (1, 3, 16, 16), tmp_path / "concat.onnx")
    narrow = lpuc.compile(path, precision="int8", dump_ir=tmp_path / "ir")
    off = ["store_kernel_floats_fp16"]
    wide = lpuc.compile(path, precision="int8", disable_passes=off, dump_ir=tmp_path / "wide")

    def joins(ir: str) -> list[str]:
        final = (tmp_path / ir / "99_final.graph.txt").read_text().splitlines()
        return [line.split(" = ")[0] for line in final if " = Concat(" in line]

    assert len(joins("ir")) == 1 and ": f16[" in joins("ir")[0], joins("ir")
    assert len(joins("wide")) == 1 and ": f32[" in joins("wide")[0], joins("wide")
    final = (tmp_path / "ir" / "99_final.graph.txt").read_text().splitlines()
    epilogues = [line for line in final if ": f16[" in line.split(" = ")[0] and "= lpuc.Fused(" in line]
    assert len(epilogues) == 2, epilogues
    cosines = [_check_cosine(p, path, (1, 3, 16, 16), samples=2) for p in (narrow, wide)]
    assert abs(cosines[0] - cosines[1]) < 1e-3, cosines
    x = {"x": np.random.default_rng(5).standard_normal((1, 3, 16, 16)).astype(np.float32)}
    np.testing.assert_array_equal(narrow.run(x)["y"], narrow.run(x, interpret=True)["y"])  # plan = oracle
