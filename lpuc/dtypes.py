"""dtype names as they appear in artifacts and IR dumps, including ml_dtypes' bfloat16/float8."""

from __future__ import annotations

import ml_dtypes
import numpy as np

_EXTRA = {
    name: np.dtype(getattr(ml_dtypes, name))
    for name in (
        "bfloat16",
        "float8_e4m3fn",
        "float8_e4m3fnuz",
        "float8_e5m2",
        "float8_e5m2fnuz",
        "int4",
        "uint4",
    )
    if hasattr(ml_dtypes, name)
}


def dtype_name(dtype: np.dtype) -> str:
    # numpy computes a dtype's name in Python on every access; a compile asks once per tile.
    dt = np.dtype(dtype)
    name = _NAMES.get(dt)
    if name is None:
        name = _NAMES[dt] = dt.name
    return name


_NAMES: dict[np.dtype, str] = {}


def dtype_from_name(name: str) -> np.dtype:
    return _EXTRA.get(name) or np.dtype(name)


def words_per_row(dtype: np.dtype) -> int:
    """MEM words one lane-row of this dtype occupies (a word holds one byte per lane)."""
    return np.dtype(dtype).itemsize
