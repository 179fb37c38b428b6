"""The critical path of a scheduled program: the chain of instructions that decides its length.

Walk back from the instruction that ends last. At each step the predecessor is, among
- the instructions that write a window this one reads (and finished by its start),
- for an MXM install, the weight load (LW) on its plane that finished by its start,
- the previous instruction on each unit it occupies (on an MXM plane the previous MM may still be
  draining its results: the plane takes in the next MM's rows meanwhile),
the one that finished latest (ties: the higher id, so the result never depends on list order).
Whatever an instruction waited for beyond that predecessor is transport or scheduler slack.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from operator import attrgetter

from lpuc.dtypes import words_per_row
from lpuc.program import Access, Instruction, Program, windows_overlap

_ISSUE_ORDER = attrgetter("start", "id")


def critical_path(program: Program) -> list[Instruction]:
    """Instructions on the critical path, first to last."""
    if not program.instructions:
        return []
    graph = _Predecessors(program)
    ins = max(program.instructions, key=lambda i: (i.end, i.id))
    path = [ins]
    while (ins := graph.latest(ins)) is not None:
        path.append(ins)
    path.reverse()
    return path


class _Predecessors:
    def __init__(self, program: Program) -> None:
        self.tiles = program.tiles
        # Per tile: its writes sorted by end cycle, so the latest finished ones are found by bisect.
        writes: dict[int, list[tuple[int, int, Instruction, Access]]] = defaultdict(list)
        self.queue: dict[str, list[Instruction]] = defaultdict(list)
        self.lw: dict[str, list[Instruction]] = defaultdict(list)
        for ins in program.instructions:
            for a in ins.writes:
                writes[a.buf].append((ins.end, ins.id, ins, a))
            for u in ins.units:
                self.queue[u].append(ins)
            if ins.opcode == "mxm.lw":
                self.lw[ins.unit.split(".")[0]].append(ins)
        for items in writes.values():
            items.sort(key=lambda w: (w[0], w[1]))
        self.writes = dict(writes)
        self.write_ends = {b: [w[0] for w in items] for b, items in self.writes.items()}
        for items in self.queue.values():
            items.sort(key=_ISSUE_ORDER)
        self.lw_ends = {}
        for plane, items in self.lw.items():
            items.sort(key=lambda i: (i.end, i.id))
            self.lw_ends[plane] = [i.end for i in items]

    def latest(self, ins: Instruction) -> Instruction | None:
        candidates = [self._writer(ins, a) for a in ins.reads]
        candidates += [self._previous_on(u, ins) for u in ins.units]
        if ins.opcode == "mxm.mm" and ins.attrs.get("install"):
            plane = ins.unit.split(".")[0]
            ends = self.lw_ends.get(plane, [])
            k = bisect.bisect_right(ends, ins.start)
            candidates.append(self.lw[plane][k - 1] if k else None)
        found = [c for c in candidates if c is not None and c.id != ins.id]
        return max(found, key=lambda c: (c.end, c.id), default=None)

    def _writer(self, ins: Instruction, a: Access) -> Instruction | None:
        """The latest-finishing earlier write overlapping window `a`."""
        items = self.writes.get(a.buf)
        if not items:
            return None
        wpr = words_per_row(self.tiles[a.buf].np_dtype)
        k = bisect.bisect_right(self.write_ends[a.buf], ins.start)
        for j in range(k - 1, -1, -1):  # latest first: the first overlap wins
            w_ins, w = items[j][2], items[j][3]
            if w_ins.id != ins.id and windows_overlap(a, w, wpr):
                return w_ins
        return None

    def _previous_on(self, unit: str, ins: Instruction) -> Instruction | None:
        # (Keyed bisect: a (start, id) list per unit costs more to build than the path's searches.)
        queue = self.queue[unit]
        k = bisect.bisect_left(queue, (ins.start, ins.id), key=_ISSUE_ORDER)
        return queue[k - 1] if k else None
