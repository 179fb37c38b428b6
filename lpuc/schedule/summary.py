"""The schedule summary stored in every artifact: what `lpuc report` shows and CI diffs.

Everything in it is recomputed from the instructions, tiles and target (`summarize`), except the few
facts only the compiler could see (`FACTS`: its version, the options, and the two bound inputs that
need the graph). Loading an artifact recomputes the summary and refuses a file whose stored summary
differs, so an edited figure never reaches a report.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

import numpy as np

from lpuc import __version__, cost
from lpuc.cost import Work
from lpuc.dtypes import dtype_from_name
from lpuc.program import Instruction, Program
from lpuc.schedule.bounds import hardware_bounds
from lpuc.schedule.critical_path import critical_path
from lpuc.schedule.liveness import live_intervals
from lpuc.schedule.validator import held_until

SCHEMA_VERSION = 1
TOP_CRITICAL = 5  # nodes listed with the most cycles on the critical path


def compile_time_facts(options: dict, bound_facts: dict) -> dict[str, Any]:
    return {"compiler": f"lpuc {__version__}", "options": dict(sorted(options.items())), **bound_facts}


def stored_facts(summary: dict[str, Any]) -> dict[str, Any]:
    """The compiler's facts as a stored summary carries them (for recomputing it at load)."""
    bounds = summary["lower_bound_cycles"]
    return {
        "compiler": summary["compiler"],
        "options": summary["options"],
        "dependence_chain": bounds["dependence_chain"],
        "sxm": bounds["sxm"],
    }


def summarize(program: Program, facts: dict[str, Any]) -> dict[str, Any]:
    target = program.target
    cycles = max((i.end for i in program.instructions), default=0)
    bounds = hardware_bounds(program, facts)
    busy: Counter[str] = Counter()
    for ins in program.instructions:
        # An MM holds its plane only while its rows stream in (lpuc.cost.occupancy), everything else
        # (its other units too) until its end: held_until, asked once per instruction.
        own = held_until(program, ins, ins.unit) if ins.units else ins.end
        for u in ins.units:
            busy[u] += (own if u == ins.unit else ins.end) - ins.start
    compute = [u for u in target.units() if _is_compute(u) and (u != "HOST" or busy[u])]
    ports = [u for u in target.units() if u.startswith("MEM")]
    io_in = _io_bytes(program, program.inputs)
    io_out = _io_bytes(program, program.outputs)
    io_cycles = cost.pcie_cycles(target, io_in) + cost.pcie_cycles(target, io_out)
    gather_cycles = host_gather_cycles(program)
    host = [i for i in program.instructions if i.opcode == "host.kernel"]
    path = critical_path(program)
    summary = {
        "schema_version": SCHEMA_VERSION,
        "compiler": facts["compiler"],
        "model": program.model_name,
        "target": target.name,
        "target_sha256": target.sha256,
        "clock_mhz": target.clock_mhz,
        "precision": program.precision,
        "options": facts["options"],
        "cycles": cycles,
        "latency_us": round(target.cycles_to_us(cycles), 3),
        "model_io_bytes": {"to_chip": io_in, "to_host": io_out},
        "model_io_pcie_cycles": io_cycles,
        "end_to_end_us": round(target.cycles_to_us(cycles + io_cycles + gather_cycles), 3),
        "lower_bound_cycles": bounds,
        "bound_ratio": round(cycles / bounds["overall"], 3) if bounds["overall"] else 1.0,
        "critical_path": {
            "instructions": len(path),
            "busy_cycles": sum(i.duration for i in path),
            "top": _top_nodes(path),
        },
        "sram_peak_bytes": _peak_live_words(program) * target.word_bytes,
        "sram_used_bytes": _used_words(program) * target.word_bytes,
        "sram_const_bytes": sum(
            {(t.slice, t.addr): t.words for t in program.tiles if t.kind == "const"}.values()
        )
        * target.word_bytes,
        "sram_const_padding_bytes": _const_padding_bytes(program),
        "sram_capacity_bytes": target.sram_bytes,
        "host_tables": {
            t.tensor: int(program.consts[t.const_key].nbytes)
            for t in sorted(program.tiles, key=lambda t: t.tensor)
            if t.kind == "host" and t.const_key is not None
        },
        "units": {u: _pct(busy[u], cycles) for u in compute},
        "mem_ports_busy_pct": _pct(sum(busy[u] for u in ports), cycles * len(ports)),
        "streams_busy_pct": {
            d: _pct(
                sum(busy[u] for u in busy if u.startswith(f"S{d[0].upper()}")),
                cycles * target.streams_per_direction,
            )
            for d in ("east", "west")
        },
        "instructions": len(program.instructions),
        "instructions_by_opcode": dict(sorted(Counter(i.opcode for i in program.instructions).items())),
        "tiles": len(program.tiles),
        "host_ops": len({i.node for i in host}),
        "host_cycles": sum(i.duration for i in host),
        "host_pcie_cycles": sum(
            cost.pcie_cycles(target, i.work.pcie_to_host) + cost.pcie_cycles(target, i.work.pcie_to_chip)
            for i in host
        ),
        "host_nodes": sorted({i.node for i in host}),
        "host_estimated_nodes": sorted({i.node for i in host if i.work.at_max}),
        "macs": sum(i.work.macs for i in program.instructions),
        "dependence_chain_cycles": bounds["dependence_chain"],
    }
    if program.host_gathers:
        # Tables the host gathers from before the run (rows tensor -> table), and the host's time
        # for it, before the inputs cross PCIe (in end_to_end_us; the rows are in model_io_bytes).
        # (Only then: the summaries of programs without them stay as they were.)
        summary["host_gathers"] = {g.rows: g.table for g in program.host_gathers}
        summary["host_gather_cycles"] = gather_cycles
    return summary


def host_gather_cycles(program: Program) -> int:
    """The host's time for the program's input-fed gathers, costed as a host op Gather is
    (lpuc.lowering.stream._host_work): it touches the ids, the rows it reads and the rows it writes,
    one FLOP per element."""
    inputs = {b.name: b for b in program.inputs}
    touched = flops = 0
    for g in program.host_gathers:
        ids, rows = inputs[g.ids], inputs[g.rows]
        row_items = int(np.prod(rows.shape, dtype=np.int64))
        id_items = int(np.prod(ids.shape, dtype=np.int64))
        touched += id_items * np.dtype(dtype_from_name(ids.dtype)).itemsize
        touched += 2 * row_items * program.consts[g.const_key].dtype.itemsize
        flops += id_items + 2 * row_items
    return cost.host_cycles(program.target, Work(host_flops=flops, host_bytes=touched)) if touched else 0


def _is_compute(unit: str) -> bool:
    return not unit.startswith(("MEM", "SE", "SW"))


def _pct(part: float, whole: float) -> float:
    return round(100.0 * part / whole, 2) if whole else 0.0


def _io_bytes(program: Program, bindings) -> int:
    """Bytes of model inputs or outputs that live in SRAM (host-resident ones never cross PCIe)."""
    total = 0
    for b in bindings:
        if b.tiles and program.tiles[b.tiles[0]].kind != "host" and b.shape is not None:
            total += (
                int(np.prod(b.shape, dtype=np.int64)) * np.dtype(program.tiles[b.tiles[0]].np_dtype).itemsize
            )
    return total


def _peak_live_words(program: Program) -> int:
    """Chip-wide peak of live words: the no-fragmentation bound of the allocation."""
    life = live_intervals(
        [t.kind for t in program.tiles],
        ((i.start, i.end, [a.buf for a in i.reads], [a.buf for a in i.writes]) for i in program.instructions),
    )
    slots: dict[tuple, tuple[int, int, int]] = {}
    for t in program.tiles:
        if t.kind == "host":
            continue
        key = (t.slice, t.addr, "const") if t.kind == "const" else (t.id,)
        start, end = life[t.id]
        if key in slots:
            s0, e0, w = slots[key]
            start, end = min(start, s0), max(end, e0)
        slots[key] = (start, end, t.words)
    events = sorted([(s, w) for s, _, w in slots.values()] + [(e, -w) for _, e, w in slots.values()])
    return int(np.max(np.cumsum([w for _, w in events]))) if events else 0


def _const_padding_bytes(program: Program) -> int:
    """Bytes of the constant slots that hold no value: a tile of `lanes` lanes still takes whole
    words of `word_bytes` (one byte per lane); identical constant tiles share one slot."""
    const = [t for t in program.tiles if t.kind == "const"]
    slot_words = {(t.slice, t.addr): t.words for t in const}  # packed tiles share their slot's words
    values = {(t.slice, t.addr, t.lane): t.rows * t.lanes * t.np_dtype.itemsize for t in const}
    return sum(slot_words.values()) * program.target.word_bytes - sum(values.values())


def _used_words(program: Program) -> int:
    top: dict[int, int] = defaultdict(int)
    for t in program.tiles:
        if t.kind != "host":
            top[t.slice] = max(top[t.slice], t.addr + t.words)
    return sum(top.values())


def _top_nodes(path: list[Instruction]) -> list[dict[str, Any]]:
    cycles: Counter[tuple[str, str]] = Counter()
    for ins in path:
        cycles[(ins.node, ins.opcode)] += ins.duration
    ranked = sorted(cycles.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_CRITICAL]
    return [{"node": node, "opcode": opcode, "cycles": c} for (node, opcode), c in ranked]
