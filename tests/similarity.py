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
