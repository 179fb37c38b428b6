"""float32 values rounded to fp16 precision (what the MXM multiplies in fp16 mode), fast.

numpy converts float32 -> float16 -> float32 one element at a time (no F16C loops), and far slower
still on values that overflow fp16 (each raises a floating-point flag); this computes the same bits
with a few vectorized float passes. Rounding to fp16 is rounding to a fixed step per binade:
2^(e-10) for |x| in [2^e, 2^(e+1)), 2^-24 below the normal range. Adding and subtracting
c = 2^(e+13) (>= 2^-1) makes float32 arithmetic round to exactly that step, ties to even; the
subtraction is exact. Magnitudes that round to fp16 infinity (>= 65520, infinities included) are
clamped to 2^16 (where they round to) and become signed infinities; only NaNs take numpy's own path.
tests/test_runtime_plan.py checks it against numpy on every exponent and the edge cases.
"""

from __future__ import annotations

import numpy as np

_OVERFLOW = np.float32(65520.0)  # the smallest magnitude that rounds to fp16 infinity
_MIN_NORMAL = np.float32(2.0**-14)
_TWO_16 = np.float32(65536.0)


def round_fp16(x: np.ndarray) -> np.ndarray:
    """x (float32) as x.astype(float16).astype(float32), bit for bit (a new array)."""
    if x.size < 2048:  # a handful of numpy calls costs more than numpy's conversion loop here
        with np.errstate(over="ignore"):
            return x.astype(np.float16).astype(np.float32)
    ax = np.abs(x, dtype=np.float32)
    top = ax.max()  # NaN if there is one
    overflow = not top < _OVERFLOW  # "not <": a NaN fails it too
    if overflow:
        np.fmin(ax, _TWO_16, out=ax)  # NaNs too (fixed up below); 2^16 stays 2^16 below
    step = (ax.view(np.uint32) & np.uint32(0x7F800000)).view(np.float32)  # 2^e
    np.maximum(step, _MIN_NORMAL, out=step)
    step *= np.float32(8192.0)  # 2^(e+13)
    ax += step
    ax -= step
    if overflow:
        np.copyto(ax, np.float32(np.inf), where=ax >= _TWO_16)
    out = np.copysign(ax, x, out=ax)  # signed zeros as numpy gives them
    if top != top:  # numpy keeps a NaN's sign and truncates its payload
        nan = np.isnan(x)
        out[nan] = x[nan].astype(np.float16).astype(np.float32)
    return out
