"""Validator rule: every instruction books what the cost model says it holds (VXM ALUs, MEM ports,
stream ids), lasts at least the cost model's duration, and carries a work record that matches the
windows it touches (so a file cannot make itself cheaper by editing its work)."""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Mapping

from lpuc import cost
from lpuc.cost import QUEUE_KIND, Stream, unit_kind
from lpuc.dtypes import dtype_from_name, words_per_row
from lpuc.ops import expression_alu_ops
from lpuc.program import Access, Instruction, Program


def streams_of(p: Program, ins: Instruction) -> tuple[list[Stream], list[Stream]]:
    """The cost model's view of an instruction's windows (shared: do not modify the lists)."""
    return derived(p, ins)[2]


def derived(p: Program, ins: Instruction) -> list:
    """[ins, its tiles, streams_of, held_until's answer or None until asked]: what the validator and
    the summary derive from an instruction, computed once per program unless the instruction or one
    of its tiles was replaced since (a changed copy is a new object, and tiles compare by value)."""
    tiles = p.tiles
    mine = tuple([tiles[a.buf] for a in ins.reads] + [tiles[a.buf] for a in ins.writes])
    found = p.derived.get(ins.id)
    if found is not None and found[0] is ins and found[1] == mine:
        return found

    def where(a: Access) -> tuple[int, int]:
        t = tiles[a.buf]
        return (-1 if t.kind == "host" else a.slice), words_per_row(t.np_dtype)

    lane = lambda a: tiles[a.buf].lane  # noqa: E731 - a window's tile's first lane
    streams = cost.window_streams(ins.opcode, ins.attrs, ins.reads, ins.writes, where, lane)
    found = p.derived[ins.id] = [ins, mine, streams, None]
    return found


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
        booked = booked_counts(tuple(ins.units))
        ports = booked_ports(p, ins, reads, writes, booked)
        unbooked = sorted(s for s, k in ports.items() if not k)
        if unbooked:
            out.append(f"{where}: books none of the ports of MEM slice {unbooked[0]} it touches")
            continue
        # Its words stream through the ports it booked (fewer than it could use: more slowly), a
        # kernel's ops through the ALUs it booked (cost.held_alus).
        alus = cost.held_alus(target, ins.opcode, ins.work, booked["VXM"])
        need = cost.duration(
            target,
            ins.opcode,
            ins.unit,
            ins.work,
            reads,
            writes,
            precision,
            bool(ins.attrs.get("install")),
            ports if ins.opcode != "host.kernel" else None,
            alus if ins.opcode in ("vxm.kernel", "vxm.map") else None,
        )
        if ins.duration < need:
            out.append(
                f"{where}: duration {ins.duration} is shorter than the {need} cycles the cost model gives"
            )
        east, west = cost.stream_needs(target, ins.opcode, ins.unit, reads, writes, ins.work)
        for direction, k in (("E", east), ("W", west)):
            if booked[f"STREAM{direction}"] < k:
                out.append(f"{where}: needs {k} {direction} streams, books {booked[f'STREAM{direction}']}")
        alus = cost.vxm_alus(target, ins.opcode, ins.work)
        if cost.has_epilogue(ins.opcode, ins.work):
            alus = cost.epilogue_alus(target, ins.work, precision)
        alus = min(1, alus) if ins.opcode in ("vxm.kernel", "vxm.map") else alus  # at least one
        if booked["VXM"] < alus:
            out.append(f"{where}: needs {alus} VXM ALUs, books {booked['VXM']}")
    return out


def booked_ports(
    p: Program,
    ins: Instruction,
    reads: list[Stream],
    writes: list[Stream],
    booked: Mapping[str, int] | None = None,
) -> dict[int, int]:
    """Slice -> the ports the instruction books there (at most the banks), for every slice whose
    ports it must book (host DMA books none). `booked`: its units counted by _booking_key, if the
    caller has them (ports count as "MEM<slice>")."""
    counts = booked if booked is not None else booked_counts(tuple(ins.units))
    need = cost.port_needs(p.target, ins.opcode, [*reads, *writes], 1)
    return {s: min(counts[f"MEM{s}"], p.target.mem_banks) for s in sorted(need)}


@functools.lru_cache(maxsize=1 << 14)  # a program has a few hundred distinct unit lists
def booked_counts(units: tuple[str, ...]) -> Counter[str]:
    """An instruction's booked units counted by what they count towards (_booking_key); shared by
    every instruction with these units, so read only (a missing key reads as 0, adding none)."""
    return Counter(_booking_key(u) for u in units)


@functools.cache  # asked once per booked unit of every instruction; few distinct names
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
        if len(ins.writes) > 1 and (
            ins.attrs.get("acc")
            or sum(a.nrows for a in ins.writes) != act.nrows
            or len({a.nlanes for a in ins.writes}) != 1
            or len(set(ins.writes)) != len(ins.writes)
        ):
            return "an MM writing several windows must write its result rows into them, in order"
        lanes = ins.attrs.get("lanes") if keep else ins.writes[0].nlanes
        if not isinstance(lanes, int) or isinstance(lanes, bool):
            return "an MM that keeps its sum in the accumulators must give its result lanes"
        # MACs may be fewer than the window's: constant rows and columns a pass added
        # (lpuc.ir.model_work) are no model work. A smaller count only lowers the MXM bound, so
        # the bound ratio gets worse: a tampered artifact cannot flatter itself that way. Durations
        # are timed by rows (lpuc.cost), never by MACs.
        window_macs = act.nrows * (k1 - k0) * lanes
        if w.vectors != act.nrows or not 0 <= w.macs <= window_macs or act.nlanes != k1 - k0:
            return (
                f"work {w.vectors} rows / {w.macs} MACs does not match its "
                f"{act.nrows}x{act.nlanes} activation window"
            )
        if ins.attrs.get("acc") and (keep or len(ins.reads) < 2 or ins.reads[1] != ins.writes[0]):
            return "an accumulating MM must read the window it accumulates into"
        return _epilogue_problem(p, ins)
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
        return _stack_problem(ins)
    elif ins.opcode in ("vxm.kernel", "sxm.kernel"):
        if w.vectors < sum(a.nrows for a in ins.writes):
            return f"work {w.vectors} vectors is less than the {sum(a.nrows for a in ins.writes)} it writes"
    return None


def _epilogue_problem(p: Program, ins: Instruction) -> str | None:
    """An MM with a fused map (lpuc/lowering/epilogue.py) carries the map's work and relays its
    result dtype's words per row to the VXM; an MM without one relays nothing."""
    w, epilogue = ins.work, ins.attrs.get("epilogue")
    if epilogue is None:
        return "an MM without an epilogue relays no words to the VXM" if w.relay_words else None
    if not isinstance(epilogue, dict) or not {"expr", "operands", "result"} <= set(epilogue):
        return "an epilogue needs expr, operands and result"
    if ins.attrs.get("keep") or ins.attrs.get("acc") or not ins.writes:
        return "an MM with an epilogue writes its final sum, through the map, to its result windows"
    try:
        result = dtype_from_name(str(epilogue["result"]))
        steps = list(epilogue["expr"])
        alu_ops = expression_alu_ops(steps)
    except (TypeError, ValueError, KeyError, AttributeError):
        return "an epilogue's result dtype or expression is malformed"
    operands = epilogue["operands"]
    if not isinstance(operands, list) or any(
        k is not None and (not isinstance(k, int) or isinstance(k, bool) or not 0 <= k < len(ins.reads))
        for k in operands
    ):
        return f"epilogue operands {operands!r} name neither the MM's result (0) nor one of its reads"
    if w.relay_words != words_per_row(result):
        words = words_per_row(result)
        return f"work relays {w.relay_words} words per row, its {result.name} result has {words}"
    if w.alu_ops < alu_ops:
        return f"work {w.alu_ops} ALU ops per element is less than its epilogue needs"
    if sum(a.nrows for a in ins.writes) != w.vectors:
        written = sum(a.nrows for a in ins.writes)
        return f"its epilogue writes {written} rows, not the {w.vectors} it multiplies"
    widest = max(p.tiles[a.buf].np_dtype.itemsize for a in ins.reads[1:] + ins.writes)
    if max(widest, result.itemsize) > 4:
        return "an epilogue streams 32-bit words: 64-bit values need a map of their own"
    return None


def _stack_problem(ins: Instruction) -> str | None:
    """A map operand stacked from several reads (they share stream ids, lpuc.cost) must be those
    reads' rows making up the result's, each read in one operand only."""
    seen: set[int] = set()
    for k in ins.attrs.get("operands", ()):
        if not isinstance(k, list):
            continue
        indices = len(k) > 1 and all(isinstance(j, int) and 0 <= j < len(ins.reads) for j in k)
        if not indices or len(set(k)) != len(k) or seen & set(k):
            return f"stacked operand {k!r} does not name distinct reads"
        seen.update(k)
        parts = [ins.reads[j] for j in k]
        if sum(a.nrows for a in parts) != ins.writes[0].nrows or {a.nlanes for a in parts} != {
            ins.writes[0].nlanes
        }:
            return f"stacked operand {k!r} is not the rows of its {ins.writes[0].nrows}-row result"
    return None
