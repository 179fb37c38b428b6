"""Chrome / Perfetto trace-event JSON of an executed program, in simulated time.

One track (thread) per functional unit that executed work, one complete event ("X") per
instruction on each unit it occupies, named by opcode and source node, and a counter track of live
SRAM bytes. Timestamps are microseconds at the target clock. Every event carries ph, ts, dur, pid
and tid so that strict consumers accept it. Open the file at https://ui.perfetto.dev.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re

from lpuc.fileio import atomic_write
from lpuc.program import Program
from lpuc.schedule.validator import tile_lifetimes

PID = 1


def trace_events(program: Program) -> list[dict]:
    target = program.target
    us = 1.0 / target.clock_mhz
    used = {u for ins in program.instructions for u in ins.units if _is_track(u)}
    tids = {u: k + 1 for k, u in enumerate(u for u in target.units() if u in used)}
    events: list[dict] = [
        {
            "ph": "M",
            "name": "process_name",
            "pid": PID,
            "tid": 0,
            "ts": 0,
            "dur": 0,
            "args": {"name": f"{target.name}: {program.model_name} ({program.precision})"},
        },
    ]
    for unit, tid in tids.items():
        events.append(
            {
                "ph": "M",
                "name": "thread_name",
                "pid": PID,
                "tid": tid,
                "ts": 0,
                "dur": 0,
                "args": {"name": unit},
            }
        )
        events.append(
            {
                "ph": "M",
                "name": "thread_sort_index",
                "pid": PID,
                "tid": tid,
                "ts": 0,
                "dur": 0,
                "args": {"sort_index": tid},
            }
        )
    for ins in sorted(program.instructions, key=lambda i: (i.start, i.id)):
        ports = sum(u.startswith("MEM") for u in ins.units)
        streams = sum(not _is_track(u) for u in ins.units) - ports
        work = {k: v for k, v in dataclasses.asdict(ins.work).items() if v}
        for unit in filter(_is_track, ins.units):
            events.append(
                {
                    "ph": "X",
                    "name": f"{ins.opcode} {ins.node}",
                    "cat": _unit_class(unit),
                    "pid": PID,
                    "tid": tids[unit],
                    "ts": ins.start * us,
                    "dur": ins.duration * us,
                    "args": {
                        "instruction": ins.id,
                        "start_cycle": ins.start,
                        "cycles": ins.duration,
                        "reads": len(ins.reads),
                        "writes": len(ins.writes),
                        "mem_ports": ports,
                        "streams": streams,
                        **work,
                    },
                }
            )
    events += _sram_counter(program, us)
    return events


def _is_track(unit: str) -> bool:
    """Functional units get a track; MEM ports and stream ids are listed in each event's args."""
    return not unit.startswith(("MEM", "SE", "SW"))


def _unit_class(unit: str) -> str:
    """ "MXM2.LW" -> "MXM", "VXM11" -> "VXM": the category Perfetto groups and colours by."""
    return re.match(r"[A-Z]+", unit).group(0)


def _sram_counter(program: Program, us: float) -> list[dict]:
    word_bytes = program.target.word_bytes
    deltas: dict[int, int] = {}
    seen_consts: set[str] = set()
    for t, (start, end) in zip(program.tiles, tile_lifetimes(program)):
        if t.const_key is not None:
            if t.const_key in seen_consts:
                continue  # identical constant tiles share one slot
            seen_consts.add(t.const_key)
        deltas[start] = deltas.get(start, 0) + t.words * word_bytes
        deltas[end] = deltas.get(end, 0) - t.words * word_bytes
    events, live = [], 0
    for cycle in sorted(deltas):
        live += deltas[cycle]
        events.append(
            {
                "ph": "C",
                "name": "SRAM live bytes",
                "pid": PID,
                "tid": 0,
                "ts": cycle * us,
                "dur": 0,
                "args": {"bytes": live},
            }
        )
    return events


def write_trace(program: Program, path: str | os.PathLike) -> None:
    atomic_write(
        path,
        json.dumps({"traceEvents": trace_events(program), "displayTimeUnit": "ns"}, separators=(",", ":")),
    )
