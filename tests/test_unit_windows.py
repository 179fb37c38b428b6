"""tests/benchmarks/unit_windows.py: busy cycles per unit over windows of a schedule, stage ends."""

from __future__ import annotations

import numpy as np
import pytest

from lpuc.api import compile as lpuc_compile
from lpuc.schedule.summary import held_until
from tests.benchmarks.unit_windows import stage_ends, unit_windows
from tests.onnx_builders import single_op_model


@pytest.fixture(scope="module")
def program():
    w = np.random.default_rng(0).standard_normal((1280, 320)).astype(np.float32)
    model = single_op_model("MatMul", [("x", [640, 1280])], [("y", [640, 320])], initializers={"w": w})
    return lpuc_compile(model, precision="int8")


@pytest.mark.parametrize("window", [1, 97, 1000, 10**9])
def test_windows_add_up_to_the_units_busy_cycles(program, window):
    busy = unit_windows(program, window)
    cycles = program.summary["cycles"]
    assert len(next(iter(busy.values()))) == -(-cycles // window)
    for unit, per_window in busy.items():
        # A unit runs one instruction at a time: never busier than a window is long.
        assert all(0 <= b <= window for b in per_window), unit
    # Every instruction's time on each unit lands in some window, an MM's plane only while it
    # streams its rows in (as lpuc report counts it).
    for unit in ("MXM0", "MXM1", "MXM2", "MXM3", "MXM0.LW", "VXM0"):
        total = 0
        for ins in program.instructions:
            if unit in ins.units:
                total += (held_until(program, ins, unit) if unit == ins.unit else ins.end) - ins.start
        assert sum(busy[unit]) == total, unit
    assert sum(sum(v) for u, v in busy.items() if u.startswith("MXM") and "." not in u) > 0
    # The report's busy share is the same count.
    share = program.summary["units"]["MXM0"]
    assert abs(100 * sum(busy["MXM0"]) / cycles - share) < 0.1


def test_stage_ends(program):
    ends = stage_ends(program, ["", "no such node"])
    assert ends == {"": program.summary["cycles"], "no such node": 0}


def test_window_must_be_positive(program):
    with pytest.raises(ValueError):
        unit_windows(program, 0)
