"""The reference runtime: validate a program, then execute its instructions in program order.

Instructions run in ascending id order, the program's sequential order: the validator proves the
timed schedule (each instruction reads its windows at its start cycle and writes at its end, no two
instructions touching the same data overlap) computes exactly the same values.

Two executors share the instruction semantics of `lpuc.runtime.isa`: the execution plan
(`lpuc.runtime.plan`, the default: built once per Program, then reused) and the plain
instruction-by-instruction interpreter (`interpret=True`), kept as the plan's oracle.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Mapping

import numpy as np
from threadpoolctl import ThreadpoolController

from lpuc import progress
from lpuc.errors import ArtifactError, LpucError
from lpuc.program import Program
from lpuc.runtime.host_gathers import gathered_inputs
from lpuc.runtime.isa import HANDLERS, decoded_attrs
from lpuc.runtime.machine import Machine
from lpuc.runtime.plan import Plan
from lpuc.runtime.trace import write_trace

_BLAS = ThreadpoolController().select(user_api="blas").lib_controllers  # found once, not per run


def _thread_count_calls(lib) -> tuple[Callable[[], int | None], Callable[[int], object]]:
    """(get, set) of one BLAS library's thread count, resolved once: threadpoolctl looks its
    symbols up on every call (~1 us each, three calls a run). OpenBLAS on its own thread pool
    (not OpenMP) is called through its C functions; other libraries through threadpoolctl."""
    # threadpoolctl's public setter ignores all but the first thread that used it; the count here
    # is kept consistent across threads by _BLAS_LOCK, so set it directly.
    get, put = lib.get_num_threads, getattr(lib, "_real_set_num_threads", lib.set_num_threads)
    symbol = getattr(lib, "_get_symbol", None)  # (threadpoolctl's own lookup; private, so optional)
    if symbol is not None and lib.internal_api == "openblas" and lib.threading_layer != "openmp":
        c_get, c_set = symbol("openblas_get_num_threads"), symbol("openblas_set_num_threads")
        if c_get is not None and c_set is not None:
            return c_get, c_set
    return get, put


_BLAS_CALLS = [_thread_count_calls(lib) for lib in _BLAS]


def execute(
    program: Program,
    inputs: Mapping[str, np.ndarray],
    trace: str | os.PathLike | None = None,
    interpret: bool = False,
) -> dict[str, np.ndarray]:
    program.validate()  # a no-op for programs the compiler or the loader already proved legal
    inputs = gathered_inputs(program, inputs)  # the host's work before the program starts
    # Instructions are tile-sized: a multi-threaded BLAS only adds wake-up latency (and collapses
    # entirely on a loaded machine), so each runs on one thread. Both executors must use the same
    # count: it changes how a GEMM splits its sums, and so the last bits of the result.
    with _one_blas_thread(), _ignore_fp_errors(), _run_stage(program):
        try:
            outputs = _interpret(program, inputs) if interpret else _plan(program).run(inputs)
        except LpucError:
            raise
        except Exception as e:
            if program.origin is None:
                raise  # a compiled program that cannot run is lpuc's bug
            first = str(e).splitlines()[0] if str(e) else ""
            raise ArtifactError(
                f"{program.origin}: the program fails at run time ({type(e).__name__}: {first}); "
                "was the file edited?"
            ) from None
    if trace is not None:
        write_trace(program, trace)
    return outputs


_NO_STAGE = contextlib.nullcontext()


def _run_stage(program: Program) -> contextlib.AbstractContextManager:
    """The run's progress stage, only when a bar could be drawn: opening a stage costs more than a
    small model's whole run takes in the execution plan. Not for a plan whose last run took a
    fraction of the delay before a bar appears (checking for a terminal is a system call)."""
    if getattr(program.plan, "last_seconds", progress.DELAY) < progress.DELAY / 20:
        return _NO_STAGE
    return progress.stage("run") if progress.enabled() else _NO_STAGE


try:  # numpy's floating-point error state: private, so used only where it is found and works
    from numpy._core._ufunc_config import _extobj_contextvar as _FP_STATE
    from numpy._core._ufunc_config import _make_extobj

    _make_extobj(all="ignore", divide=None, over=None, under=None, invalid=None)
except (ImportError, TypeError, ValueError):
    _FP_STATE = None

_ignoring: tuple = (None, None)  # (an error state, the same ignoring every error)


class _IgnoreFpErrors:
    """np.errstate(all="ignore") with the state built once: np.errstate builds it on each entry
    (~1 us, on every run). Made from the state in force, as np.errstate's is (its buffer size and
    error callback), and made again when that changes."""

    __slots__ = ("_token",)

    def __enter__(self) -> None:
        global _ignoring
        base = _FP_STATE.get()
        made_from, ignoring = _ignoring
        if made_from is not base:
            ignoring = _make_extobj(all="ignore", divide=None, over=None, under=None, invalid=None)
            _ignoring = (base, ignoring)
        self._token = _FP_STATE.set(ignoring)

    def __exit__(self, *exc: object) -> None:
        _FP_STATE.reset(self._token)


def _ignore_fp_errors() -> contextlib.AbstractContextManager:
    return _IgnoreFpErrors() if _FP_STATE is not None else np.errstate(all="ignore")


_BLAS_LOCK = threading.Lock()
_BLAS_USERS = 0  # runs in progress: the first sets one thread, the last restores the count
_BLAS_BEFORE: list[int | None] = []


class _OneBlasThread:
    """BLAS on one thread while any run is in progress (thread count changes a GEMM's rounding,
    so concurrent runs must not restore it under each other). threadpoolctl's limit() re-inspects
    every library on each entry (~0.1 ms); this only sets the count, and only where it is not 1
    already. A class, not a generator context manager, with plain loops: entered on every run, and
    a tiny model's run is tens of microseconds."""

    def __enter__(self) -> None:
        global _BLAS_USERS, _BLAS_BEFORE
        with _BLAS_LOCK:
            if _BLAS_USERS == 0:
                before = []
                for get, put in _BLAS_CALLS:
                    n = get()
                    before.append(n)
                    if n != 1:
                        put(1)
                _BLAS_BEFORE = before
            _BLAS_USERS += 1

    def __exit__(self, *exc: object) -> None:
        global _BLAS_USERS
        with _BLAS_LOCK:
            _BLAS_USERS -= 1
            if _BLAS_USERS == 0:
                for (_, put), n in zip(_BLAS_CALLS, _BLAS_BEFORE):
                    if n is not None and n != 1:
                        put(n)


_ONE_BLAS_THREAD = _OneBlasThread()


def _one_blas_thread() -> _OneBlasThread:
    return _ONE_BLAS_THREAD


def _plan(program: Program) -> Plan:
    if program.plan is None:
        program.plan = Plan(program)
    return program.plan


def _interpret(program: Program, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    machine = Machine(program)
    machine.bind_inputs(dict(inputs))
    cache: dict[int, dict] = {}
    for ins in sorted(program.instructions, key=lambda i: i.id):
        HANDLERS[ins.opcode](machine, ins, decoded_attrs(ins, cache))
    return machine.outputs()


__all__ = ["execute", "write_trace"]
