"""ONNX backend node tests through lpuc.backend (the whole toolchain), against onnx's expected outputs.

Cases listed in expected_failures.txt must fail cleanly (an lpuc error or a numeric mismatch, never a
crash); a listed case that starts passing fails the suite (strict xfail), so the list only shrinks.
Any unlisted case that fails, fails the suite.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import lpuc.backend
from lpuc.errors import LpucError
from tests.conformance.cases import conformance_cases, run_case

EXPECTED_FAILURES = Path(__file__).with_name("expected_failures.txt")


def expected_failures() -> dict[str, str]:
    out = {}
    for line in EXPECTED_FAILURES.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, reason = line.partition("#")
            out[name.strip()] = reason.strip()
    return out


def _params():
    xfail = expected_failures()
    for case in conformance_cases():
        marks = []
        if case.name in xfail:
            marks.append(
                pytest.mark.xfail(strict=True, raises=(LpucError, AssertionError), reason=xfail[case.name])
            )
        yield pytest.param(case, id=case.name, marks=marks)


def test_expected_failures_are_real_cases():
    names = {c.name for c in conformance_cases()}
    unknown = sorted(set(expected_failures()) - names)
    assert not unknown, f"expected_failures.txt lists unknown cases: {unknown[:5]}"
    assert all(expected_failures().values()), "every expected failure needs a reason"


@pytest.mark.slow
@pytest.mark.parametrize("case", _params())
def test_node_case(case):
    run_case(case, lpuc.backend)
