"""MXM instructions on a thread of their own, overlapped with the other units' instructions.

The chip runs its units concurrently; the plan may too, as long as every instruction still sees
exactly the SRAM values it would see in program order. The MXM instructions (mxm.lw, mxm.mm) run on
one extra thread in program order, so the MXM planes and the plan's MXM buffers keep their order.
The main thread hands each MXM instruction over when it reaches it (so it sees every earlier
instruction's writes) and runs the other instructions itself; before each, it waits for the handed-
over MXM instructions whose SRAM windows it conflicts with: those that write what it reads or
writes, or read what it writes. numpy releases the GIL in BLAS and in its array loops, so the
two threads' work overlaps. Results are bit-identical to sequential execution (each instruction
computes the same thing from the same values): tests/test_runtime_plan.py checks it.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable

import numpy as np

from lpuc.dtypes import words_per_row
from lpuc.program import Access, Instruction, Program

# Opt-in (LPUC_MXM_THREAD=1): on a machine whose cores are all busy the two threads only add
# handover costs (measured 5-30% slower on the shared 2-core bench machine); it pays only with an
# idle core.
ENABLED = os.environ.get("LPUC_MXM_THREAD") == "1"
# Below this many multiply-accumulates per run, handing instructions to a thread costs more than
# the overlap saves (a few microseconds per instruction).
MIN_MXM_MACS = 50_000_000

Span = tuple[int, int, int]  # slice, first address, end address


def _spans(program: Program, ins: Instruction, accesses: tuple[Access, ...]) -> list[Span]:
    tiles, out = program.tiles, []
    whole = ins.opcode.endswith(".kernel")  # kernels read and write whole tiles
    for a in accesses:
        t = tiles[a.buf]
        if t.kind == "host":
            continue  # not in SRAM (MXM instructions never touch host memory)
        addr, nrows = (t.addr, t.rows) if whole else (a.addr, a.nrows)
        out.append((a.slice, addr, addr + nrows * words_per_row(t.np_dtype)))
    return out


def mxm_waits(program: Program, order: list[Instruction]) -> list[int] | None:
    """Per instruction in `order`: -1 for MXM instructions (handed to the MXM thread); for others,
    how many MXM instructions (counted in order) must have finished before it runs. None when the
    program's MXM work is too small to be worth a thread, or the thread is not enabled."""
    if not ENABLED:
        return None
    macs = sum(i.work.macs for i in order if i.opcode == "mxm.mm")
    if macs < MIN_MXM_MACS:
        return None
    by_slice: dict[int, list[tuple[int, int, int, bool]]] = {}  # slice -> (lo, hi, mxm count, writes)
    count = 0
    done = 0  # MXM instructions every later instruction can count on being finished
    needs: list[int] = []
    for ins in order:
        reads = _spans(program, ins, ins.reads)
        writes = _spans(program, ins, ins.writes)
        if ins.opcode.startswith("mxm."):
            count += 1
            for spans, writing in ((reads, False), (writes, True)):
                for s, lo, hi in spans:
                    by_slice.setdefault(s, []).append((lo, hi, count, writing))
            needs.append(-1)
            continue
        need = done
        for spans, writing in ((reads, False), (writes, True)):
            for s, lo, hi in spans:
                for mlo, mhi, k, mwrites in reversed(by_slice.get(s, ())):
                    if k <= need:
                        break  # older ones are finished by then anyway (they run in order)
                    if mlo < hi and lo < mhi and (mwrites or writing):
                        need = k
                        break
        done = need
        needs.append(need)
    return needs


class MxmThread:
    """A thread that runs handed-over steps in order, one run at a time (`start` before each)."""

    def __init__(self) -> None:
        self._batches: queue.SimpleQueue[list[Callable[[], None]] | None] = queue.SimpleQueue()
        self._finished = threading.Condition()
        self._waiting = False
        self.handed = 0
        self.done = 0  # written by the MXM thread only (while the run's steps are in flight)
        self._error: BaseException | None = None
        # Kept across runs: a fresh thread per run would start from a cold malloc arena.
        self._thread = threading.Thread(target=self._work, name="lpuc-mxm", daemon=True)
        self._thread.start()

    def start(self) -> None:
        """A new run (the thread is idle)."""
        self.handed = self.done = 0
        self._error = None

    def hand(self, batch: list[Callable[[], None]]) -> None:
        self.handed += len(batch)
        self._batches.put(batch)

    def wait(self, n: int, errors: bool = True) -> None:
        """Until the first n handed steps ran; raises the first error of the run (errors=True)."""
        if self.done < n and not (errors and self._error is not None):
            with self._finished:
                # Set before reading `done`, which the MXM thread sets before reading this: one of
                # the two sees the other's write (the GIL orders them), so no wake-up is lost.
                self._waiting = True
                while self.done < n and not (errors and self._error is not None):
                    self._finished.wait()
                self._waiting = False
        if errors and self._error is not None:
            raise self._error

    def close(self) -> None:
        """Let the thread end (it holds no reference to the plan, so a finalizer may call this)."""
        self._batches.put(None)

    def _work(self) -> None:
        with np.errstate(all="ignore"):  # numpy's error state is per thread; the run ignores them all
            while (batch := self._batches.get()) is not None:
                for step in batch:
                    if self._error is None:  # after an error the run is over: skip the rest
                        try:
                            step()
                        except BaseException as e:  # noqa: BLE001 - re-raised on the main thread
                            self._error = e
                    self.done += 1
                    if self._waiting:
                        with self._finished:
                            self._finished.notify()


def run_overlapped(mxm: MxmThread, steps: list[Callable[[], None]], needs: list[int]) -> None:
    """Run `steps` (program order) with the MXM ones (need -1) on `mxm`, handed over in batches
    of consecutive ones."""
    mxm.start()
    batch: list[Callable[[], None]] = []
    try:
        for step, need in zip(steps, needs):
            if need < 0:
                batch.append(step)
                continue
            if batch:
                mxm.hand(batch)
                batch = []
            if need > mxm.done:
                mxm.wait(need)
            step()
        if batch:
            mxm.hand(batch)
    finally:
        mxm.wait(mxm.handed, errors=False)  # idle again before the next run, even after a failure
    mxm.wait(mxm.handed)  # an MXM step's error
