"""Cosine similarity of a build's output to onnxruntime's, as the int8 and fp16 tests judge it.

All-zero outputs give NaN, which fails every `>=` threshold: a test cannot pass on outputs that
carry nothing (lpuc run --check's own metric, lpuc.cli, reports such a pair as equal instead).
"""

from __future__ import annotations

import numpy as np


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# The issues' bars: fp32 builds match onnxruntime at rtol 1e-4; fp16 and int8 builds by cosine.
MIN_COSINE = {"fp16": 0.999, "int8": 0.99}


def assert_matches(
    got: np.ndarray, want: np.ndarray, precision: str, atol: float = 1e-5, msg: str = ""
) -> None:
    """`got` (a `precision` build's output) against onnxruntime's fp32 `want`: allclose at rtol 1e-4
    and `atol` for fp32, cosine >= MIN_COSINE[precision] otherwise."""
    if precision == "fp32":
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=atol, err_msg=msg)
    else:
        assert cosine(got, want) >= MIN_COSINE[precision], msg
