"""Kernel semantics against ONNX's node test cases, evaluated by the kernel interpreter alone.

This isolates op meaning from compilation: when a conformance case fails through `lpuc.backend`
but passes here, the bug is in the compiler, not the kernel. A case is skipped only while one of
its ops has no kernel at all (the conformance suite counts those as failures).
"""

from __future__ import annotations

import numpy as np
import pytest

from lpuc.kernels import get_kernel
from lpuc.kernels.interpreter import evaluate_model
from tests.conformance.cases import assert_outputs_match, conformance_cases, normalize
from tests.conformance.test_conformance import expected_failures


def _missing_kernels(model) -> list[str]:
    missing = []

    def visit(graph):
        for node in graph.node:
            if get_kernel(node.op_type, node.domain) is None:
                missing.append(node.op_type)

    visit(model.graph)
    return missing


def _params():
    xfail = expected_failures()  # the same reasons hold for the kernels alone
    for case in conformance_cases():
        marks = [pytest.mark.xfail(strict=True, reason=xfail[case.name])] if case.name in xfail else []
        yield pytest.param(case, id=case.name, marks=marks)


@pytest.mark.parametrize("case", _params())
def test_kernel(case):
    missing = _missing_kernels(case.model)
    if missing:
        pytest.skip(f"no kernel for {sorted(set(missing))}")
    names = [i.name for i in case.model.graph.input]
    for inputs, expected in case.data_sets:
        feeds = dict(zip(names, (normalize(x) for x in inputs)))
        with np.errstate(all="ignore"):
            outputs = evaluate_model(case.model, feeds)
        assert_outputs_match(case, outputs, expected)
