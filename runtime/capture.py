"""Debug execution: run a program and capture every intermediate tensor it computes.

Reading the final SRAM is not enough (slots are reused), so each tile is read right after the
last instruction that writes it has executed, and the tiles of a tensor are assembled into its
[rows, cols] view. Kept apart from `execute`, which stays the fast path.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from lpuc.program import Access, Program
from lpuc.runtime.host_gathers import gathered_inputs
from lpuc.runtime.isa import HANDLERS, decoded_attrs
from lpuc.runtime.machine import Machine


def execute_capturing(
    program: Program, inputs: Mapping[str, np.ndarray]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(outputs, {tensor name: [rows, cols] view}) for every tensor whose tiles are all written.

    Instructions run in the runtime's order (start cycle, then id): the SRAM allocation is only
    valid in time order. Constant and input tensors are not captured.
    """
    program.validate()
    machine = Machine(program)
    machine.bind_inputs(dict(gathered_inputs(program, inputs)))
    order = sorted(program.instructions, key=lambda i: (i.start, i.id))
    last_writer: dict[int, int] = {}  # tile id -> position in `order` of its last writer
    for pos, ins in enumerate(order):
        for a in ins.writes:
            last_writer[a.buf] = pos
    due: dict[int, list[int]] = {}
    for buf, pos in sorted(last_writer.items()):
        if program.tiles[buf].kind not in ("const", "input"):
            due.setdefault(pos, []).append(buf)
    values: dict[int, np.ndarray] = {}
    cache: dict[int, dict] = {}
    for pos, ins in enumerate(order):
        HANDLERS[ins.opcode](machine, ins, decoded_attrs(ins, cache))
        for buf in due.get(pos, ()):
            t = program.tiles[buf]
            if t.kind == "host":
                values[buf] = np.asarray(machine.host_memory[buf])
            else:
                values[buf] = machine.read(Access(t.id, t.slice, t.addr, t.rows, t.lane, t.lanes))
    return machine.outputs(), _assemble(program, values)


def _assemble(program: Program, values: Mapping[int, np.ndarray]) -> dict[str, np.ndarray]:
    by_tensor: dict[str, list[int]] = {}
    for buf in sorted(values):
        by_tensor.setdefault(program.tiles[buf].tensor, []).append(buf)
    out: dict[str, np.ndarray] = {}
    for name, bufs in sorted(by_tensor.items()):
        tiles = [program.tiles[b] for b in bufs]
        if tiles[0].kind == "host":
            out[name] = values[bufs[0]]
            continue
        rows = max(t.r0 + t.rows for t in tiles)
        cols = max(t.c0 + t.lanes for t in tiles)
        view = np.zeros((rows, cols), dtype=tiles[0].np_dtype)
        covered = np.zeros((rows, cols), dtype=bool)
        for t in tiles:
            view[t.r0 : t.r0 + t.rows, t.c0 : t.c0 + t.lanes] = values[t.id]
            covered[t.r0 : t.r0 + t.rows, t.c0 : t.c0 + t.lanes] = True
        if covered.all():  # a tensor with tiles nobody wrote is not computed here: skip it
            out[name] = view
    return out
