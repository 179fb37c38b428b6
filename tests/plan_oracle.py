"""The execution plan's oracle check: its outputs must equal the plain interpreter's bit for bit.

tests/conftest.py applies it to the first plan run of every program the test suite runs;
tests/test_runtime_plan.py applies it to a chosen set of programs, runs and mutations.
"""

from __future__ import annotations

import numpy as np


def assert_identical(expected: dict[str, np.ndarray], actual: dict[str, np.ndarray], what: str = "") -> None:
    """Same names in the same order, same dtypes and shapes, same bytes (NaN payloads and signed
    zeros included; object arrays, e.g. strings, by value)."""
    where = f"{what}: " if what else ""
    assert list(actual) == list(expected), f"{where}outputs {list(actual)} != {list(expected)}"
    for name, e in expected.items():
        a = np.asarray(actual[name])
        e = np.asarray(e)
        assert a.dtype == e.dtype and a.shape == e.shape, (where + name, a.dtype, e.dtype, a.shape, e.shape)
        same = np.array_equal(a, e) if e.dtype.hasobject else a.tobytes() == e.tobytes()
        assert same, f"{where}output {name!r} of the execution plan differs from the interpreter's"
