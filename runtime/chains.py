"""Plan steps as fixed chains of numpy calls into buffers allocated once (out=), for small tiles.

On a tiny model a run is a few dozen numpy calls on tile-sized arrays, and each fresh temporary and
each Python call between them costs about as much as the arithmetic (the bundled MLP spent ~10 us
of Python per MM step). These steps make the same ufunc calls on the same values in the same order
as the general ones in runtime/plan.py, only writing into arrays they own (and the last call
straight into SRAM): the same bits (tests/test_runtime_plan.py, and the conftest hook comparing
every test program's plan outputs with the interpreter's).

The buffers belong to one step each (a step never runs concurrently with itself; concurrent runs
take their own executor) and are kept between runs, within a byte budget per executor: big models
gain nothing from them and would hold many times their SRAM image.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from lpuc.runtime.fp16 import to_fp16

# (ufunc, args, rounds) as plan._float32_ufuncs builds them: args (1, k) operand k, (2, k) the
# result of step k, (3, 0) the constant 0; rounds: the result is float16, rounded to fp16 precision.
UfuncStep = tuple[np.ufunc, list[tuple[int, int]], bool]
Call = tuple[Callable, tuple, dict]  # f(*args, **kwargs): out= by keyword (numpy deprecates a
# positional out for maximum and minimum, and warns on every such call)

F32 = np.dtype(np.float32)
F16 = np.dtype(np.float16)
BUDGET_BYTES = 1 << 20  # per executor: tiny programs fit many times over
# Below this many elements a float32 -> float16 store is numpy's own cast, unchecked: fp16.to_fp16
# first looks for values that overflow fp16 (numpy's cast of those is ~20x slower, with the same
# bits), two more calls per store; runs are under np.errstate(all="ignore"), so no warnings either.
# (A program whose small tiles overflow fp16 on every run gets slower runs, never other values.)
SMALL_CAST = 2048
# Below this many elements an fp16 MXM input is widened by numpy's cast into the step's buffer;
# from there on fp16.from_fp16 (torch's conversion, when the process has it: ~30x faster).
SMALL_WIDEN = 2048


class Buffers:
    """float32 arrays owned by single steps, handed out until the budget is spent (then None: the
    step takes the general path, which allocates per run)."""

    def __init__(self, budget: int | None = None) -> None:
        self._left = BUDGET_BYTES if budget is None else budget

    def take(self, shape: tuple[int, ...]) -> np.ndarray | None:
        size = math.prod(shape) * F32.itemsize
        if size > self._left:
            return None
        self._left -= size
        return np.empty(shape, F32)


def _overlaps(a: np.ndarray, arrays: list) -> bool:
    return any(b is not None and np.may_share_memory(a, b) and np.shares_memory(a, b) for b in arrays)


def ufunc_chain(
    steps: list[UfuncStep],
    operands: list[np.ndarray | None],
    shape: tuple[int, ...],
    final: np.ndarray,
    buffers: Buffers,
    zeros: Callable[[tuple[int, ...]], np.ndarray],
) -> list[Call] | None:
    """The calls evaluating `steps` over `operands` (float32 arrays, or buffers of them filled
    before the chain runs, as an MM's product), every result of `shape`, intermediate
    results into buffers of their own and the last into `final` (float32, of `shape`, overlapping no
    operand). None where that does not hold: a step rounds to fp16, or broadcasts to another shape."""
    if not steps or final.dtype != F32 or final.shape != shape or _overlaps(final, operands):
        return None
    if any(o is not None and o.dtype != F32 for o in operands):
        return None
    calls: list[Call] = []
    results: list[np.ndarray] = []
    for i, (fn, args, rounds) in enumerate(steps):
        if rounds:
            return None
        x = [operands[j] if k == 1 else results[j] if k == 2 else None for k, j in args]
        if any(v is None and k != 3 for v, (k, _) in zip(x, args)):
            return None
        known = [v for v in x if v is not None]
        if np.broadcast_shapes(*(v.shape for v in known)) != shape:
            return None
        x = [zeros(shape) if v is None else v for v in x]  # Relu: maximum against zeros (plan._zeros)
        out = final if i == len(steps) - 1 else buffers.take(shape)
        if out is None:
            return None
        calls.append((fn, tuple(x), {"out": out}))
        results.append(out)
    return calls


def cast_call(dst: np.ndarray, value: np.ndarray) -> Call:
    """The call writing float32 `value` into dst (float32 or float16, of value's shape) as
    plan._copy_into does, bit for bit."""
    if dst.dtype != F16:
        return np.copyto, (dst, value), {}
    if value.size < SMALL_CAST:
        return np.copyto, (dst, value), {"casting": "unsafe"}
    return to_fp16, (value,), {"out": dst}


def mm_step(
    src: np.ndarray,
    precision: str,
    dst: np.ndarray,
    reads: list[np.ndarray | None],
    chain: Callable[[np.ndarray, np.ndarray], list[Call] | None] | None,
    acc: np.ndarray | None,
    buffers: Buffers,
    mxm_input: Callable[[np.ndarray, str], np.ndarray],
) -> Callable[[np.ndarray, np.ndarray | None], np.ndarray | None] | None:
    """An MM's arithmetic once its weights are known: compute(w, shared) multiplies, adds `acc` (a
    float32 window, or None) and writes dst (float32 or float16) through the epilogue chain
    (chain(product buffer, final) -> its calls writing final; None: no epilogue), and returns the
    MXM input it used (for MMs sharing it). `shared`: that input, converted by an earlier MM (None:
    convert src). compute returns None, having done nothing, when w is not float32 of dst's width
    (the caller takes the general path). None when the step does not fit here (dtypes, shapes,
    budget)."""
    if src.ndim != 2 or dst.ndim != 2 or src.shape[0] != dst.shape[0] or dst.dtype not in (F32, F16):
        return None
    if src.dtype not in (F32, F16) or acc is not None and (acc.dtype != F32 or acc.shape != dst.shape):
        return None
    width = dst.shape[1]
    widens = src.dtype == F16 and src.size < SMALL_WIDEN
    widened = buffers.take(src.shape) if widens else None  # the MXM input, exact float32
    if widens and widened is None:
        return None
    # converted per run by plan._mxm_input: float32 rounded to fp16, or many fp16 values widened
    converts = src.dtype == F32 and precision == "fp16" or src.dtype == F16 and not widens
    # the product goes straight into dst when nothing after it reads dst's memory
    direct = chain is None and acc is None and dst.dtype == F32 and not _overlaps(dst, [src, *reads])
    product = dst if direct else buffers.take(dst.shape)
    if product is None:
        return None
    calls: list[Call] = []
    if acc is not None:
        calls.append((np.add, (product, acc), {"out": product}))
    if chain is not None:
        if dst.dtype == F32 and not _overlaps(dst, [src, acc, *reads]):
            final = dst
        else:
            final = buffers.take(dst.shape)
            if final is None:
                return None
        tail = chain(product, final)
        if tail is None:
            return None
        calls += tail
    else:
        final = product
    if final is not dst:  # (float16: the store's conversion; float32: a copy out of the buffer)
        calls.append(cast_call(dst, final))
    matmul, copyto = np.matmul, np.copyto

    def compute(w: np.ndarray, shared: np.ndarray | None) -> np.ndarray | None:
        if w.ndim != 2 or w.dtype != F32 or w.shape[1] != width:
            return None
        if shared is not None:
            a = shared
        elif widened is not None:
            copyto(widened, src)
            a = widened
        elif converts:
            a = mxm_input(src, precision)
        else:
            a = src  # (BLAS gives the same bits on the strided window as on a copy)
        matmul(a, w, out=product)
        for fn, args, kwargs in calls:
            fn(*args, **kwargs)
        return a

    return compute


def softmax_step(
    steps: list[UfuncStep],
    operands: list[np.ndarray],
    dst: np.ndarray,
    buffers: Buffers,
    zeros: Callable[[tuple[int, ...]], np.ndarray],
) -> Callable[[], None] | None:
    """plan._fused_softmax's computation (kernels.softmax's float32 path), written where its store
    writes it (dst: the output's one SRAM window, of operand 0's shape), for float32 operands
    already in SRAM. None where that does not hold."""
    shape = operands[0].shape
    if not shape or dst.shape != shape or dst.dtype != F32 or _overlaps(dst, operands):
        return None
    rows = [o if o.ndim < 2 or o.size != o.shape[-1] else o.reshape(-1) for o in operands]
    work = buffers.take(shape)
    if work is None:
        return None
    calls = ufunc_chain(steps, rows, shape, work, buffers, zeros)
    if calls is None:
        return None
    maximum, add, subtract, exp, divide = np.maximum.reduce, np.add.reduce, np.subtract, np.exp, np.divide

    def step() -> None:
        for fn, args, kwargs in calls:
            fn(*args, **kwargs)
        # softmax(x, -1) for float32 x: exp(x - max) / sum, each result into its buffer
        subtract(work, maximum(work, axis=-1, keepdims=True), out=work)
        exp(work, out=work)
        divide(work, add(work, axis=-1, keepdims=True), out=dst)

    return step
