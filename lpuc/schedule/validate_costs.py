"""Validator rule: every instruction books what the cost model says it holds (VXM ALUs, MEM ports,
stream ids), lasts at least the cost model's duration, and carries a work record that matches the
windows it touches (so a file cannot make itself cheaper by editing its work)."""

from __future__ import annotations

import math
from collections import Counter

from lpuc import cost
from lpuc.cost import QUEUE_KIND, Stream, unit_kind
from lpuc.dtypes import words_per_row
from lpuc.ops import expression_alu_ops
from lpuc.program import Access, Instruction, Program


def streams_of(p: Program, ins: Instruction) -> tuple[list[Stream], list[Stream]]:
    """The cost model's view of an instruction's windows."""

    def stream(a: Access) -> Stream:
        t = p.tiles[a.buf]
        return Stream(-1 if t.kind == "host" else a.slice, a.nrows, words_per_row(t.np_dtype), a.nlanes)

    return [stream(a) for a in ins.reads], [stream(a) for a in ins.writes]


def check_costs(p: Program) -> list[str]:
    target, out = p.target, []
    for ins in p.instructions:
        if ins.opcode not in QUEUE_KIND or not ins.units or not _accesses_known(p, ins):
            continue  # reported by _units / _bounds
        where = f"instruction {ins.id} ({ins.opcode}, {ins.node})"
        problem = _work_problem(p, ins)
        if problem:
            out.append(f"{where}: {problem}")
            continue
        reads, writes = streams_of(p, ins)
        precision = ins.attrs.get("precision", p.precision)
        need = cost.duration(
            target, ins.opcode, ins.unit, ins.work, reads, writes, precision, bool(ins.attrs.get("install"))
        )
        if ins.duration < need:
            out.append(
                f"{where}: duration {ins.duration} is shorter than the {need} cycles the cost model gives"
            )
        booked = Counter(_booking_key(u) for u in ins.units)
        n_unit = cost.unit_cycles(target, ins.opcode, ins.work, precision)
        for s, k in cost.port_needs(target, ins.opcode, [*reads, *writes], n_unit).items():
            if booked[f"MEM{s}"] < k:
                out.append(f"{where}: needs {k} ports of MEM slice {s}, books {booked[f'MEM{s}']}")
        east, west = cost.stream_needs(target, ins.opcode, ins.unit, reads, writes)
        for direction, k in (("E", east), ("W", west)):
            if booked[f"STREAM{direction}"] < k:
                out.append(f"{where}: needs {k} {direction} streams, books {booked[f'STREAM{direction}']}")
        alus = cost.vxm_alus(target, ins.opcode, ins.work)
        if booked["VXM"] < alus:
            out.append(f"{where}: needs {alus} VXM ALUs, books {booked['VXM']}")
    return out


def _booking_key(unit: str) -> str:
    """What a booked unit counts towards: a slice's ports, a direction's streams, or a unit kind."""
    kind = unit_kind(unit)
    if kind == "PORT":
        return unit.split(".")[0]
    if kind == "STREAM":
        return f"STREAM{unit[1]}"
    return kind


def _accesses_known(p: Program, ins: Instruction) -> bool:
    return all(0 <= a.buf < len(p.tiles) for a in ins.reads + ins.writes)


def _work_problem(p: Program, ins: Instruction) -> str | None:
    """Work the cost model charges must match the windows the instruction touches."""
    w = ins.work
    if ins.opcode == "mxm.mm":
        k0, k1, _ = ins.attrs.get("k", (0, 0, 0))
        keep = bool(ins.attrs.get("keep"))
        if not ins.reads or bool(ins.writes) == keep:
            return (
                "an MM that keeps its sum in the accumulators reads an activation window and writes none"
                if keep
                else "an MM needs an activation window and a result window"
            )
        act = ins.reads[0]
        lanes = ins.attrs.get("lanes") if keep else ins.writes[0].nlanes
        if not isinstance(lanes, int) or isinstance(lanes, bool):
            return "an MM that keeps its sum in the accumulators must give its result lanes"
        if w.vectors != act.nrows or w.macs != act.nrows * (k1 - k0) * lanes or act.nlanes != k1 - k0:
            return (
                f"work {w.vectors} rows / {w.macs} MACs does not match its "
                f"{act.nrows}x{act.nlanes} activation window"
            )
        if ins.attrs.get("acc") and (keep or len(ins.reads) < 2 or ins.reads[1] != ins.writes[0]):
            return "an accumulating MM must read the window it accumulates into"
    elif ins.opcode == "mxm.lw":
        if not ins.reads or ins.writes:
            return "an LW reads weight windows and writes none"
        words = sum(a.nrows * words_per_row(p.tiles[a.buf].np_dtype) for a in ins.reads)
        if w.words != words:
            return f"work {w.words} words does not match the {words} words of its weight windows"
        if len({a.nlanes for a in ins.reads}) != 1:
            return "the weight windows of an LW differ in lanes"
    elif ins.opcode == "vxm.map":
        if len(ins.writes) != 1:
            return "a map writes one window"
        widest = max(p.tiles[a.buf].np_dtype.itemsize for a in ins.reads + ins.writes)
        if w.vectors != ins.writes[0].nrows * math.ceil(widest / 4):
            return f"work {w.vectors} vectors does not match its {ins.writes[0].nrows}-row result"
        if w.alu_ops < expression_alu_ops(list(ins.attrs.get("expr", []))):
            return f"work {w.alu_ops} ALU ops per element is less than its expression needs"
    elif ins.opcode in ("vxm.kernel", "sxm.kernel"):
        if w.vectors < sum(a.nrows for a in ins.writes):
            return f"work {w.vectors} vectors is less than the {sum(a.nrows for a in ins.writes)} it writes"
    return None
