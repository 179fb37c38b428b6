"""Seeded fuzzing of compile / decode / run (tests/fuzz.py): no case may crash or hang.

`make fuzz` runs thousands of cases; CI runs the first CASES of seed 0 (a few seconds).
"""

from __future__ import annotations

import time

import pytest

from tests.fuzz import LPU_MUTATORS, ONNX_MUTATORS, Fuzzer, classify, summarize

CASES = 208  # 16 rounds of the 13 mutators


@pytest.fixture(scope="module")
def fuzzer():
    return Fuzzer(seed=0)


def test_no_crash_or_hang(fuzzer):
    outcomes = [fuzzer.case(k) for k in range(CASES)]
    print("\n" + summarize(outcomes))
    bad = [
        f"case {k}: {o.mutator} {o.result}: {o.detail}"
        for k, o in enumerate(outcomes)
        if o.result in ("crash", "timeout")
    ]
    assert not bad, "\n".join(bad) + "\n(reproduce with: python -m tests.fuzz --case N -v)"
    # Every mutator ran, and the mutations are not all trivially rejected or all harmless.
    assert {o.mutator for o in outcomes} == set(ONNX_MUTATORS) | set(LPU_MUTATORS)
    results = {o.result for o in outcomes}
    assert {"ok", "error"} <= results


def test_harness_catches_crashes_and_hangs():
    def crash():
        raise KeyError("boom")

    def hang():
        time.sleep(5)

    assert classify("m", crash).result == "crash"
    assert classify("m", hang, seconds=1).result == "timeout"
    assert classify("m", lambda: None).result == "ok"
