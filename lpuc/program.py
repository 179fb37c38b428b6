"""The compiled program: the contract between the compiler and the runtime.

Every instruction names its opcode, the unit(s) it occupies, its start cycle and duration, and the
SRAM windows it reads and writes as concrete (slice, address) ranges. Every tile has an SRAM slot.
The constant image, the I/O bindings (which tiles hold each model input and output) and a summary
complete it. `lpuc.backends.lpu` turns a Program into a `.lpu` file and back; `lpuc.runtime`
validates and executes it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from operator import attrgetter
from typing import Any

import numpy as np

from lpuc.cost import Work
from lpuc.dtypes import dtype_from_name, words_per_row
from lpuc.target import Target

# The instruction set the runtime executes (runtime/isa.py has one handler per opcode).
OPCODES = ("mxm.lw", "mxm.mm", "vxm.map", "vxm.kernel", "sxm.kernel", "host.kernel")


@dataclass(frozen=True)
class Access:
    """Rows [addr, addr + nrows * words_per_row) of a slice, lanes [lane0, lane0 + nlanes)."""

    buf: int  # the tile this window belongs to (checked against its slot by the validator)
    slice: int
    addr: int
    nrows: int
    lane0: int
    nlanes: int


def windows_overlap(a: Access, b: Access, wpr: int) -> bool:
    """Whether two windows of one tile (`wpr` words per row) share a value."""
    return (
        a.addr < b.addr + b.nrows * wpr
        and b.addr < a.addr + a.nrows * wpr
        and a.lane0 < b.lane0 + b.nlanes
        and b.lane0 < a.lane0 + a.nlanes
    )


@dataclass(frozen=True)
class Instruction:
    id: int
    opcode: str
    units: tuple[str, ...]  # units[0] is the queue the instruction sits in
    start: int
    duration: int
    reads: tuple[Access, ...]
    writes: tuple[Access, ...]
    node: str
    attrs: Mapping[str, Any] = field(default_factory=dict)
    work: Work = field(default_factory=Work)  # what it does; lpuc.cost turns it into its duration

    @property
    def unit(self) -> str:
        return self.units[0]

    @property
    def end(self) -> int:
        return self.start + self.duration


@dataclass(frozen=True)
class TileSlot:
    """A tile and where it lives."""

    id: int
    tensor: str
    dtype: str
    rows: int
    lanes: int
    r0: int  # position in the tensor's [rows, cols] view
    c0: int
    slice: int
    addr: int
    kind: str  # "const" | "input" | "output" | "io" (both) | "temp" | "host" (host memory, no slot)
    const_key: str | None = None
    lane: int = 0  # first lane of the tile in its words (narrow constant tiles share words)

    @cached_property
    def np_dtype(self) -> np.dtype:
        return dtype_from_name(self.dtype)

    @cached_property
    def words(self) -> int:
        return 0 if self.kind == "host" else self.rows * words_per_row(self.np_dtype)


@dataclass(frozen=True)
class Binding:
    """A model input or output: its tensor and the tiles that hold it."""

    name: str
    shape: tuple[int, ...] | None  # None: decided by the data (a host-resident output)
    dtype: str
    tiles: tuple[int, ...]


@dataclass(frozen=True)
class HostGather:
    """A program input the host computes before the run: `rows` = `const_key`'s table (in host
    memory) gathered along axis 0 at the model input `ids` (lpuc.lowering.input_gathers)."""

    rows: str
    ids: str
    table: str
    const_key: str


@dataclass
class Program:
    target: Target
    precision: str
    model_name: str
    instructions: list[Instruction]
    tiles: list[TileSlot]
    consts: dict[str, np.ndarray]  # const_key -> tile contents
    inputs: list[Binding]
    outputs: list[Binding]
    summary: dict[str, Any] = field(default_factory=dict)
    host_gathers: list[HostGather] = field(default_factory=list)
    # Seconds per compile stage, measured on this machine; never stored (artifacts are deterministic).
    compile_stages: dict[str, float] = field(default_factory=dict, compare=False)
    # Set once this object passed the validator. Not an __init__ field, so a changed copy made with
    # dataclasses.replace is checked again; the trust boundary is loading an artifact (always checked).
    validated: bool = field(default=False, init=False, compare=False, repr=False)
    # The runtime's execution plan for this object (lpuc.runtime.plan), built on the first run.
    plan: Any = field(default=None, init=False, compare=False, repr=False)
    # The file a loaded program came from (None: compiled in this process). A kernel that fails on a
    # loaded program's attributes is the file's fault (exit 2), on a compiled one lpuc's (exit 3).
    origin: str | None = field(default=None, init=False, compare=False, repr=False)
    # What the validator and the summary derive per instruction (its streams, when an MM frees its
    # plane), by instruction id, kept with the instruction and tiles it was derived from: both ask
    # for an MM's, and a compile asks the summary first (lpuc.schedule.validate_costs.streams_of).
    derived: dict[int, list] = field(default_factory=dict, init=False, compare=False, repr=False)

    @property
    def compile_seconds(self) -> float:
        return sum(v for k, v in self.compile_stages.items() if not k.startswith("pass "))

    @property
    def model_inputs(self) -> list[Binding]:
        """The inputs a caller gives (those the host gathers before the run are computed from them)."""
        gathered = {g.rows for g in self.host_gathers}
        return [b for b in self.inputs if b.name not in gathered]

    def queues(self) -> dict[str, list[Instruction]]:
        """Per-unit instruction queues, each in issue order."""
        out: dict[str, list[Instruction]] = {}
        for ins in sorted(self.instructions, key=attrgetter("start", "id")):
            out.setdefault(ins.unit, []).append(ins)
        order = {u: k for k, u in enumerate(self.target.units())}
        return dict(sorted(out.items(), key=lambda kv: order.get(kv[0], len(order))))

    def save(self, path: str | os.PathLike) -> None:
        from lpuc.backends.lpu import write_program

        write_program(self, path)

    def to_bytes(self) -> bytes:
        from lpuc.backends.lpu import encode_program

        return encode_program(self)

    def run(
        self,
        inputs: Mapping[str, np.ndarray],
        trace: str | os.PathLike | None = None,
        interpret: bool = False,
    ) -> dict[str, np.ndarray]:
        """Execute the instruction streams in the reference runtime; returns outputs by name.
        interpret=True: the plain instruction-by-instruction interpreter (the execution plan's oracle)."""
        from lpuc.runtime import execute

        return execute(self, inputs, trace=trace, interpret=interpret)

    def validate(self) -> None:
        """Prove the program legal (raises ScheduleError); checked once per Program object."""
        if not self.validated:
            from lpuc.schedule.validator import validate

            validate(self)
            self.validated = True
