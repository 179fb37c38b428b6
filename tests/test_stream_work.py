"""tests/benchmarks/stream_work.py: the stream-cycles an artifact holds, and the floor they put under it."""

from __future__ import annotations

import numpy as np

from lpuc.api import compile as lpuc_compile
from tests.benchmarks.stream_work import stream_work
from tests.onnx_builders import single_op_model


def test_stream_cycles_fit_the_schedule_and_add_up_by_kind():
    w = np.random.default_rng(0).standard_normal((1280, 320)).astype(np.float32)
    model = single_op_model("MatMul", [("x", [640, 1280])], [("y", [640, 320])], initializers={"w": w})
    program = lpuc_compile(model, precision="int8")
    per_direction, per_kind = stream_work(program)
    streams, cycles = program.target.streams_per_direction, program.summary["cycles"]
    for direction in "EW":
        # The scheduler never books more streams than a direction has, so their cycles fit the makespan.
        assert 0 < per_direction[direction] <= streams * cycles
        assert per_direction[direction] == sum(v for (_, _, d), v in per_kind.items() if d == direction)
    # The fp32 input's on-chip quantization (VXM maps) holds streams, as do the MMs and weight loads.
    opcodes = {opcode for opcode, _, _ in per_kind}
    assert {"vxm.map", "mxm.mm", "mxm.lw"} <= opcodes
    held = 0
    for ins in program.instructions:
        held += (ins.end - ins.start) * sum(u.startswith(("SE", "SW")) for u in ins.units)
    assert held == per_direction["E"] + per_direction["W"]
