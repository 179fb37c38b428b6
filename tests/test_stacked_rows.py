"""Stacked rows (lpuc/lowering/stacked_rows.py): a 4-byte value only maps read (an int8 GEMM's fp32
input) in shorter tiles on several slices, which one map reads side by side at a row per cycle.
Numerics against onnxruntime; costs from lpuc.cost's rules; the validator refuses a stack that is
not the rows of the result."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import lpuc
from lpuc import cost
from lpuc.cost import Stream
from lpuc.target import load_target
from tests.kernels.oracle import run_onnxruntime
from tests.mutate import refusals, with_instruction
from tests.onnx_builders import single_op_model

M, K, N = 640, 640, 320


@pytest.fixture(scope="module")
def gemm():
    w = (np.random.default_rng(3).standard_normal((K, N)) / np.sqrt(K)).astype(np.float32)
    return single_op_model("MatMul", [("x", [M, K])], [("y", [M, N])], initializers={"w": w})


def _stacked_maps(program) -> list:
    return [
        i
        for i in program.instructions
        if i.opcode == "vxm.map" and any(isinstance(k, list) for k in i.attrs["operands"])
    ]


def test_int8_input_quantize_reads_two_slices_at_a_row_per_cycle(gemm):
    program = lpuc.compile(gemm, precision="int8")
    maps = _stacked_maps(program)
    assert maps, "the fp32 input's quantize maps should read stacked tiles"
    for ins in maps:
        (stack,) = [k for k in ins.attrs["operands"] if isinstance(k, list)]
        parts = [ins.reads[j] for j in stack]
        assert len({a.slice for a in parts}) == len(parts)  # placement put the halves apart
        assert sum(a.nrows for a in parts) == ins.writes[0].nrows
        # a row per cycle: the slowest slice streams its half in about the result's rows
        n_rows = ins.writes[0].nrows
        assert ins.duration < 2 * n_rows
    x = np.random.default_rng(0).standard_normal((M, K)).astype(np.float32)
    (expected,) = run_onnxruntime(gemm, {"x": x})
    got = program.run({"x": x})["y"]
    cosine = float(np.dot(got.ravel(), expected.ravel()) / (np.linalg.norm(got) * np.linalg.norm(expected)))
    assert cosine > 0.999, cosine
    # the same rows as the old layout would give, to the bit: only where the words live moved
    plain = lpuc.compile(gemm, precision="int8", disable_passes=("stacked_rows",))
    assert not _stacked_maps(plain)
    assert np.array_equal(plain.run({"x": x})["y"], got)
    assert program.summary["cycles"] < plain.summary["cycles"]


def test_a_model_input_is_stacked_one_bank_per_slice(gemm):
    """The fp32 input (4 words a row, no op writes it) is cut into four tiles: its quantize maps
    read a word a cycle from each of four slices, booking one of each slice's two ports (the other
    stays free for the weight loads and MMs on that slice), still at a row per cycle."""
    program = lpuc.compile(gemm, precision="int8")
    target = load_target("tsp-v1")
    for ins in _stacked_maps(program):
        (stack,) = [k for k in ins.attrs["operands"] if isinstance(k, list)]
        parts = [ins.reads[j] for j in stack]
        assert len(parts) == 4 and len({a.slice for a in parts}) == 4
        for a in parts:
            ports = [u for u in ins.units if u.startswith(f"MEM{a.slice}.")]
            assert len(ports) == 1 < target.mem_banks, (ins.id, ports)
        assert ins.duration < 2 * ins.writes[0].nrows


def test_stacked_windows_share_one_operands_stream_ids():
    v1 = load_target("tsp-v1")
    halves = [Stream(10, 160, 4, 320, stacked=2), Stream(20, 160, 4, 320, stacked=2)]
    out = [Stream(30, 320, 1, 320)]
    # slices 10 and 20 lie west of the VXM: the operand's one fp32 vector per row takes 4 ids east
    assert cost.stream_needs(v1, "vxm.map", "VXM0", halves, out, cost.Work(vectors=320, alu_ops=2)) == (4, 1)
    apart = [s._replace(stacked=1) for s in halves]
    assert cost.stream_needs(v1, "vxm.map", "VXM0", apart, out, cost.Work(vectors=320, alu_ops=2)) == (8, 1)
    # MEM words stay per slice: 640 words over 2 ports each, as fast as the 320 rows
    work = cost.Work(vectors=320, alu_ops=2)
    assert cost.streaming_cycles(v1, "vxm.map", work, halves, out, "int8", None) == 320
    assert cost.stack_sizes("vxm.map", {"operands": [[0, 1], 2]}, 3) == [2, 2, 1]
    assert cost.stack_sizes("mxm.lw", {}, 2) == [1, 1]


def test_validator_refuses_a_stack_that_is_not_the_result_rows(gemm):
    program = lpuc.compile(gemm, precision="int8")
    ins = _stacked_maps(program)[0]
    index = program.instructions.index(ins)
    (at,) = [n for n, k in enumerate(ins.attrs["operands"]) if isinstance(k, list)]
    operands = list(ins.attrs["operands"])
    operands[at] = operands[at][:1] * 2  # one half twice: its rows stream as if it were two
    problems = refusals(with_instruction(program, index, attrs={**ins.attrs, "operands": operands}))
    assert any("stacked operand" in p for p in problems), problems


@pytest.fixture(scope="module")
def k_split():
    """One 320-row tile, K = 1280: too few chains for four planes, so K is split into parts whose
    int32 partial sums an MM writes over two slices (stacked) and one map adds."""
    w = (np.random.default_rng(5).standard_normal((1280, N)) / np.sqrt(1280)).astype(np.float32)
    return single_op_model("MatMul", [("x", [320, 1280])], [("y", [320, N])], initializers={"w": w})


def test_int8_partial_sums_written_over_two_slices_at_the_mms_row_rate(k_split):
    program = lpuc.compile(k_split, precision="int8")
    stacked = [i for i in program.instructions if i.opcode == "mxm.mm" and len(i.writes) > 1]
    assert stacked, "the K parts' partial sums should be written stacked"
    for ins in stacked:
        assert len({a.slice for a in ins.writes}) == len(ins.writes)
        assert sum(a.nrows for a in ins.writes) == ins.reads[0].nrows
        # the plane takes a row per cycle (int8): not held twice as long for its int32 writes
        assert ins.duration < 2 * ins.reads[0].nrows
    x = np.random.default_rng(1).standard_normal((320, 1280)).astype(np.float32)
    (expected,) = run_onnxruntime(k_split, {"x": x})
    got = program.run({"x": x})["y"]
    cosine = float(np.dot(got.ravel(), expected.ravel()) / (np.linalg.norm(got) * np.linalg.norm(expected)))
    assert cosine > 0.999, cosine
    plain = lpuc.compile(k_split, precision="int8", disable_passes=("stacked_rows",))
    assert not any(len(i.writes) > 1 for i in plain.instructions if i.opcode == "mxm.mm")
    assert np.array_equal(plain.run({"x": x})["y"], got)


def test_validator_refuses_stacked_mm_writes_that_are_not_its_rows(k_split):
    program = lpuc.compile(k_split, precision="int8")
    index, ins = next((k, i) for k, i in enumerate(program.instructions) if len(i.writes) > 1)
    problems = refusals(with_instruction(program, index, writes=ins.writes[:1] * 2))
    assert any("several windows" in p for p in problems), problems
    assert cost.write_stack_sizes("mxm.mm", {}, 2) == [2, 2]
    assert cost.write_stack_sizes("mxm.mm", {"epilogue": {}}, 1) == [1]


@pytest.fixture(scope="module")
def mlp_after_norm():
    """LayerNorm over 128 tokens (row segments: 64-row tiles), an up projection to 640 whose fp32
    result only the bias-and-ReLU map reads, and a down projection reading that map's result (so the
    map writes it as fp16: 2 words a row, which one slice keeps up with)."""
    rng = np.random.default_rng(7)
    rows, width, hidden = 128, 256, 640
    inits = {
        "scale": np.ones(width, np.float32),
        "shift": np.zeros(width, np.float32),
        "w1": (rng.standard_normal((width, hidden)) / np.sqrt(width)).astype(np.float32),
        "b1": rng.standard_normal(hidden).astype(np.float32) * 0.1,
        "w2": (rng.standard_normal((hidden, width)) / np.sqrt(hidden)).astype(np.float32),
    }
    nodes = [
        helper.make_node("LayerNormalization", ["x", "scale", "shift"], ["n"], axis=-1),
        helper.make_node("MatMul", ["n", "w1"], ["up"]),
        helper.make_node("Add", ["up", "b1"], ["biased"]),
        helper.make_node("Relu", ["biased"], ["h"]),
        helper.make_node("MatMul", ["h", "w2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp_after_norm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, width])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_products_result_stacked_when_its_mms_end_there(mlp_after_norm):
    """The up projection's MMs are 64 rows (the LayerNorm's segments): its result goes in 64-row
    tiles on two slices at no extra MM, and the map reads both at a row per cycle. Same numbers as
    onnxruntime (fp16 tolerance) and, to the bit, as the build without the strategy."""
    program = lpuc.compile(mlp_after_norm, precision="fp16")
    plain = lpuc.compile(mlp_after_norm, precision="fp16", disable_passes=("stacked_products",))
    maps = [i for i in _stacked_maps(program) if any(program.tiles[a.buf].tensor == "up" for a in i.reads)]
    assert maps, "the bias-and-ReLU map should read the product's result stacked"
    assert not _stacked_maps(plain)
    for ins in maps:
        (stack,) = [k for k in ins.attrs["operands"] if isinstance(k, list)]
        parts = [ins.reads[j] for j in stack]
        assert len({a.slice for a in parts}) == len(parts) == 2
        assert ins.duration < 2 * ins.writes[0].nrows  # a row a cycle, not one every other cycle
    mms = [sum(i.opcode == "mxm.mm" for i in p.instructions) for p in (program, plain)]
    assert mms[0] == mms[1]
    x = np.random.default_rng(0).standard_normal((128, 256)).astype(np.float32)
    (expected,) = run_onnxruntime(mlp_after_norm, {"x": x})
    got = program.run({"x": x})["y"]
    np.testing.assert_allclose(got, expected, rtol=2e-2, atol=1e-3)
    assert np.array_equal(plain.run({"x": x})["y"], got)
    assert program.summary["cycles"] < plain.summary["cycles"]
