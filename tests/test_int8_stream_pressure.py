"""Stream ids held by int8 builds' maps (issue 9): quantize maps' scalar scales stored as fp16
(passes/store_int8_constants_fp16.py), and K splits that count what adding the partials costs
(lpuc/lowering/matmul.py _adding_cycles)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import lpuc
from lpuc.ir.graph import Graph
from lpuc.passes.store_int8_constants_fp16 import _narrowable
from tests.kernels.oracle import run_onnxruntime
from tests.similarity import cosine


def _linear(path: Path, m: int, k: int, n: int) -> Path:
    """y = x @ W + b with a seeded random W and b (an fp32 model input, as issue 9's GEMM)."""
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["y"])],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, (m, k))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, (m, n))],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(bias, "b")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _quantize_maps(program) -> list:
    return [i for i in program.instructions if i.opcode == "vxm.map" and i.node.endswith("round_cast")]


def _stream_ids(instruction) -> int:
    return sum(unit.startswith(("SE", "SW")) for unit in instruction.units)


def test_quantize_maps_read_their_scale_as_fp16_and_hold_fewer_stream_ids(tmp_path):
    """The quantize map of an fp32 input reads its scalar 1/scale as fp16 (2 stream ids, not 4),
    converting it in one more ALU op; the output stays as close to fp32 onnxruntime."""
    path = _linear(tmp_path / "linear.onnx", 96, 640, 64)
    narrow = lpuc.compile(path, precision="int8", dump_ir=tmp_path / "ir")
    wide = lpuc.compile(path, precision="int8", disable_passes=["store_int8_constants_fp16"])
    final = (tmp_path / "ir" / "99_final.graph.txt").read_text()
    assert "/scale/fp16: f16[]" in final
    narrow_maps, wide_maps = _quantize_maps(narrow), _quantize_maps(wide)
    assert narrow_maps and len(narrow_maps) == len(wide_maps)
    for a, b in zip(narrow_maps, wide_maps):
        assert a.work.alu_ops == b.work.alu_ops + 1  # the Cast of the fp16 scale
        assert _stream_ids(a) == _stream_ids(b) - 2  # 2 bytes of scale instead of 4
    x = np.random.default_rng(3).standard_normal((96, 640)).astype(np.float32)
    (want,) = run_onnxruntime(onnx.load(str(path)), {"x": x})
    cosines = [cosine(p.run({"x": x})["y"], want) for p in (narrow, wide)]
    assert min(cosines) >= 0.99 and abs(cosines[0] - cosines[1]) < 1e-3, cosines
    np.testing.assert_array_equal(narrow.run({"x": x})["y"], narrow.run({"x": x}, interpret=True)["y"])


@pytest.mark.parametrize(
    ("value", "narrowed"),
    [(0.004, True), (127.0, True), (0.0, True), (1e-6, False), (1e6, False), (np.inf, False)],
)
def test_only_scalars_in_fp16_normal_range_are_narrowed(value, narrowed):
    """Below fp16's smallest normal number (6.1e-5) a value loses significant bits; above 65504 it
    overflows: such constants stay float32."""
    graph = Graph("g", [], {}, [], [])
    name = graph.add_const("c", np.array(value, np.float32))
    per_channel = graph.add_const("v", np.full(4, 0.5, np.float32))
    assert _narrowable(graph, name) == narrowed
    assert not _narrowable(graph, per_channel)  # (per-channel ones: their Cast ALUs cost more)
    assert _narrowable(graph, per_channel, per_channel=True)  # (but a bare dequantization's)


def test_int8_gemm_splits_k_only_where_adding_the_partials_pays(tmp_path):
    """[2304x4096]x[4096x320] (issue 9), on the default 320-row tiles (seven 320-row chains and a
    64-row one): the fp16 MMs (two cycles a row, 26 K chunks) still split K over the four planes;
    int8 MMs (one cycle a row, 13 chunks) gain less than the partial-add maps cost them in duration
    and stream ids, so they don't split. (With plane_rows, eight 288-row chains share the planes
    evenly and neither splits: test_gemm_cycles.)"""
    path = _linear(tmp_path / "gemm.onnx", 2304, 4096, 320)
    programs = {p: lpuc.compile(path, precision=p, disable_passes=["plane_rows"]) for p in ("int8", "fp16")}

    def parts(program) -> int:
        return len({t.tensor for t in program.tiles if "/partial" in t.tensor})

    assert parts(programs["fp16"]) == 4 and parts(programs["int8"]) == 0


def _scaled_scores(path: Path, divisor: float) -> Path:
    """Attention-like scores: (x @ W) / divisor, masked to -inf above the diagonal (a bool mask)."""
    rng = np.random.default_rng(1)
    w = (rng.standard_normal((64, 128)) / 8).astype(np.float32)
    keep = np.tril(np.ones((128, 128), bool))[:96]
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["m"]),
        helper.make_node("Div", ["m", "d"], ["s"]),
        helper.make_node("Where", ["keep", "s", "ninf"], ["y"]),
    ]
    inits = {"w": w, "d": np.array(divisor, np.float32), "keep": keep, "ninf": np.array(-np.inf, np.float32)}
    graph = helper.make_graph(
        nodes,
        "scores",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, (96, 64))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, (96, 128))],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.mark.parametrize(("divisor", "narrowed"), [(8.0, ("d_reciprocal", "ninf")), (0.1, ("ninf",))])
def test_fp16_product_maps_read_exact_scalars_as_fp16(tmp_path, divisor, narrowed):
    """fp16 builds: a product's map reads the scalars fp16 holds exactly (1/8, -inf) as fp16, not
    0.1 (it would round); the result is unchanged (to the bit, and as close to onnxruntime)."""
    path = _scaled_scores(tmp_path / "scores.onnx", divisor)
    narrow = lpuc.compile(path, precision="fp16", dump_ir=tmp_path / "ir")
    wide = lpuc.compile(path, precision="fp16", disable_passes=["store_int8_constants_fp16"])
    final = (tmp_path / "ir" / "99_final.graph.txt").read_text()
    assert sorted(n for n in ("d_reciprocal", "d", "ninf") if f"{n}/fp16: f16[]" in final) == sorted(narrowed)
    epilogues = [i for p in (narrow, wide) for i in p.instructions if "epilogue" in i.attrs]
    assert len(epilogues) == 2 and _stream_ids(epilogues[0]) == _stream_ids(epilogues[1]) - 2 * len(narrowed)
    x = np.random.default_rng(3).standard_normal((96, 64)).astype(np.float32)
    (want,) = run_onnxruntime(onnx.load(str(path)), {"x": x})
    got = narrow.run({"x": x})["y"]
    np.testing.assert_array_equal(got, wide.run({"x": x})["y"])
    finite = np.isfinite(want)
    assert np.array_equal(finite, np.isfinite(got)) and cosine(got[finite], want[finite]) >= 0.999


def _bare(path: Path, m: int, k: int, n: int, bias: bool = False) -> Path:
    """y = x @ W (+ b), W standard normal (issue 9's GEMM has no b): its int8 epilogue is Cast(acc) *
    per-channel scale (+ b), each scale s_x s_w[n] within fp16's normal range."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((k, n)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m" if bias else "y"])]
    inits = [numpy_helper.from_array(w, "w")]
    if bias:
        nodes.append(helper.make_node("Add", ["m", "b"], ["y"]))
        inits.append(numpy_helper.from_array(rng.standard_normal(n).astype(np.float32), "b"))
    graph = helper.make_graph(
        nodes,
        "bare",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, (m, k))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, (m, n))],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _epilogues(program) -> list:
    return [i for i in program.instructions if i.opcode == "mxm.mm" and i.work.relay_words > 0]


def test_a_bare_dequantizing_epilogue_reads_its_per_channel_scale_as_fp16(tmp_path):
    """A MatMul with no bias: its epilogue's per-channel scale is stored as fp16 (2 stream ids instead
    of 4, one more ALU for the conversion). With a bias (another op in the epilogue) it stays float32.
    Numerics against onnxruntime as close as with float32 scales."""
    path = _bare(tmp_path / "bare.onnx", 96, 640, 64)
    narrow = lpuc.compile(path, precision="int8", dump_ir=tmp_path / "ir")
    wide = lpuc.compile(path, precision="int8", disable_passes=["store_int8_constants_fp16"])
    final = (tmp_path / "ir" / "99_final.graph.txt").read_text()
    assert "requant_scale/fp16: f16[64]" in final, final
    narrow_mms, wide_mms = _epilogues(narrow), _epilogues(wide)
    assert narrow_mms and len(narrow_mms) == len(wide_mms)
    for a, b in zip(narrow_mms, wide_mms):
        assert a.work.alu_ops == b.work.alu_ops + 1 == 3
        # (the quantize maps' scalar is narrowed in one build only: compare the epilogues' own ids)
        assert _stream_ids(a) == _stream_ids(b) - 2
    x = np.random.default_rng(3).standard_normal((96, 640)).astype(np.float32)
    (want,) = run_onnxruntime(onnx.load(str(path)), {"x": x})
    cosines = [cosine(p.run({"x": x})["y"], want) for p in (narrow, wide)]
    assert min(cosines) >= 0.99 and abs(cosines[0] - cosines[1]) < 1e-3, cosines
    np.testing.assert_array_equal(narrow.run({"x": x})["y"], narrow.run({"x": x}, interpret=True)["y"])
    lpuc.compile(
        _bare(tmp_path / "biased.onnx", 96, 640, 64, bias=True), precision="int8", dump_ir=tmp_path / "b"
    )
    biased = (tmp_path / "b" / "99_final.graph.txt").read_text()
    assert "f32[64]" in biased and "f16[64]" not in biased, biased
