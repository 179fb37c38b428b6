"""Proof that a program obeys the chip's rules; used by the compiler, the runtime and tests.

The program's meaning is its instructions executed one after another in id order (the runtime does
exactly that). The validator proves the timed schedule computes the same thing and that the chip
could run it. Checked, each as its own rule:
1. units: every opcode is known and sits in a queue of its unit kind; every unit exists, runs one
   instruction at a time (an MXM plane is held for its MM's occupancy, lpuc.cost.occupancy; every
   other unit for the whole duration), and the program uses no more queues than the chip has;
2. costs (validate_costs.py): every instruction books the VXM ALUs, MEM ports and streams lpuc.cost
   says it holds, its duration is at least what the cost model gives, and its work matches the
   windows it touches;
3. bounds: every tile slot and every access lies inside SRAM and inside its tile's slot;
4. SRAM: no two tiles that are live at the same time share an address (identical constants may);
5. order: of two instructions touching overlapping windows, one of them writing, the one with the
   lower id ends before the other starts; every value a computed tile's reader takes was written
   by an earlier instruction;
6. accumulation (validate_mxm.py): the matmuls accumulating into a window cover its K range in
   order, and nothing else reads the window before the last of them;
7. MXM weights and accumulators (validate_mxm.py): every MM computes with the weights its own
   group's LW loaded on its plane, and a partial sum kept in a plane's accumulators is continued by
   the plane's next MM;
8. outputs: every model output is written in full;
9. constants are never written.
"""

from __future__ import annotations

import bisect
import heapq
from collections import defaultdict
from operator import attrgetter

import numpy as np

from lpuc import cost
from lpuc.cost import QUEUE_KIND, has_epilogue, unit_kind
from lpuc.dtypes import words_per_row
from lpuc.errors import ScheduleError
from lpuc.program import Access, Instruction, Program, TileSlot, windows_overlap
from lpuc.schedule.liveness import live_intervals
from lpuc.schedule.validate_costs import booked_ports, check_costs, derived
from lpuc.schedule.validate_mxm import check_accumulation, check_accumulators, check_weights

MAX_PROBLEMS = 20
# Unit kinds an instruction may occupy besides its queue: ports and streams, and the VXM's ALUs for
# a map or kernel (or an MM's fused map).
_EXTRA = frozenset({"PORT", "STREAM"})
_EXTRA_WITH_VXM = _EXTRA | {"VXM"}


def validate(program: Program) -> None:
    problems: list[str] = []
    rules = (
        _units,
        check_costs,
        _bounds,
        _sram_overlap,
        _order,
        check_accumulation,
        check_accumulators,
        check_weights,
        _outputs_written,
        _constants_read_only,
    )
    for rule in rules:  # every rule runs: a mutation test sees each rule's verdict
        problems += rule(program)[:MAX_PROBLEMS]
    if problems:
        raise ScheduleError(problems)


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
        vxm_ok = ins.opcode.startswith("vxm.") or has_epilogue(ins.opcode, ins.work)  # a fused map's ALUs
        extra_ok = _EXTRA_WITH_VXM if vxm_ok else _EXTRA
        queue = ins.unit
        for u in ins.units:
            if u not in known:
                out.append(f"instruction {ins.id} ({ins.opcode}) runs on unknown unit {u}")
            elif u != queue and unit_kind(u) not in extra_ok:
                out.append(f"instruction {ins.id} ({ins.opcode}) also occupies {u}, which it cannot use")
            busy[u].append(ins)
    queues = {ins.unit for ins in p.instructions if ins.units}
    if len(queues) > p.target.instruction_queues:
        out.append(
            f"the program uses {len(queues)} instruction queues, "
            f"{p.target.name} has {p.target.instruction_queues}"
        )
    for u, items in sorted(busy.items()):
        items.sort(key=attrgetter("start", "id"))
        plane = unit_kind(u) == "MXM"  # only an MM frees its unit (its plane) before its end
        for a, b in zip(items, items[1:]):
            # (An MM holds its plane no longer than its end, so only an overlap in time asks for how long.)
            a_end = held_until(p, a, u) if plane and b.start < a.end else a.end
            if b.start < a_end:
                out.append(
                    f"unit {u} double-booked: instruction {a.id} ({a.opcode}) [{a.start}, {a_end}) "
                    f"overlaps instruction {b.id} ({b.opcode}) [{b.start}, {held_until(p, b, u)})"
                )
                if len(out) >= MAX_PROBLEMS:
                    return out
    return out


def held_until(p: Program, ins: Instruction, unit: str) -> int:
    """When `ins` frees `unit`: an MM frees its plane once its rows are in, the rest at its end."""
    if (
        ins.opcode != "mxm.mm"
        or unit != ins.unit
        or not all(0 <= a.buf < len(p.tiles) for a in ins.reads + ins.writes)
    ):
        return ins.end
    facts = derived(p, ins)
    if facts[3] is None:
        facts[3] = _held_until(p, ins, *facts[2])
    return facts[3]


def _held_until(p: Program, ins: Instruction, reads: list, writes: list) -> int:
    ports = booked_ports(p, ins, reads, writes)
    if not all(ports.values()):
        return ins.end  # refused by the cost rule
    busy = cost.occupancy(
        p.target,
        ins.opcode,
        ins.unit,
        ins.work,
        reads,
        writes,
        ins.attrs.get("precision", p.precision),
        bool(ins.attrs.get("install")),
        ports,
    )
    return ins.start + min(busy, ins.duration)


def _bounds(p: Program) -> list[str]:
    out: list[str] = []
    capacity, slices = p.target.addresses_per_slice, p.target.num_slices
    for t in p.tiles:
        if t.kind == "host":
            continue
        if not 0 <= t.slice < slices:
            out.append(f"tile {t.id} ({t.tensor}) in slice {t.slice}, target has {slices}")
        if t.lane < 0 or t.lane + t.lanes > p.target.lanes or (t.lane and t.kind != "const"):
            out.append(
                f"tile {t.id} ({t.tensor}) at lanes [{t.lane}, {t.lane + t.lanes}): only constant tiles "
                f"may start past lane 0, and none may end past lane {p.target.lanes}"
            )
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
    if a.lane0 < t.lane or a.nlanes <= 0 or a.lane0 + a.nlanes > t.lane + t.lanes:
        return (
            f"lanes [{a.lane0}, {a.lane0 + a.nlanes}) outside tile {t.id} ({t.tensor}) at lanes "
            f"[{t.lane}, {t.lane + t.lanes})"
        )
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
        if not _may_share_live_addresses(tiles, life):
            continue
        tiles.sort(key=lambda t: (t.addr, t.id))
        for i, a in enumerate(tiles):
            for j in range(i + 1, len(tiles)):
                b = tiles[j]
                if b.addr >= a.addr + a.words:
                    break
                if a.const_key is not None and a.const_key == b.const_key and a.addr == b.addr:
                    continue  # identical constant tiles share one slot
                if a.lane + a.lanes <= b.lane or b.lane + b.lanes <= a.lane:
                    continue  # side by side in the same words (packed constant tiles)
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


def _may_share_live_addresses(tiles: list[TileSlot], life: list[tuple[int, int]]) -> bool:
    """Whether two of one slice's tiles might overlap in address and lifetime (other than identical
    constants sharing a slot), so that only a slice that may break the rule gets the pair-by-pair walk
    that words its problems. Errs only towards True."""
    found = _live_overlap_by_sweep(tiles, life)
    return _live_overlap_by_pairs(tiles, life) if found is None else found


def _live_overlap_by_sweep(tiles: list[TileSlot], life: list[tuple[int, int]]) -> bool | None:
    """_may_share_live_addresses in time order: the tiles live at a cycle must lie apart in address,
    so each tile is checked against its neighbours in address among those live when it starts
    (n log n; every pair at once grows with the square of a slice's tiles, which grows with depth).
    None where this walk does not apply (empty tiles or lifetimes; one constant slot with two
    lifetimes): the caller checks every pair."""
    entries: dict[tuple, tuple[int, int, int, int]] = {}  # one per shared constant slot
    for t in tiles:
        start, end = life[t.id]
        if t.words <= 0 or end <= start:
            return None
        key = (t.const_key, t.addr) if t.const_key else (None, t.id)
        entry = (start, end, t.addr, t.addr + t.words)
        if entries.setdefault(key, entry) != entry:
            return None
    live_lo: list[int] = []  # the live tiles' address ranges, sorted and disjoint
    live_hi: list[int] = []
    ends: list[tuple[int, int, int]] = []  # (end, lo, hi) of the live tiles: a heap
    for start, end, lo, hi in sorted(entries.values()):
        while ends and ends[0][0] <= start:  # no longer live: it ended by this tile's start
            _, old_lo, _ = heapq.heappop(ends)
            i = bisect.bisect_left(live_lo, old_lo)
            del live_lo[i], live_hi[i]
        i = bisect.bisect_left(live_lo, lo)
        if (i and live_hi[i - 1] > lo) or (i < len(live_lo) and live_lo[i] < hi):
            return True
        live_lo.insert(i, lo)
        live_hi.insert(i, hi)
        heapq.heappush(ends, (end, lo, hi))
    return False


def _live_overlap_by_pairs(tiles: list[TileSlot], life: list[tuple[int, int]]) -> bool:
    """_may_share_live_addresses with every pair at once (numpy, in blocks)."""
    n = len(tiles)
    addr = np.array([t.addr for t in tiles], dtype=np.int64)
    top = addr + np.array([t.words for t in tiles], dtype=np.int64)
    start = np.array([life[t.id][0] for t in tiles], dtype=np.int64)
    end = np.array([life[t.id][1] for t in tiles], dtype=np.int64)
    first_with_key: dict[str, int] = {}
    slot = np.array(  # tiles with one constant key share an id; others have their own
        [first_with_key.setdefault(t.const_key, i) if t.const_key else -1 - i for i, t in enumerate(tiles)]
    )
    rows = max(1, (1 << 22) // max(1, n))  # pairs in blocks of ~4M
    for r0 in range(0, n, rows):
        a = slice(r0, r0 + rows)
        a_in_b = (addr <= addr[a, None]) & (addr[a, None] < top)
        b_in_a = (addr[a, None] <= addr) & (addr < top[a, None])
        clash = (a_in_b | b_in_a) & (start[a, None] < end) & (start < end[a, None])
        clash &= ~((slot[a, None] == slot) & (addr[a, None] == addr))  # a shared constant slot
        own = np.arange(r0, min(n, r0 + rows))
        clash[own - r0, own] = False  # a tile and itself
        if clash.any():
            return True
    return False


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
        in_order = _accesses_in_time_order(items)
        for ins, a, is_write in [] if in_order else items:
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
        if tile.kind not in ("const", "input", "io") and tile.const_key is None:  # or a host table
            out += _reads_covered(buf, tile, items)
    return out


def _accesses_in_time_order(items: list[tuple[Instruction, Access, bool]]) -> bool:
    """Whether, taking every window of the tile to overlap every other, each access still ends before
    any later-id write starts and starts after every earlier-id write ended: then no pair breaks the
    order rule, which is checked pair by pair (quadratic in the tile's accesses) only otherwise."""
    by_id = sorted(items, key=lambda x: x[0].id)
    any_end = write_end = -1  # latest end of the earlier-id accesses / writes
    i = 0
    while i < len(by_id):
        j = i
        while j < len(by_id) and by_id[j][0].id == by_id[i][0].id:  # one instruction's accesses
            j += 1
        ins = by_id[i][0]
        writes = any(x[2] for x in by_id[i:j])
        if ins.start < write_end or (writes and ins.start < any_end):
            return False
        any_end = max(any_end, ins.end)
        if writes:
            write_end = max(write_end, ins.end)
        i = j
    return True


def _reads_covered(buf: int, tile: TileSlot, items: list[tuple[Instruction, Access, bool]]) -> list[str]:
    """Every value a computed tile's reader takes was written by an earlier instruction."""
    out: list[str] = []
    written = np.zeros((max(1, tile.rows), max(1, tile.lanes)), dtype=bool)
    wpr = words_per_row(tile.np_dtype)
    # In id order; an instruction that reads and writes a window reads it first.
    for ins, a, is_write in sorted(items, key=lambda x: (x[0].id, x[2])):
        r0 = 0 if tile.kind == "host" else (a.addr - tile.addr) // wpr
        window = written[max(0, r0) : r0 + a.nrows, a.lane0 - tile.lane : a.lane0 - tile.lane + a.nlanes]
        if is_write:
            window[...] = True
        elif not window.all():
            out.append(
                f"instruction {ins.id} ({ins.opcode}, {ins.node}) reads values of tile {buf} ({tile.tensor}) "
                "that no earlier instruction writes"
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
                mask[max(0, r0) : r0 + a.nrows, a.lane0 - t.lane : a.lane0 - t.lane + a.nlanes] = True
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
