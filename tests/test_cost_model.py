"""Each cost rule against cycles worked out by hand from lpuc/targets/tsp-v1.json.

tsp-v1 floorplan columns (west = 0): MXM0 0, MXM1 1, SXM0 2, MEM0..43 3..46, VXM 47, MEM44..87 48..91,
SXM1 92, MXM2 93, MXM3 94. Delays: MEM read 1, write 1; VXM 4 per chained ALU; SXM 8; MXM 20; IW 1;
stagger 1 per superlane after the first (320 lanes = 20 superlanes: 19). fp16 MXM: 2 cycles per row;
LW 8 words per cycle; 2 banks per slice; 32 streams each way; 16 ALUs per lane.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import lpuc
from lpuc import cost
from lpuc.cost import Stream, Work
from lpuc.schedule.validator import held_until
from lpuc.target import load_target
from tests.onnx_builders import single_op_model


@pytest.fixture(scope="module")
def v1():
    return load_target("tsp-v1")


def test_matmul_streams_rows_at_the_precision_rate(v1):
    # 100 fp16 rows (2 words each) from MEM0, fp32 results (4 words) to MEM1: N = 100 x 2 = 200; MEM1
    # needs 400 words in 200 cycles, so it books both banks. T = IW 1 + 200 + MXM 20 + (read 1 + 3 slices)
    # + (write 1 + 4 slices) + stagger 19 = 249.
    reads, writes = [Stream(0, 100, 2, 160)], [Stream(1, 100, 4, 320)]
    work = Work(vectors=100, macs=100 * 160 * 320)
    assert cost.port_needs(v1, "mxm.mm", reads + writes, 200) == {0: 1, 1: 2}
    assert cost.duration(v1, "mxm.mm", "MXM0", work, reads, writes, "fp16", install=True) == 249
    assert cost.duration(v1, "mxm.mm", "MXM0", work, reads, writes, "fp16", install=False) == 248


def test_matmul_waits_for_a_slice_that_serves_both_operands(v1):
    # Activations and results in MEM0: 200 + 400 words over 2 ports = 300 cycles > the MXM's 200.
    # T = 1 + 300 + 20 + (1 + 3) + (1 + 3) + 19 = 348.
    reads, writes = [Stream(0, 100, 2, 160)], [Stream(0, 100, 4, 320)]
    work = Work(vectors=100)
    assert cost.duration(v1, "mxm.mm", "MXM0", work, reads, writes, "fp16", install=True) == 348


def test_fp32_matmul_is_three_fp16_passes(v1):
    # fp32 mode: 6 cycles per row. 10 rows: N = 60. Operands far apart so MEM never binds.
    # T = 60 + 20 + (1 + 3) + (1 + 4) + stagger of 64 lanes (4 superlanes: 3) = 92.
    reads, writes = [Stream(0, 10, 4, 64)], [Stream(1, 10, 4, 64)]
    assert cost.duration(v1, "mxm.mm", "MXM0", Work(vectors=10), reads, writes, "fp32") == 92


def test_weight_load_is_limited_by_the_slice_ports(v1):
    # 160 fp16 weight rows = 320 words in MEM10 (column 13): the LW could take 8 words per cycle
    # (40 cycles), one slice's 2 banks give 2: 160 cycles. T = 160 + read 1 + 13 slices = 174.
    reads = [Stream(10, 160, 2, 320)]
    assert cost.unit_cycles(v1, "mxm.lw", Work(words=320)) == 40
    assert cost.duration(v1, "mxm.lw", "MXM0.LW", Work(words=320), reads, []) == 174


def test_map_chains_one_alu_per_op_and_streams_fp32_at_half_rate(v1):
    # fp32 a + b * c (3 ALU ops) over 320 rows: N = 320, but each operand slice holds 1,280 words for
    # 320 cycles: both banks, 640 cycles. d_func = 4 x 3 ALUs = 12. Reads from MEM40 (column 43) and
    # MEM50 (54): 7 slices to the VXM (47); write to MEM41 (44): 3. T = 640 + 12 + 8 + 4 + 19 = 683.
    reads = [Stream(40, 320, 4, 320), Stream(50, 320, 4, 320)]
    writes = [Stream(41, 320, 4, 320)]
    work = Work(vectors=320, alu_ops=3)
    assert cost.vxm_alus(v1, "vxm.map", work) == 3
    assert cost.duration(v1, "vxm.map", "VXM0", work, reads, writes) == 683


def test_map_with_more_ops_than_alus_wraps(v1):
    # 20 ALU ops on 16 ALUs: 2 passes per vector, all 16 ALUs held.
    work = Work(vectors=10, alu_ops=20)
    assert cost.vxm_alus(v1, "vxm.map", work) == 16
    assert cost.unit_cycles(v1, "vxm.map", work) == 20


def test_kernel_holds_as_many_alus_as_keep_up_with_its_stream(v1):
    # 900 vector ops over 100 streamed vectors: 9 ALUs keep pace, N = 100.
    assert cost.vxm_alus(v1, "vxm.kernel", Work(vectors=100, alu_ops=900)) == 9
    assert cost.unit_cycles(v1, "vxm.kernel", Work(vectors=100, alu_ops=900)) == 100
    # 400 ops over 10 vectors: all 16 ALUs, ceil(400 / 16) = 25 cycles.
    assert cost.vxm_alus(v1, "vxm.kernel", Work(vectors=10, alu_ops=400)) == 16
    assert cost.unit_cycles(v1, "vxm.kernel", Work(vectors=10, alu_ops=400)) == 25


def test_kernel_holding_fewer_alus_takes_longer_over_its_ops(v1):
    # A softmax of 128 rows: 512 vectors, 2,944 vector ops; six ALUs keep pace (N = 512). On four it
    # takes ceil(2944 / 4) = 736 cycles; never fewer than one ALU, never more than keep pace.
    work = Work(vectors=512, alu_ops=2944)
    assert cost.held_alus(v1, "vxm.kernel", work, None) == 6
    assert cost.held_alus(v1, "vxm.kernel", work, 4) == 4
    assert cost.held_alus(v1, "vxm.kernel", work, 0) == 1
    assert cost.held_alus(v1, "vxm.kernel", work, 9) == 6
    # A map on fewer ALUs than its ops wraps its chain over them: 11 ops on 8 ALUs, two passes.
    assert cost.held_alus(v1, "vxm.map", Work(vectors=10, alu_ops=11), 8) == 8
    assert cost.unit_cycles(v1, "vxm.map", Work(vectors=10, alu_ops=11), "fp16", 8) == 20
    assert cost.unit_cycles(v1, "vxm.map", Work(vectors=10, alu_ops=11)) == 10
    assert cost.unit_cycles(v1, "vxm.kernel", work) == 512
    assert cost.unit_cycles(v1, "vxm.kernel", work, "fp16", 4) == 736
    reads, writes = [Stream(40, 128, 4, 128)], [Stream(41, 128, 2, 128)]
    full = cost.duration(v1, "vxm.kernel", "VXM0", work, reads, writes)
    four = cost.duration(v1, "vxm.kernel", "VXM0", work, reads, writes, "fp16", False, None, 4)
    assert four - full == 736 - 512  # the same delays: only the ops stream more slowly


def test_switch_kernel(v1):
    # 50 vectors through SXM0 (column 2) from MEM0 (3) to MEM1 (4), 16 lanes (no stagger):
    # T = 50 + 8 + (1 + 1) + (1 + 2) = 63.
    reads, writes = [Stream(0, 25, 1, 16)], [Stream(1, 25, 1, 16)]
    assert cost.duration(v1, "sxm.kernel", "SXM0", Work(vectors=50), reads, writes) == 63


def test_host_op_costs_its_work_and_both_pcie_transfers(v1):
    # 1e6 FLOPs at 50 GFLOP/s (20 us) + 1e6 bytes at 10 GB/s (100 us) = 120 us = 108,000 cycles;
    # 2.4 MB to the host: 10 us + 100 us = 99,000 cycles; nothing back. Total 207,000.
    work = Work(host_flops=10**6, host_bytes=10**6, pcie_to_host=2_400_000)
    assert cost.host_cycles(v1, work) == 108_000 + 99_000
    assert cost.duration(v1, "host.kernel", "HOST", work, [], []) == 207_000


def test_streams_flow_towards_the_unit_and_back(v1):
    # MXM0 sits west of every slice: fp16 activations flow west (2 streams), fp32 results east (4).
    reads, writes = [Stream(0, 100, 2, 320)], [Stream(1, 100, 4, 320)]
    assert cost.stream_needs(v1, "mxm.mm", "MXM0", reads, writes) == (4, 2)
    # A kernel walks its tiles one at a time: the widest read and write only.
    many = [Stream(s, 10, 4, 320) for s in range(5)]
    assert cost.stream_needs(v1, "vxm.kernel", "VXM0", many, []) == (4, 0)


def test_ports_never_exceed_the_banks(v1):
    streams = [Stream(7, 10, 4, 320)] * 3
    assert cost.port_needs(v1, "vxm.map", streams, 10) == {7: 2}
    assert cost.mem_cycles({7: 2}, streams) == 60


def _maxpool_model() -> onnx.ModelProto:
    node = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3])
    graph = helper.make_graph(
        [node],
        "pool",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 6, 6])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def test_pooling_costs_taps_over_output_vectors():
    # 3x3 max pool, [8, 8] -> [6, 6]: 8 input + 6 output vectors streamed; 9 taps x 6 output vectors =
    # 54 vector ops: ceil(54 / 14) = 4 ALUs keep up, N = 14 (it was 9 x 14 = 126 on one ALU).
    program = lpuc.compile(_maxpool_model(), precision="fp32")
    (pool,) = [i for i in program.instructions if i.opcode == "vxm.kernel"]
    assert pool.work.vectors == 14 and pool.work.alu_ops == 54
    assert sum(u.startswith("VXM") for u in pool.units) == 4
    x = np.random.default_rng(0).standard_normal((1, 1, 8, 8)).astype(np.float32)
    windows = np.lib.stride_tricks.sliding_window_view(x[0, 0], (3, 3)).max(axis=(2, 3))
    np.testing.assert_array_equal(program.run({"x": x})["y"][0, 0], windows)


def test_mxm_bound_is_macs_over_peak_throughput():
    # [16, 160] x [160, 320] fp16 = 819,200 MACs; four planes x 25,600 fp16 MACs per cycle: 8 cycles.
    rng = np.random.default_rng(0)
    w = helper.make_tensor("w", TensorProto.FLOAT, [160, 320], rng.standard_normal(160 * 320).tolist())
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [16, 160])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [16, 320])],
        [w],
    )
    program = lpuc.compile(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]))
    assert program.summary["macs"] == 819_200
    assert program.summary["lower_bound_cycles"]["mxm"] == 8


def test_weight_load_bound_counts_each_weight_byte_once():
    # One row through [640, 640] fp16 weights: 819,200 bytes must reach the planes, at 8 words of 320
    # bytes per cycle per plane over four planes = 80 cycles, far above the 4-cycle MAC bound.
    w = np.random.default_rng(0).standard_normal((640, 640)).astype(np.float32)
    program = lpuc.compile(
        single_op_model("MatMul", [("x", [1, 640])], [("y", [1, 640])], initializers={"w": w})
    )
    bounds = program.summary["lower_bound_cycles"]
    assert bounds["lw"] == 80 and bounds["mxm"] == 4
    assert program.summary["cycles"] >= bounds["overall"] >= 80


def test_weight_load_over_four_slices_reaches_its_rate(v1):
    # The same 320 words as four 40-row windows in MEM10..13 (columns 13..16): 80 words per slice over
    # 2 ports = 40 cycles = the LW's own 8 words per cycle. T = 40 + read 1 + 16 slices = 57.
    reads = [Stream(10 + j, 40, 2, 320) for j in range(4)]
    assert cost.port_needs(v1, "mxm.lw", reads, 40) == {10: 2, 11: 2, 12: 2, 13: 2}
    assert cost.duration(v1, "mxm.lw", "MXM0.LW", Work(words=320), reads, []) == 57


def test_a_plane_is_held_while_rows_stream_in(v1):
    # The 100-row fp16 MM of the first test: its plane is busy for IW 1 + N 200 = 201 cycles of its
    # 249; results drain meanwhile. Without installing: 200. MEM-bound (one slice): 1 + 300.
    reads, writes = [Stream(0, 100, 2, 160)], [Stream(1, 100, 4, 320)]
    work = Work(vectors=100)
    assert cost.occupancy(v1, "mxm.mm", "MXM0", work, reads, writes, "fp16", install=True) == 201
    assert cost.occupancy(v1, "mxm.mm", "MXM0", work, reads, writes, "fp16", install=False) == 200
    same = [Stream(0, 100, 4, 320)]
    assert cost.occupancy(v1, "mxm.mm", "MXM0", work, reads, same, "fp16", install=True) == 301
    # Every other unit is held for the whole duration.
    lw = [Stream(10, 160, 2, 320)]
    assert cost.occupancy(v1, "mxm.lw", "MXM0.LW", Work(words=320), lw, []) == 174


def test_plane_busy_percent_counts_occupancy_not_duration():
    # The report's busy % of an MXM plane counts the cycles its MMs hold it (rows streaming in), not
    # their whole duration: results draining through the result delay leave the plane free.
    w = np.random.default_rng(0).standard_normal((320, 320)).astype(np.float32)
    program = lpuc.compile(
        single_op_model("MatMul", [("x", [256, 320])], [("y", [256, 320])], initializers={"w": w})
    )
    planes = [u for u in program.summary["units"] if u.startswith("MXM") and "." not in u]
    held = dict.fromkeys(planes, 0)
    for ins in program.instructions:
        if ins.opcode == "mxm.mm":
            assert held_until(program, ins, ins.unit) - ins.start < ins.duration
            held[ins.unit] += held_until(program, ins, ins.unit) - ins.start
    cycles = program.summary["cycles"]
    for u in planes:
        assert program.summary["units"][u] == pytest.approx(100 * held[u] / cycles, abs=0.01)


def test_gather_data_windows_move_at_most_the_result_rows(v1):
    # An embedding Gather: two 320-row fp16 table tiles on MEM0 (addressed: 128 ids read at most
    # 128 rows of each), the ids [1, 128] int64 on MEM1, a [1, 128, 320] result on MEM2. MEM0 then
    # moves 2 x 128 x 2 = 512 words, not 2 x 320 x 2; any other kernel's windows move whole.
    class Window:
        def __init__(self, slice_index, rows, words, lanes=320):
            self.slice, self.nrows, self.words, self.nlanes = slice_index, rows, words, lanes

    reads = [Window(0, 320, 2), Window(0, 320, 2), Window(1, 1, 8, 128)]
    writes = [Window(2, 128, 2)]
    attrs = {
        "kernel": "Gather",
        "domain": "",
        "inputs": [{"count": 2, "shape": [640, 320]}, {"count": 1, "shape": [1, 128]}],
        "outputs": [{"count": 1, "shape": [1, 128, 320]}],
    }
    where = lambda w: (w.slice, w.words)  # noqa: E731
    ins, outs = cost.window_streams("sxm.kernel", attrs, reads, writes, where)
    assert [s.rows for s in ins] == [128, 128, 1] and [s.rows for s in outs] == [128]
    assert cost.mem_cycles({0: 1, 1: 1, 2: 1}, ins + outs) == 512
    softmax, _ = cost.window_streams("sxm.kernel", {**attrs, "kernel": "Softmax"}, reads, writes, where)
    assert [s.rows for s in softmax] == [320, 320, 1]


def test_a_window_at_later_lanes_is_charged_the_stagger_to_its_last_lane(v1):
    """An MM result written at lanes [256, 288) of its tile (a Concat done in place) reaches
    superlane 17: its stream counts 288 lanes, and the op takes the stagger of 18 superlanes, not 2.
    The validator's windows count lanes from the word (packed tiles): minus their tile's lane."""
    from lpuc.ir.tiled import Ref

    where = lambda w: (0, 1)  # noqa: E731
    at_zero, shifted = Ref(0, 0, 100, 0, 32), Ref(0, 0, 100, 256, 32)
    _, (plain,) = cost.window_streams("vxm.map", {}, [], [at_zero], where)
    _, (late,) = cost.window_streams("vxm.map", {}, [], [shifted], where)
    assert (plain.lanes, late.lanes) == (32, 288)
    _, (packed,) = cost.window_streams("vxm.map", {}, [], [shifted], where, lambda w: 160)
    assert packed.lanes == 128
    work = Work(vectors=100, alu_ops=1, elem_ops=3200)
    assert (
        cost.duration(v1, "vxm.map", "VXM0", work, [], [late])
        - cost.duration(v1, "vxm.map", "VXM0", work, [], [plain])
        == v1.stagger(288) - v1.stagger(32)
        > 0
    )


def test_work_hash_is_kept_and_matches_equality(v1):
    # Work keeps its hash once computed (cost answers are keyed by it): records equal in every field
    # hash alike, one field apart they are different keys, and the kept hash is no field.
    from dataclasses import asdict, fields, replace

    base = Work(vectors=128, words=4, alu_ops=3, macs=9, relay_words=2)
    assert hash(base) == hash(base) == hash(Work(vectors=128, words=4, alu_ops=3, macs=9, relay_words=2))
    memo = {base: "base"}
    for f in fields(Work):
        other = replace(base, **{f.name: not getattr(base, f.name) if f.type == "bool" else 7})
        assert other != base and other not in memo, f.name
    assert [f.name for f in fields(Work)] == list(asdict(base))
    assert base.to_list() == [128, 4, 3, 9, 0, 0, 0, 0, 0, 2, 0]
    assert "_hash" not in repr(base)
    # The cost answers read through the memo are those of an equal record made afresh.
    s = (Stream(0, 128, 2, 320),)
    again = Work(vectors=128, words=4, alu_ops=3, macs=9, relay_words=2)
    assert cost.duration(v1, "mxm.mm", "MXM0", base, s, s) == cost.duration(v1, "mxm.mm", "MXM0", again, s, s)
    longer = replace(base, vectors=256)
    assert cost.duration(v1, "mxm.mm", "MXM0", longer, s, s) > cost.duration(v1, "mxm.mm", "MXM0", base, s, s)
