"""Edits of compiled programs for validator and runtime tests: breaking ones, and legal ones."""

from __future__ import annotations

import dataclasses

import pytest

from lpuc import cost
from lpuc.errors import ScheduleError
from lpuc.program import Instruction, Program
from lpuc.schedule.summary import stored_facts, summarize
from lpuc.schedule.validate_costs import streams_of
from lpuc.schedule.validator import validate


def refusals(p: Program) -> list[str]:
    """The validator's problems with `p`, which must be refused."""
    with pytest.raises(ScheduleError) as info:
        validate(p)
    return info.value.problems


def with_instruction(p: Program, index: int, **changes) -> Program:
    instructions = list(p.instructions)
    instructions[index] = dataclasses.replace(instructions[index], **changes)
    return dataclasses.replace(p, instructions=instructions)


def without_instruction(p: Program, index: int) -> Program:
    return dataclasses.replace(p, instructions=[i for k, i in enumerate(p.instructions) if k != index])


def resummarized(p: Program) -> Program:
    """The program with its summary recomputed (what an edit that also fixed the summary gives)."""
    out = dataclasses.replace(p)
    out.summary = summarize(out, stored_facts(p.summary))
    return out


def cost_of(p: Program, ins: Instruction) -> int:
    reads, writes = streams_of(p, ins)
    precision = ins.attrs.get("precision", p.precision)
    return cost.duration(
        p.target, ins.opcode, ins.unit, ins.work, reads, writes, precision, bool(ins.attrs.get("install"))
    )


def legally_changed(p: Program, index: int, **changes) -> Program:
    """Apply `changes` to one instruction and keep the program legal: the instruction books ports on the
    slices it now touches, gets its cost-model duration and runs alone, after every earlier instruction
    ended; every later instruction moves later by the same amount, which keeps each ordering and
    booking the schedule had."""
    old = p.instructions[index]
    ins = dataclasses.replace(old, **changes)
    reads, writes = streams_of(p, ins)
    n_unit = cost.unit_cycles(p.target, ins.opcode, ins.work, ins.attrs.get("precision", p.precision))
    ports = cost.port_needs(p.target, ins.opcode, [*reads, *writes], n_unit)
    others = tuple(u for u in ins.units if not u.startswith("MEM"))
    ins = dataclasses.replace(
        ins, units=others + tuple(f"MEM{s}.p{j}" for s, k in ports.items() for j in range(k))
    )
    start = max([i.end for i in p.instructions if i.id < old.id] + [old.start])
    ins = dataclasses.replace(ins, start=start, duration=cost_of(p, ins))
    shift = ins.end - old.start
    instructions = [
        ins if k == index else dataclasses.replace(i, start=i.start + shift) if i.id > old.id else i
        for k, i in enumerate(p.instructions)
    ]
    return resummarized(dataclasses.replace(p, instructions=instructions))
