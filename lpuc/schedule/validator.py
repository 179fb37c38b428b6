"""Proof that a program obeys the chip's rules; used by the compiler, the runtime and tests.

The program's meaning is its instructions executed one after another in id order (the runtime does
exactly that). The validator proves the timed schedule computes the same thing and that the chip
could run it. Checked, each as its own rule:
1. units: every opcode is known and sits in a queue of its unit kind; every unit exists, runs one
   instruction at a time, and the program uses no more queues than the chip has;
2. costs: every instruction books the VXM ALUs, MEM ports and streams lpuc.cost says it holds, its
   duration is at least what the cost model gives, and its work matches the windows it touches;
3. bounds: every tile slot and every access lies inside SRAM and inside its tile's slot;
4. SRAM: no two tiles that are live at the same time share an address (identical constants may);
5. order: of two instructions touching overlapping windows, one of them writing, the one with the
   lower id ends before the other starts; a read of a computed tile follows a write to it;
6. accumulation: the matmuls accumulating into a window cover its K range in order, and nothing
   else reads the window before the last of them;
7. MXM weights: every MM computes with the weights its own group's LW loaded on its plane;
8. outputs: every model output is written in full;
9. constants are never written.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict

import numpy as np

from lpuc import cost
from lpuc.cost import QUEUE_KIND, Stream
from lpuc.dtypes import words_per_row
from lpuc.errors import ScheduleError
from lpuc.ops import expression_alu_ops
from lpuc.program import Access, Instruction, Program, TileSlot
from lpuc.schedule.liveness import live_intervals

MAX_PROBLEMS = 20


def validate(program: Program) -> None:
    problems: list[str] = []
    rules = (
        _units,
        _costs,
        _bounds,
        _sram_overlap,
        _order,
        _accumulation,
        _mxm_weights,
        _outputs_written,
        _constants_read_only,
    )
    for rule in rules:  # every rule runs: a mutation test sees each rule's verdict
        problems += rule(program)[:MAX_PROBLEMS]
    if problems:
        raise ScheduleError(problems)


def unit_kind(unit: str) -> str:
    """MXM, MXM.LW, VXM, SXM, HOST, PORT (a MEM slice's bank port) or STREAM."""
    if unit.startswith("MEM"):
        return "PORT"
    if unit.startswith(("SE", "SW")):
        return "STREAM"
    if unit.endswith(".LW"):
        return "MXM.LW"
    return unit.rstrip("0123456789")


def _units(p: Program) -> list[str]:
    known = set(p.target.units())
    out: list[str] = []
    busy: dict[str, list[Instruction]] = defaultdict(list)
    for ins in p.instructions:
        if ins.opcode not in QUEUE_KIND:
            out.append(f"instruction {ins.id} has unknown opcode {ins.opcode!r}")
            continue
        if ins.duration <= 0 or ins.start < 0:
            out.append(f"instruction {ins.id} ({ins.opcode}) has start {ins.start}, duration {ins.duration}")
        if not ins.units or unit_kind(ins.unit) != QUEUE_KIND[ins.opcode]:
            out.append(
                f"instruction {ins.id} ({ins.opcode}) is queued on {ins.unit or 'no unit'}, "
                f"not a {QUEUE_KIND[ins.opcode]} unit"
            )
        extra_ok = {"PORT", "STREAM"} | ({"VXM"} if ins.opcode.startswith("vxm.") else set())
        for u in ins.units:
            if u not in known:
                out.append(f"instruction {ins.id} ({ins.opcode}) runs on unknown unit {u}")
            elif u != ins.unit and unit_kind(u) not in extra_ok:
                out.append(f"instruction {ins.id} ({ins.opcode}) also occupies {u}, which it cannot use")
            busy[u].append(ins)
    queues = {ins.unit for ins in p.instructions if ins.units}
    if len(queues) > p.target.instruction_queues:
        out.append(
            f"the program uses {len(queues)} instruction queues, "
            f"{p.target.name} has {p.target.instruction_queues}"
        )
    for u, items in sorted(busy.items()):
        items.sort(key=lambda i: (i.start, i.id))
        for a, b in zip(items, items[1:]):
            if b.start < a.end:
                out.append(
                    f"unit {u} double-booked: instruction {a.id} ({a.opcode}) [{a.start}, {a.end}) "
                    f"overlaps instruction {b.id} ({b.opcode}) [{b.start}, {b.end})"
                )
                if len(out) >= MAX_PROBLEMS:
                    return out
    return out


def streams_of(p: Program, ins: Instruction) -> tuple[list[Stream], list[Stream]]:
    """The cost model's view of an instruction's windows."""

    def stream(a: Access) -> Stream:
        t = p.tiles[a.buf]
        return Stream(-1 if t.kind == "host" else a.slice, a.nrows, words_per_row(t.np_dtype), a.nlanes)

    return [stream(a) for a in ins.reads], [stream(a) for a in ins.writes]


def _costs(p: Program) -> list[str]:
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
        if len(out) >= MAX_PROBLEMS:
            break
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
        if not ins.reads or not ins.writes:
            return "an MM needs an activation window and a result window"
        act, res = ins.reads[0], ins.writes[0]
        if w.vectors != act.nrows or w.macs != act.nrows * (k1 - k0) * res.nlanes or act.nlanes != k1 - k0:
            return (
                f"work {w.vectors} rows / {w.macs} MACs does not match its "
                f"{act.nrows}x{act.nlanes} activation window"
            )
        if ins.attrs.get("acc") and (len(ins.reads) < 2 or ins.reads[1] != res):
            return "an accumulating MM must read the window it accumulates into"
    elif ins.opcode == "mxm.lw":
        if len(ins.reads) != 1:
            return "an LW reads one weight window"
        t = p.tiles[ins.reads[0].buf]
        if w.words != ins.reads[0].nrows * words_per_row(t.np_dtype):
            return f"work {w.words} words does not match its {ins.reads[0].nrows}-row weight window"
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


def windows_overlap(a: Access, b: Access, wpr: int) -> bool:
    return (
        a.addr < b.addr + b.nrows * wpr
        and b.addr < a.addr + a.nrows * wpr
        and a.lane0 < b.lane0 + b.nlanes
        and b.lane0 < a.lane0 + a.nlanes
    )


def _order(p: Program) -> list[str]:
    out: list[str] = []
    accesses: dict[int, list[tuple[Instruction, Access, bool]]] = defaultdict(list)
    for ins in p.instructions:
        for a in ins.reads:
            accesses[a.buf].append((ins, a, False))
        for a in ins.writes:
            accesses[a.buf].append((ins, a, True))
    for buf, items in sorted(accesses.items()):
        if not 0 <= buf < len(p.tiles):
            continue
        tile = p.tiles[buf]
        wpr = words_per_row(tile.np_dtype)
        writes = [x for x in items if x[2]]
        for ins, a, is_write in items:
            for w_ins, w, _ in writes:
                if w_ins.id == ins.id or not windows_overlap(a, w, wpr):
                    continue
                first, second = (w_ins, ins) if w_ins.id < ins.id else (ins, w_ins)
                if first.end > second.start:
                    what = "writes" if is_write else "reads"
                    out.append(
                        f"instruction {ins.id} ({ins.opcode}, {ins.node}) {what} tile {buf} ({tile.tensor}) "
                        f"during [{ins.start}, {ins.end}), but instruction {w_ins.id} ({w_ins.opcode}) "
                        f"writes it during [{w_ins.start}, {w_ins.end}) and comes "
                        f"{'before' if w_ins.id < ins.id else 'after'} it"
                    )
            if len(out) >= MAX_PROBLEMS:
                return out
        if tile.kind not in ("const", "input", "io"):
            out += _reads_covered(buf, tile, items)
    return out


def _reads_covered(buf: int, tile: TileSlot, items: list[tuple[Instruction, Access, bool]]) -> list[str]:
    """Every value a computed tile's reader takes was written by an earlier instruction."""
    out: list[str] = []
    written = np.zeros((max(1, tile.rows), max(1, tile.lanes)), dtype=bool)
    wpr = words_per_row(tile.np_dtype)
    # In id order; an instruction that reads and writes a window reads it first.
    for ins, a, is_write in sorted(items, key=lambda x: (x[0].id, x[2])):
        r0 = 0 if tile.kind == "host" else (a.addr - tile.addr) // wpr
        window = written[max(0, r0) : r0 + a.nrows, a.lane0 : a.lane0 + a.nlanes]
        if is_write:
            window[...] = True
        elif not window.all():
            out.append(
                f"instruction {ins.id} ({ins.opcode}, {ins.node}) reads values of tile {buf} ({tile.tensor}) "
                "that no earlier instruction writes"
            )
    return out


def _accumulation(p: Program) -> list[str]:
    out: list[str] = []
    chains: dict[Access, list[Instruction]] = defaultdict(list)
    for ins in p.instructions:
        if ins.opcode == "mxm.mm" and ins.writes and "k" in ins.attrs:
            chains[ins.writes[0]].append(ins)
    readers: dict[int, list[tuple[Instruction, Access]]] = defaultdict(list)
    for ins in p.instructions:
        for a in ins.reads:
            readers[a.buf].append((ins, a))
    for window, chain in sorted(chains.items(), key=lambda kv: kv[1][0].id):
        chain.sort(key=lambda i: i.id)
        reach = 0
        for ins in chain:
            k0, k1, total = ins.attrs["k"]
            if bool(ins.attrs.get("acc")) != (reach > 0) or k0 != reach:
                out.append(
                    f"MM {ins.id} ({ins.node}) {'accumulates' if ins.attrs.get('acc') else 'writes'} K range "
                    f"[{k0}, {k1}) of tile {window.buf} after K [0, {reach}): an accumulation step is missing"
                )
                break
            reach = k1
        else:
            if reach != chain[-1].attrs["k"][2]:
                out.append(
                    f"MMs into tile {window.buf} ({chain[-1].node}) cover K [0, {reach}) "
                    f"of {chain[-1].attrs['k'][2]}"
                )
        wpr = words_per_row(p.tiles[window.buf].np_dtype) if 0 <= window.buf < len(p.tiles) else 1
        members = {i.id for i in chain}
        for ins, a in readers.get(window.buf, ()):
            if ins.id not in members and ins.id < chain[-1].id and windows_overlap(a, window, wpr):
                out.append(
                    f"instruction {ins.id} ({ins.opcode}, {ins.node}) reads tile {window.buf} "
                    f"before its last accumulation step (MM {chain[-1].id})"
                )
        if len(out) >= MAX_PROBLEMS:
            break
    return out


def _mxm_weights(p: Program) -> list[str]:
    """Each MM computes with its own group's weights on the chip (instructions in time order, with
    load and install timing) and in the runtime (the same state machine in id order)."""
    out: list[str] = []
    planes: dict[str, list[Instruction]] = defaultdict(list)
    for ins in p.instructions:
        if ins.opcode in ("mxm.lw", "mxm.mm") and ins.units:
            planes[ins.unit.split(".")[0]].append(ins)
    for plane, items in sorted(planes.items()):
        # An IW precedes an LW at the same cycle.
        in_time = sorted(items, key=lambda i: (i.start, i.opcode != "mxm.mm", i.id))
        out += _weight_states(plane, in_time, p.target.iw_cycles)
        if not out:
            out += [
                f"{problem} (in id order)"
                for problem in _weight_states(plane, sorted(items, key=lambda i: i.id))
            ]
    return out


def _weight_states(plane: str, items: list[Instruction], iw: int | None = None) -> list[str]:
    """Walk a plane's LWs and MMs through its shadow and active weight buffers; with `iw`, also check
    that loads finish before installs and start after the previous install."""
    out: list[str] = []
    shadow: Instruction | None = None  # LW whose weights wait in the shadow buffer
    active: int | None = None  # weight group installed
    last_install = None
    for ins in items:
        group = ins.attrs.get("group")
        if ins.opcode == "mxm.lw":
            if shadow is not None:
                out.append(
                    f"{plane}: LW {ins.id} overwrites the shadow weights of LW {shadow.id} "
                    "before an MM installed them"
                )
            if iw is not None and last_install is not None and ins.start < last_install + iw:
                out.append(f"{plane}: LW {ins.id} starts before the previous install finished")
            shadow = ins
        elif ins.attrs.get("install"):
            if shadow is None:
                out.append(f"{plane}: MM {ins.id} installs weights but no LW loaded any")
            elif iw is not None and shadow.end > ins.start:
                out.append(
                    f"{plane}: MM {ins.id} installs at cycle {ins.start} "
                    f"weights LW {shadow.id} finishes at {shadow.end}"
                )
            elif shadow.attrs.get("group") != group:
                out.append(
                    f"{plane}: MM {ins.id} installs the weights of LW {shadow.id}, not its own group's"
                )
            active = None if shadow is None else shadow.attrs.get("group")
            shadow, last_install = None, ins.start
        elif active is None:
            out.append(f"{plane}: MM {ins.id} runs with no installed weights")
        elif active != group:
            out.append(
                f"{plane}: MM {ins.id} computes with the weights of another group "
                "(its installing MM is missing)"
            )
    return out


def _outputs_written(p: Program) -> list[str]:
    out: list[str] = []
    written: dict[int, list[Access]] = defaultdict(list)
    for ins in p.instructions:
        for a in ins.writes:
            written[a.buf].append(a)
    for b in p.outputs:
        for tile_id in b.tiles:
            if not 0 <= tile_id < len(p.tiles):
                out.append(f"output {b.name} names unknown tile {tile_id}")
                continue
            t = p.tiles[tile_id]
            if t.kind in ("io", "input", "const"):
                continue  # an input passed through (the host wrote it), or a constant of the image
            if t.kind == "host":
                if not written.get(tile_id):
                    out.append(f"output {b.name} (host tensor) is never written")
                continue
            mask = np.zeros((t.rows, t.lanes), dtype=bool)
            wpr = words_per_row(t.np_dtype)
            for a in written.get(tile_id, ()):
                r0 = (a.addr - t.addr) // wpr
                mask[max(0, r0) : r0 + a.nrows, a.lane0 : a.lane0 + a.nlanes] = True
            if not mask.all():
                out.append(
                    f"output {b.name}: tile {tile_id} has {int((~mask).sum())} values no instruction writes"
                )
    return out


def _constants_read_only(p: Program) -> list[str]:
    return [
        f"instruction {ins.id} ({ins.opcode}) writes constant tile {a.buf} ({p.tiles[a.buf].tensor})"
        for ins in p.instructions
        for a in ins.writes
        if 0 <= a.buf < len(p.tiles) and p.tiles[a.buf].kind == "const"
    ]
