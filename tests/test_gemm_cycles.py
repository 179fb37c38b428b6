"""Issue 9's tall GEMM and the two things that keep its planes busy: tiles cut so its accumulation
chains share the MXM planes evenly (lpuc/lowering/plane_rows.py), and chains ranked in waves, so the
quantize maps run in the order the planes consume them (lpuc/schedule/scheduler.py _chain_waves).
Numerics against onnxruntime; cycles against the figures measured when these went in."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest

import lpuc
from tests.kernels.oracle import run_onnxruntime
from tests.onnx_builders import single_op_model
from tests.similarity import cosine

# [2304x4096]x[4096x320], measured with plane_rows and chain waves (before: int8 14,288, fp16 32,405),
# then int8 with its input stacked one bank per slice and its epilogues' results over two slices
# (lpuc/lowering/stacked_rows.py, stacked_results.py): 12,329 -> 10,464; then one quantize map per two
# chains (plane_rows.MAP_CHAINS): 10,464 -> 9,827; then its reloaded weights packed on the 16 slices
# nearest the VXM (lpuc/schedule/placement.py _weight_slices): 9,827 -> 8,963; then each wave's quantize
# maps ranked ahead of its chains (lpuc/schedule/scheduler.py _maps_ahead_of_their_wave) and the
# dequantizing epilogue's per-channel scale stored as fp16 (passes/store_int8_constants_fp16.py): 8,841.
GEMM_CYCLES = {"int8": 8_841, "fp16": 31_437}


def _matmul(path: Path, m: int, k: int, n: int) -> Path:
    """y = x @ W, W seeded random: the shape of tests/benchmarks/int8_bench.py's GEMM."""
    w = np.random.default_rng(0).standard_normal((k, n)).astype(np.float32)
    onnx.save(single_op_model("MatMul", [("x", [m, k])], [("y", [m, n])], initializers={"w": w}), path)
    return path


@pytest.mark.slow  # two full-size compiles, ~30 s
@pytest.mark.parametrize("precision", ["int8", "fp16"])
def test_tall_gemm_keeps_its_cycles_and_numerics(tmp_path, precision):
    path = _matmul(tmp_path / "gemm.onnx", 2304, 4096, 320)
    program = lpuc.compile(path, precision=precision)
    assert program.summary["cycles"] <= GEMM_CYCLES[precision]
    # Eight 288-row chains, two a plane: every plane streams the same rows. (int8: the dequantizing
    # epilogue writes each chain's fp32 rows over two 144-row tiles, lpuc/lowering/stacked_results.py)
    assert {t.rows for t in program.tiles if t.tensor == "y"} == {144 if precision == "int8" else 288}
    mm_rows = Counter()
    for i in program.instructions:
        if i.opcode == "mxm.mm":
            mm_rows[i.unit] += i.reads[0].nrows
    assert len(mm_rows) == 4 and len(set(mm_rows.values())) == 1, mm_rows
    x = np.random.default_rng(1).standard_normal((2304, 4096)).astype(np.float32)
    (want,) = run_onnxruntime(onnx.load(str(path)), {"x": x})
    assert cosine(program.run({"x": x})["y"], want) >= 0.99


def test_plane_rows_only_where_they_shorten_the_busiest_plane(tmp_path):
    """1536 rows: five chains on the default tiles (four of 320, one of 256: a plane runs two) become
    eight of 192, two a plane. 1280 rows are four 320-row chains already, and a short product's
    rows are not cut (its K is split over the planes instead)."""
    tall = lpuc.compile(_matmul(tmp_path / "tall.onnx", 1536, 640, 64), precision="int8")
    assert _chain_rows(tall) == {192}
    # Each quantize map covers two chains (plane_rows.MAP_CHAINS): the MMs of two chains read
    # windows of its result tile, one 192-row half each.
    maps = [i for i in tall.instructions if i.opcode == "vxm.map" and i.node.endswith("round_cast")]
    assert maps and {i.writes[0].nrows for i in maps} == {384}
    readers = Counter(
        (i.reads[0].slice, i.reads[0].addr)
        for i in tall.instructions
        if i.opcode == "mxm.mm" and i.reads[0].buf in {m.writes[0].buf for m in maps}
    )
    assert len(readers) == 2 * len(maps) and set(readers.values()) == {1}
    default = lpuc.compile(
        _matmul(tmp_path / "tall.onnx", 1536, 640, 64), precision="int8", disable_passes=["plane_rows"]
    )
    assert _chain_rows(default) == {320, 256}
    x = np.random.default_rng(2).standard_normal((1536, 640)).astype(np.float32)
    (want,) = run_onnxruntime(onnx.load(str(tmp_path / "tall.onnx")), {"x": x})
    got = tall.run({"x": x})["y"]
    assert cosine(got, want) >= 0.99
    np.testing.assert_array_equal(got, tall.run({"x": x}, interpret=True)["y"])
    even = lpuc.compile(_matmul(tmp_path / "even.onnx", 1280, 640, 64), precision="int8")
    assert _chain_rows(even) == {320}
    short = lpuc.compile(_matmul(tmp_path / "short.onnx", 128, 640, 64), precision="int8")
    assert _chain_rows(short) == {128}


def _chain_rows(program) -> set[int]:
    """Rows of the products' accumulation chains (the activation rows each MM streams; the int8
    result tiles are cut further, over two slices, by lpuc/lowering/stacked_results.py)."""
    return {i.reads[0].nrows for i in program.instructions if i.opcode == "mxm.mm"}


@pytest.mark.parametrize("precision", ["int8", "fp16"])
def test_reloaded_weights_packed_near_the_vxm_only_beside_maps(tmp_path, precision):
    """1536x640x64: eight chains reload each weight tile eight times (more than the four planes).
    In int8 the MMs read what the quantize maps write, so the tiles go to the 16 slices nearest the
    VXM (planes x lw_words_per_cycle / banks); in fp16 no map feeds them and they spread as before."""
    program = lpuc.compile(_matmul(tmp_path / "tall.onnx", 1536, 640, 64), precision=precision)
    target = program.target
    vxm = target.position("VXM0")
    nearest = sorted(range(target.num_slices), key=lambda s: (abs(target.slice_positions[s] - vxm), s))
    loaded = {a.slice for i in program.instructions if i.opcode == "mxm.lw" for a in i.reads}
    count = target.num_mxm * target.lw_words_per_cycle // target.mem_banks
    assert count == 16
    # All on one side of the VXM, among its 16 nearest slices (both sides' nearest: 32 candidates).
    packed = loaded <= set(nearest[: 2 * count]) and len(loaded) <= count
    assert packed == (precision == "int8"), sorted(loaded)
    x = np.random.default_rng(3).standard_normal((1536, 640)).astype(np.float32)
    (want,) = run_onnxruntime(onnx.load(str(tmp_path / "tall.onnx")), {"x": x})
    got = program.run({"x": x})["y"]
    assert cosine(got, want) >= 0.99
    np.testing.assert_array_equal(got, program.run({"x": x}, interpret=True)["y"])
