"""Small helpers shared by kernel modules."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def normalize_axis(axis: int, rank: int) -> int:
    """ONNX allows negative axes counted from the end."""
    return axis + rank if axis < 0 else axis


def normalize_axes(axes: Iterable[int], rank: int) -> tuple[int, ...]:
    return tuple(normalize_axis(int(a), rank) for a in axes)


def ints(value: np.ndarray | None) -> list[int] | None:
    """A 1-D int tensor input (shape, axes, pads...) as a Python list; None stays None."""
    if value is None:
        return None
    return [int(v) for v in np.asarray(value).reshape(-1)]


def is_low_precision_float(dtype: np.dtype) -> bool:
    """float16 / bfloat16: compute in float32 and cast back to keep numpy's ufuncs exact enough."""
    return np.dtype(dtype).kind == "f" and np.dtype(dtype).itemsize < 4 or np.dtype(dtype).name == "bfloat16"
