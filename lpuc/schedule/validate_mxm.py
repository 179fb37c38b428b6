"""Validator rules for the MXM: accumulation chains are complete, every MM computes with the weights
its own group's LW loaded, and partial sums kept in a plane's accumulators are continued by the next
MM on that plane, on the chip (time order) and in the runtime (id order)."""

from __future__ import annotations

from collections import defaultdict

from lpuc.dtypes import words_per_row
from lpuc.program import Access, Instruction, Program, windows_overlap


def check_accumulation(p: Program) -> list[str]:
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
            k0 = ins.attrs.get("k_from", k0) if ins.attrs.get("from_acc") else k0  # the plane summed the rest
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
    return out


def check_weights(p: Program) -> list[str]:
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


def check_accumulators(p: Program) -> list[str]:
    """A partial sum an MM keeps in its plane's accumulators is taken by the next MM on that plane
    (same rows and lanes, the K range continuing where it stopped), in time order and in id order;
    no MM discards one and none is left unwritten."""
    out: list[str] = []
    planes: dict[str, list[Instruction]] = defaultdict(list)
    for ins in p.instructions:
        if ins.opcode == "mxm.mm" and ins.units:
            planes[ins.unit].append(ins)
    for plane, mms in sorted(planes.items()):
        out += _accumulator_states(plane, sorted(mms, key=lambda i: (i.start, i.id)))
        if not out:
            out += [
                f"{problem} (in id order)"
                for problem in _accumulator_states(plane, sorted(mms, key=lambda i: i.id))
            ]
    return out


def _accumulator_states(plane: str, mms: list[Instruction]) -> list[str]:
    out: list[str] = []
    held: Instruction | None = None  # the MM whose partial sum the accumulators hold
    k_from = reach = 0
    for ins in mms:
        k0, k1, _ = ins.attrs.get("k", (0, 0, 0))
        rows = ins.reads[0].nrows if ins.reads else -1
        lanes = (
            ins.attrs.get("lanes") if ins.attrs.get("keep") else (ins.writes[0].nlanes if ins.writes else -1)
        )
        if ins.attrs.get("from_acc"):
            if held is None:
                out.append(
                    f"{plane}: MM {ins.id} ({ins.node}) adds the accumulators, but no MM kept a sum there"
                )
            elif (rows, lanes) != (held.reads[0].nrows, held.attrs.get("lanes")) or k0 != reach:
                out.append(
                    f"{plane}: MM {ins.id} ({ins.node}) continues the sum MM {held.id} kept, but its "
                    f"{rows}x{lanes} result over K from {k0} does not match {held.reads[0].nrows}x"
                    f"{held.attrs.get('lanes')} over K [{k_from}, {reach})"
                )
            elif ins.attrs.get("k_from") != k_from:
                out.append(
                    f"{plane}: MM {ins.id} ({ins.node}) claims K from {ins.attrs.get('k_from')}, "
                    f"the sum starts at {k_from}"
                )
        elif held is not None:
            out.append(f"{plane}: MM {ins.id} ({ins.node}) discards the partial sum MM {held.id} kept")
        if ins.attrs.get("keep"):
            k_from = k_from if ins.attrs.get("from_acc") and held is not None else k0
            held, reach = ins, k1
        else:
            held = None
    if held is not None:
        out.append(f"{plane}: the partial sum MM {held.id} ({held.node}) kept is never written")
    return out
