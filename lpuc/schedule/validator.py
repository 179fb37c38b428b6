"""Proof that a program obeys the chip's rules; used by the compiler, the runtime and tests.

Checked, each as its own rule:
1. units: every opcode is known, every unit exists on the target and runs one instruction at a time;
2. bounds: every tile slot and every access lies inside SRAM and inside its tile's slot;
3. SRAM: no two tiles that are live at the same time share an address (identical constants may);
4. timing: an instruction reads a tile only after a write to that window has completed, and no two
   instructions touching the same window, one of them writing, overlap in time;
5. MXM weights: every MM installs weights that an LW on its plane finished loading, an LW only fills
   a free shadow buffer;
6. constants are never written.
The runtime executes instructions in start order, reading inputs at the start and writing results
at the end; rules 3 and 4 make that order give the same values as the hardware's streams.
"""

from __future__ import annotations

from collections import defaultdict

from lpuc.dtypes import words_per_row
from lpuc.errors import ScheduleError
from lpuc.program import OPCODES, Access, Instruction, Program, TileSlot
from lpuc.schedule.liveness import live_intervals

MAX_PROBLEMS = 20


def validate(program: Program) -> None:
    problems: list[str] = []
    for rule in (_units, _bounds, _sram_overlap, _timing, _mxm_weights, _constants_read_only):
        problems += rule(program)
        if len(problems) >= MAX_PROBLEMS:
            break
    if problems:
        raise ScheduleError(problems)


def _units(p: Program) -> list[str]:
    known = set(p.target.units())
    out: list[str] = []
    busy: dict[str, list[Instruction]] = defaultdict(list)
    for ins in p.instructions:
        if ins.opcode not in OPCODES:
            out.append(f"instruction {ins.id} has unknown opcode {ins.opcode!r}")
        if ins.duration <= 0 or ins.start < 0:
            out.append(f"instruction {ins.id} ({ins.opcode}) has start {ins.start}, duration {ins.duration}")
        for u in ins.units:
            if u not in known:
                out.append(f"instruction {ins.id} ({ins.opcode}) runs on unknown unit {u}")
            busy[u].append(ins)
    for u, items in sorted(busy.items()):
        items.sort(key=lambda i: (i.start, i.id))
        for a, b in zip(items, items[1:]):
            if b.start < a.end:
                out.append(
                    f"unit {u} double-booked: instruction {a.id} ({a.opcode}) [{a.start}, {a.end}) "
                    f"overlaps instruction {b.id} ({b.opcode}) [{b.start}, {b.end})"
                )
    return out


def _bounds(p: Program) -> list[str]:
    out: list[str] = []
    capacity, slices = p.target.addresses_per_slice, p.target.num_slices
    for t in p.tiles:
        if t.kind == "host":
            continue
        if not 0 <= t.slice < slices:
            out.append(f"tile {t.id} ({t.tensor}) in slice {t.slice}, target has {slices}")
        if t.addr < 0 or t.addr + t.words > capacity:
            out.append(
                f"tile {t.id} ({t.tensor}) at addresses [{t.addr}, {t.addr + t.words}) of slice {t.slice} "
                f"exceeds the slice capacity of {capacity} addresses"
            )
    for ins in p.instructions:
        for a in ins.reads + ins.writes:
            tile = p.tiles[a.buf] if 0 <= a.buf < len(p.tiles) else None
            if tile is not None and tile.kind == "host":
                if ins.opcode != "host.kernel":
                    out.append(
                        f"instruction {ins.id} ({ins.opcode}) on {ins.unit} "
                        f"accesses host-memory tensor {tile.tensor}"
                    )
                continue
            problem = _access_problem(a, tile)
            if problem:
                out.append(f"instruction {ins.id} ({ins.opcode}, {ins.node}): {problem}")
    return out


def _access_problem(a: Access, t: TileSlot | None) -> str | None:
    if t is None:
        return f"access names unknown tile {a.buf}"
    wpr = words_per_row(t.np_dtype)
    offset = a.addr - t.addr
    if a.slice != t.slice or offset < 0 or offset % wpr or offset + a.nrows * wpr > t.words or a.nrows <= 0:
        return (
            f"window slice {a.slice} addresses [{a.addr}, {a.addr + a.nrows * wpr}) is outside tile {t.id} "
            f"({t.tensor}) at slice {t.slice} [{t.addr}, {t.addr + t.words})"
        )
    if a.lane0 < 0 or a.nlanes <= 0 or a.lane0 + a.nlanes > t.lanes:
        return f"lanes [{a.lane0}, {a.lane0 + a.nlanes}) outside tile {t.id} ({t.tensor}) of {t.lanes} lanes"
    return None


def tile_lifetimes(p: Program) -> list[tuple[int, int]]:
    accesses = ((i.start, i.end, [a.buf for a in i.reads], [a.buf for a in i.writes]) for i in p.instructions)
    return live_intervals([t.kind for t in p.tiles], accesses)


def _sram_overlap(p: Program) -> list[str]:
    out: list[str] = []
    life = tile_lifetimes(p)
    by_slice: dict[int, list[TileSlot]] = defaultdict(list)
    for t in p.tiles:
        if t.kind != "host":
            by_slice[t.slice].append(t)
    for s, tiles in sorted(by_slice.items()):
        tiles.sort(key=lambda t: (t.addr, t.id))
        for i, a in enumerate(tiles):
            for b in tiles[i + 1 :]:
                if b.addr >= a.addr + a.words:
                    break
                if a.const_key is not None and a.const_key == b.const_key and a.addr == b.addr:
                    continue  # identical constant tiles share one slot
                (sa, ea), (sb, eb) = life[a.id], life[b.id]
                if sa < eb and sb < ea:
                    out.append(
                        f"tiles {a.id} ({a.tensor}) and {b.id} ({b.tensor}) overlap in slice {s} "
                        f"addresses [{b.addr}, {min(a.addr + a.words, b.addr + b.words)}) while both live "
                        f"(cycles [{max(sa, sb)}, {min(ea, eb)}))"
                    )
                    if len(out) >= MAX_PROBLEMS:
                        return out
    return out


def _windows_overlap(a: Access, b: Access, wpr: int) -> bool:
    return (
        a.addr < b.addr + b.nrows * wpr
        and b.addr < a.addr + a.nrows * wpr
        and a.lane0 < b.lane0 + b.nlanes
        and b.lane0 < a.lane0 + a.nlanes
    )


def _timing(p: Program) -> list[str]:
    out: list[str] = []
    accesses: dict[int, list[tuple[Instruction, Access, bool]]] = defaultdict(list)
    for ins in p.instructions:
        for a in ins.reads:
            accesses[a.buf].append((ins, a, False))
        for a in ins.writes:
            accesses[a.buf].append((ins, a, True))
    for buf, items in sorted(accesses.items()):
        tile = p.tiles[buf]
        wpr = words_per_row(tile.np_dtype)
        items.sort(key=lambda x: (x[0].start, x[0].id))
        writes = [x for x in items if x[2]]
        for ins, a, is_write in items:
            for w_ins, w, _ in writes:
                if w_ins.id == ins.id or not _windows_overlap(a, w, wpr):
                    continue
                if w_ins.start < ins.end and ins.start < w_ins.end:
                    kind = "writes" if is_write else "reads"
                    out.append(
                        f"instruction {ins.id} ({ins.opcode}) {kind} tile {buf} ({tile.tensor}) during "
                        f"[{ins.start}, {ins.end}) while instruction {w_ins.id} ({w_ins.opcode}) writes it "
                        f"during [{w_ins.start}, {w_ins.end})"
                    )
            if not is_write and tile.kind not in ("const", "input", "io"):  # host tensors too: written first
                if not any(w_ins.end <= ins.start and _windows_overlap(a, w, wpr) for w_ins, w, _ in writes):
                    out.append(
                        f"instruction {ins.id} ({ins.opcode}, {ins.node}) "
                        f"reads tile {buf} ({tile.tensor}) at "
                        f"cycle {ins.start}, before any write to it has completed"
                    )
            if len(out) >= MAX_PROBLEMS:
                return out
    return out


def _mxm_weights(p: Program) -> list[str]:
    out: list[str] = []
    planes: dict[str, list[Instruction]] = defaultdict(list)
    for ins in p.instructions:
        if ins.opcode in ("mxm.lw", "mxm.mm"):
            planes[ins.unit.split(".")[0]].append(ins)
    iw = p.target.iw_cycles
    for plane, items in sorted(planes.items()):
        items.sort(
            key=lambda i: (i.start, i.opcode != "mxm.mm", i.id)
        )  # an IW precedes an LW at the same cycle
        shadow: Instruction | None = None  # LW whose weights wait in the shadow buffer
        active = False
        last_install = None
        for ins in items:
            if ins.opcode == "mxm.lw":
                if shadow is not None:
                    out.append(
                        f"{plane}: LW {ins.id} overwrites the shadow weights of LW {shadow.id} "
                        "before an MM installed them"
                    )
                if last_install is not None and ins.start < last_install + iw:
                    out.append(f"{plane}: LW {ins.id} starts before the previous install finished")
                shadow = ins
            elif ins.attrs.get("install"):
                if shadow is None:
                    out.append(f"{plane}: MM {ins.id} installs weights but no LW loaded any")
                elif shadow.end > ins.start:
                    out.append(
                        f"{plane}: MM {ins.id} installs at cycle {ins.start} "
                        f"weights LW {shadow.id} finishes at {shadow.end}"
                    )
                shadow, active, last_install = None, True, ins.start
            elif not active:
                out.append(f"{plane}: MM {ins.id} runs with no installed weights")
    return out


def _constants_read_only(p: Program) -> list[str]:
    return [
        f"instruction {ins.id} ({ins.opcode}) writes constant tile {a.buf} ({p.tiles[a.buf].tensor})"
        for ins in p.instructions
        for a in ins.writes
        if 0 <= a.buf < len(p.tiles) and p.tiles[a.buf].kind == "const"
    ]
