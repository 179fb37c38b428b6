"""float32 <-> float16 conversions that numpy's casts would give, bit for bit, but fast.

numpy converts float32 -> float16 -> float32 one element at a time (no F16C loops): 3-6 ns an
element, 20-60 times a float32 add, and far slower still on values that overflow fp16 (each raises a
floating-point flag). These compute the same bits with a few vectorized integer and float passes.

Rounding to fp16 is rounding to a fixed step per binade: 2^(e-10) for |x| in [2^e, 2^(e+1)), 2^-24
below the normal range. Adding and subtracting c = 2^(e+13) (>= 2^-1) makes float32 arithmetic round
to exactly that step, ties to even; the subtraction is exact. Magnitudes that round to fp16 infinity
(>= 65520, infinities included) are clamped to 2^16 (where they round to) and become infinities.
A rounded magnitude times 2^-112 is a float32 whose bits shifted right by 13 are the float16's bits
(normal values keep their mantissa, fp16 subnormals land on float32 subnormals, 2^16 on the fp16
infinity). Only NaNs take numpy's own path. tests/test_runtime_plan.py checks all three against
numpy on every exponent and the edge cases.

Arrays of at least _TORCH_FROM elements are converted by torch instead (F16C instructions, ~10x
faster again), where that gives numpy's bits: everywhere except on NaNs. The hardware quiets
signaling NaNs (numpy keeps them signaling) and torch's scalar loop for an array's tail turns
every float16 NaN into one float32 NaN. So float32 -> float16 takes torch's result unless x holds a
signaling NaN, float16 -> float32 unless the result holds a NaN (then the paths above). torch is
used once the process has imported it, and only if it converts a probe of edge cases as numpy does.
"""

from __future__ import annotations

import math
import sys
import warnings

import numpy as np

_OVERFLOW = np.float32(65520.0)  # the smallest magnitude that rounds to fp16 infinity
_MIN_NORMAL = np.float32(2.0**-14)
_TWO_16 = np.float32(65536.0)
_MINUS_TWO_16 = np.float32(-65536.0)
_OVERFLOW_BITS = int(_OVERFLOW.view(np.uint32))
_SMALL_TO = 12288  # below this many elements numpy's own loop beats a dozen numpy calls
_SMALL_FROM = 6144  # (numpy's float16 -> float32 loop: about 3 ns an element; this path's ~1.5)
_TORCH_FROM = 2048  # from this many elements torch's conversion (~0.1 ns an element) wins


def _rounded_magnitude(x: np.ndarray) -> tuple[np.ndarray, bool, np.ndarray | None]:
    """|x| rounded to fp16 precision (a new float32 array), with magnitudes that round to
    infinity, and NaNs, as 2^16; whether any did, and where x holds NaNs (None: nowhere).
    Compared and clamped as integers: float min/max treat signaling NaNs differently in numpy's
    vectorized and scalar loops."""
    bits = x.view(np.uint32) & np.uint32(0x7FFFFFFF)  # |x|, as bits: ordered like the magnitudes
    top = int(bits.max())
    nan = bits > np.uint32(0x7F800000) if top > 0x7F800000 else None
    overflow = top >= _OVERFLOW_BITS
    if overflow:
        np.minimum(bits, _full(_TWO_16, bits.shape).view(np.uint32), out=bits)  # 2^16 stays below
    ax = bits.view(np.float32)
    _round_in_place(ax)
    return ax, overflow, nan


def _round_in_place(ax: np.ndarray) -> np.ndarray:
    """Finite magnitudes below 2^17 (float32) rounded to fp16 precision in place, by adding and
    subtracting 2^(e+13) (module docstring); returns the step array, free for reuse."""
    step = ax.view(np.uint32) & np.uint32(0x7F800000)  # 2^e, as bits
    np.maximum(step, _full(_MIN_NORMAL, step.shape).view(np.uint32), out=step)
    step += np.uint32(13 << 23)  # 2^(e+13)
    ax += step.view(np.float32)
    ax -= step.view(np.float32)
    return step


_blocks: dict[float, np.ndarray] = {}


def _full(value: np.float32, shape: tuple[int, ...]) -> np.ndarray:
    """A read-only float32 array of `value`, of `shape`: numpy's maximum and minimum against a
    scalar take a loop several times slower than against an array."""
    n = math.prod(shape)
    block = _blocks.get(float(value))
    if block is None or block.size < n:
        block = np.full(max(n, 1 << 17), value, np.float32)
        block.flags.writeable = False
        _blocks[float(value)] = block
    return block[:n].reshape(shape)


def _nan_payloads(x: np.ndarray, nan: np.ndarray) -> np.ndarray:
    """The low 10 bits numpy gives float32 NaNs as fp16 (the top of the payload, 1 if that is 0),
    0 where x is no NaN. (Arithmetic, not a masked copy: those take a slow loop.)"""
    payload = (x.view(np.uint32) >> np.uint32(13)).astype(np.uint16) & np.uint16(0x3FF)
    payload += payload == 0  # a payload truncated to 0 would read as infinity
    payload *= nan
    return payload


def round_fp16(x: np.ndarray, quiet: bool = False) -> np.ndarray:
    """x (float32) as x.astype(float16).astype(float32), bit for bit (a new array). quiet: but
    signaling NaNs may come back quieted (_QUIET).

    Without inf, NaN or overflow, rounded in float32 itself (half the passes of a round trip
    through float16 bits): the rounded magnitude is the value once x's sign bit is set on it
    (which gives the -0.0 numpy gives negatives that round to zero; np.copysign is far slower)."""
    torch = _torch_for(x)
    if torch is not None and (quiet or not _has_signaling_nan(x)):
        half = np.empty(x.shape, np.float16)
        _torch_copy(torch, half, x)
        return _widened(torch, half.reshape(-1)).reshape(x.shape)  # (half: no signaling NaN)
    if x.size >= _SMALL_TO:
        ax = np.abs(x)
        if ax.max() < _OVERFLOW:  # (False for NaN)
            step = _round_in_place(ax)
            sign = np.bitwise_and(x.view(np.uint32), np.uint32(0x80000000), out=step)
            ax.view(np.uint32)[...] |= sign
            return ax
        return _round_special(x)
    return _from_fp16_numpy(_to_fp16_numpy(x))


def _round_special(x: np.ndarray) -> np.ndarray:
    """round_fp16 of many values, some of which round to infinity or are NaNs: magnitudes rounded
    as _rounded_magnitude does (those to infinity, and NaNs, clamped to 2^16), then 2^16 moved to
    float32's infinity (the exponent raised by 255 - 143) with a NaN's payload truncated to fp16's
    10 bits as numpy's round trip keeps it, and the sign set: the same bits in about half the
    passes of a round trip through float16 bits (which NaN-filled fp16 programs take on every MM)."""
    ax, overflow, nan = _rounded_magnitude(x)
    bits = ax.view(np.uint32)
    special = np.greater_equal(bits, np.uint32(0x47800000))  # 2^16: every clamped magnitude
    bits += special.view(np.uint8).astype(np.uint32) * np.uint32((255 - 143) << 23)
    if nan is not None:
        bits |= _nan_payloads(x, nan).astype(np.uint32) << np.uint32(13)
    bits |= x.view(np.uint32) & np.uint32(0x80000000)
    return ax


def to_fp16(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """x (float32) as x.astype(float16), bit for bit; written into `out` (a float16 array of x's
    shape, any strides) when given."""
    torch = _torch_for(x, out)
    if torch is not None and not _has_signaling_nan(x):
        if out is None:
            out = np.empty(x.shape, np.float16)
        _torch_copy(torch, out, x)
        return out
    return _to_fp16_numpy(x, out)


def _to_fp16_numpy(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """to_fp16 in numpy alone."""
    if x.size == 0 or x.size < _SMALL_TO and _max_magnitude(x) < _OVERFLOW:
        # numpy's loop, fast on few values unless they overflow fp16 (NaNs fail the test too); with
        # neither, the cast raises no floating-point flag, so no errstate (which costs microseconds)
        if out is None:
            return x.astype(np.float16)
        np.copyto(out, x, casting="unsafe")
        return out
    ax, _, nan = _rounded_magnitude(x)
    ax *= np.float32(2.0**-112)
    magnitude = ax.view(np.uint32)
    magnitude >>= np.uint32(13)
    half = magnitude.astype(np.uint16)
    if nan is not None:  # NaNs were clamped to infinity: add their payloads
        half |= _nan_payloads(x, nan)
    sign = (x.view(np.uint32) >> np.uint32(16)).astype(np.uint16)
    sign &= np.uint16(0x8000)
    # (the sign ORed straight into `out`: no copy of the result afterwards)
    np.bitwise_or(half, sign, out=half if out is None else out.view(np.uint16))
    return half.view(np.float16) if out is None else out


def _max_magnitude(x: np.ndarray) -> np.float32:
    """max |x|, NaN if x holds one: one reduction, called as a ufunc (ndarray.min and .max go
    through a Python wrapper each; on the few values of a small model's tile, the calls are most
    of a conversion's time)."""
    return np.maximum.reduce(np.abs(x), axis=None)


_QUIET = """For values that only arithmetic reads (the MXM's inputs): every IEEE operation quiets a
signaling NaN operand and, on x86 (SSE, AVX, FMA), returns the first NaN operand's payload, quiet
or not, so a product or sum comes out the same from a signaling NaN and from its quieted twin
(tests/test_runtime_plan.py checks matmuls)."""


def from_fp16(h: np.ndarray, quiet: bool = False) -> np.ndarray:
    """h (float16) as h.astype(float32), bit for bit (a new array). quiet: but signaling NaNs may
    come back quieted (_QUIET), which saves checking for them."""
    torch = _torch_for(h)
    if torch is None:
        return _from_fp16_numpy(h)
    flat = np.ascontiguousarray(h).reshape(-1)
    out = _widened(torch, flat)
    if quiet:
        return out.reshape(h.shape)
    # (a NaN anywhere makes the max NaN: one vectorized pass; signaling ones came out quieted)
    if np.isnan(out.max()) and _has_signaling_nan16(flat):
        return _from_fp16_numpy(h)
    return out.reshape(h.shape)


def _widened(torch, flat: np.ndarray):  # -> np.ndarray
    """Contiguous 1-D float16 values as float32 by torch: h.astype(float32) but for signaling NaNs
    (quieted). torch's vectorized loop, 8 values at a time, keeps quiet NaNs' payloads, its scalar
    loop for the rest would not: those few values converted by numpy."""
    out = np.empty(flat.size, np.float32)
    body = flat.size - flat.size % 8
    _torch_copy(torch, out[:body], flat[:body])
    out[body:] = flat[body:]
    return out


_GRAIN = 32768  # torch splits bigger copies over threads, each part with its own scalar tail


def _torch_copy(torch, dst: np.ndarray, src: np.ndarray) -> None:
    """dst[...] = src by torch, in parts of at most _GRAIN values (along the first axis), which
    torch runs whole on the calling thread: the same loops whatever its thread count."""
    if src.size <= _GRAIN or src.ndim == 0:
        torch.from_numpy(dst).copy_(torch.from_numpy(src))
        return
    per_row = src.size // src.shape[0]
    if per_row > _GRAIN:
        for i in range(src.shape[0]):
            _torch_copy(torch, dst[i], src[i])
        return
    step = _GRAIN // per_row
    for i in range(0, src.shape[0], step):
        torch.from_numpy(dst[i : i + step]).copy_(torch.from_numpy(src[i : i + step]))


def _from_fp16_numpy(h: np.ndarray) -> np.ndarray:
    """from_fp16 in numpy alone."""
    if h.size < _SMALL_FROM:
        return h.astype(np.float32)
    # Sign-extended to 32 bits and shifted: the sign lands on bit 31 (and 28-30, cleared), the
    # exponent and mantissa on bits 13-27, as a float32 2^-112 times the fp16 value.
    bits = h.view(np.int16).astype(np.int32)
    bits <<= np.int32(13)
    bits &= np.int32(-0x70002000)  # 0x8FFFE000: the sign, exponent and mantissa bits
    value = bits.view(np.float32)
    value *= np.float32(2.0**112)  # exact: fp16 subnormals were float32 subnormals
    # Infinities and NaNs (exponent 31), either sign, land on finite magnitudes >= 2^16, above
    # every finite fp16: checked on the contiguous result (float reductions are vectorized; the
    # integer ones on h's strided window took as long as the conversion).
    if value.max() >= _TWO_16 or value.min() <= _MINUS_TWO_16:
        # fp16 infinities and NaNs (exponent 31) landed on +-2^16 * (1 + payload): exponent 143
        # where float32's infinities and NaNs have 255, payload and sign kept; moved there
        bits = value.view(np.uint32)
        special = np.greater_equal(bits & np.uint32(0x7FFFFFFF), np.uint32(0x47800000)).astype(np.uint32)
        special *= np.uint32((255 - 143) << 23)  # (arithmetic: a masked add is slow)
        bits += special
    return value


def _has_signaling_nan(x: np.ndarray) -> bool:
    """Whether float32 x holds a signaling NaN (exponent all ones, quiet bit clear, mantissa not
    zero): only checked when some NaN is there at all (its max is NaN)."""
    if not np.isnan(x.max()):
        return False
    # |bits| in (0x7F800000, 0x7FC00000): bits << 1 drops the sign; the range checked unsigned
    shifted = np.left_shift(x.view(np.uint32), np.uint32(1))
    shifted -= np.uint32(0xFF000001)
    return bool(shifted.min() < np.uint32(0x7FFFFF))


def _has_signaling_nan16(h: np.ndarray) -> bool:
    """Whether float16 h (contiguous) holds a signaling NaN: |bits| in (0x7C00, 0x7E00)."""
    shifted = np.left_shift(h.view(np.uint16), np.uint16(1))  # (drops the sign)
    shifted -= np.uint16(0xF801)
    return bool(shifted.min() < np.uint16(0x3FF))


_torch_module: list = []  # [torch or None], decided on first use


def _torch_for(*arrays: np.ndarray | None):  # -> the torch module or None
    """torch, for arrays of at least _TORCH_FROM elements it can wrap (no negative strides)."""
    if arrays[0].size < _TORCH_FROM or any(a is not None and min(a.strides, default=0) < 0 for a in arrays):
        return None
    return _torch()


def _torch():  # -> the torch module or None
    """torch once the process has imported it: importing it here would cost a one-shot `lpuc run`
    seconds and ~200 MiB of RSS, more than the conversions it speeds up; long-lived processes
    (the benches, tests, a server, torch users) have it loaded already."""
    if not _torch_module:
        if "torch" not in sys.modules:
            return None
        _torch_module.append(_load_torch())
    return _torch_module[0]


def _load_torch():
    """torch, if it converts a probe as numpy does (every float16 but signaling NaNs; float32
    rounding edges and quiet NaNs of both signs, contiguous, in tails and strided); None otherwise.
    The float32 probe is checked in parts of 2^16 values: whole, its ~650k values and their copies
    were the biggest allocation of a small fp16 model's first run (~12 MiB at once)."""
    try:
        import torch
    except ImportError:
        return None
    with warnings.catch_warnings():  # torch warns once about read-only arrays (it only reads them)
        warnings.simplefilter("ignore")
        read_only = np.zeros(1, np.float32)
        read_only.flags.writeable = False
        torch.from_numpy(read_only)
    halves = _probe_halves()
    with np.errstate(all="ignore"):
        for start in range(8):  # as from_fp16 uses it: contiguous, any alignment
            h = halves[start:]
            if not np.array_equal(_widened(torch, h).view(np.uint32), h.astype(np.float32).view(np.uint32)):
                return None
        for singles in _float32_probe():
            tails = (singles[:7], singles[-13:], singles[: 256 * 240].reshape(256, 240)[:, 5:237])
            for x in (singles, *tails):
                got = np.zeros(x.shape, np.float16)
                _torch_copy(torch, got, x)
                if not np.array_equal(got.view(np.uint16), x.astype(np.float16).view(np.uint16)):
                    return None
    return torch


def _probe_halves() -> np.ndarray:
    """Every float16 but signaling NaNs (numpy keeps their quiet bit clear, torch sets it)."""
    every = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    return every[~_signaling(every.astype(np.float32))]


def _float32_probe():  # -> Iterator[np.ndarray]
    """The float32 values _load_torch checks, in parts: each of _probe_halves and the float32
    values up to two ulps either side (rounding edges), and random quiet NaNs; each with both
    signs, signaling NaNs left out."""
    halves = _probe_halves()
    rng = np.random.default_rng(0)
    nans = rng.integers(0, 1 << 22, 4096, dtype=np.uint32) | np.uint32(0x7FC00000)
    centers = halves.astype(np.float32).view(np.uint32)
    for offset in range(-2, 3):
        for sign in (np.uint32(0), np.uint32(0x80000000)):
            bits = centers + np.uint32(offset & 0xFFFFFFFF)  # (wraps as the int64 sum's cast did)
            bits |= sign
            if offset == 2:
                bits = np.concatenate([bits, nans | sign])
            singles = bits.view(np.float32)
            yield singles[~_signaling(singles)]


def _signaling(x: np.ndarray) -> np.ndarray:
    magnitude = x.view(np.uint32) & np.uint32(0x7FFFFFFF)
    return (magnitude > np.uint32(0x7F800000)) & (magnitude < np.uint32(0x7FC00000))
