"""The reference runtime: validate a program, then execute its instruction streams in cycle order.

Each instruction reads its windows at its start cycle and writes at its end; the validator proves
that no two instructions touching the same data overlap in time, so executing them in start order
with vectorized numpy gives exactly the values the chip's streams would produce.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
from threadpoolctl import ThreadpoolController

from lpuc.program import Program
from lpuc.runtime.isa import HANDLERS, decoded_attrs
from lpuc.runtime.machine import Machine
from lpuc.runtime.trace import write_trace

_THREADPOOLS = ThreadpoolController()  # finding the BLAS libraries once, not per run


def execute(
    program: Program, inputs: Mapping[str, np.ndarray], trace: str | os.PathLike | None = None
) -> dict[str, np.ndarray]:
    program.validate()  # a no-op for programs the compiler or the loader already proved legal
    machine = Machine(program)
    machine.bind_inputs(dict(inputs))
    cache: dict[int, dict] = {}
    # Instructions are tile-sized: a multi-threaded BLAS only adds wake-up latency (and collapses
    # entirely on a loaded machine), so each runs on one thread.
    with _THREADPOOLS.limit(limits=1, user_api="blas"):
        for ins in sorted(program.instructions, key=lambda i: (i.start, i.id)):
            HANDLERS[ins.opcode](machine, ins, decoded_attrs(ins, cache))
    if trace is not None:
        write_trace(program, trace)
    return machine.outputs()


__all__ = ["execute", "write_trace"]
