"""Dependencies between tile ops, derived from the tile windows they read and write.

Tile ops are listed in a valid sequential order, so an op depends on every earlier op whose window
overlaps one of its own where at least one side writes (read-after-write, write-after-read,
write-after-write). Writes that a later write fully covers are forgotten: ordering on the later
write implies ordering on them.
"""

from __future__ import annotations

from lpuc.ir.tiled import Ref, TiledProgram


def _covers(a: Ref, b: Ref) -> bool:
    return (
        a.row0 <= b.row0
        and b.row0 + b.nrows <= a.row0 + a.nrows
        and a.lane0 <= b.lane0
        and b.lane0 + b.nlanes <= a.lane0 + a.nlanes
    )


def dependencies(program: TiledProgram) -> list[set[int]]:
    """preds[i] = ids of the ops op i must wait for."""
    writers: dict[int, list[tuple[int, Ref]]] = {}
    readers: dict[int, list[tuple[int, Ref]]] = {}
    preds: list[set[int]] = []
    for op in program.ops:
        deps: set[int] = set()
        for r in op.reads:
            deps.update(o for o, w in writers.get(r.buf, ()) if w.overlaps(r))
        for w in op.writes:
            deps.update(o for o, x in writers.get(w.buf, ()) if x.overlaps(w))
            deps.update(o for o, x in readers.get(w.buf, ()) if x.overlaps(w))
        deps.discard(op.id)
        preds.append(deps)
        for w in op.writes:
            writers[w.buf] = [(o, x) for o, x in writers.get(w.buf, ()) if not _covers(w, x)] + [(op.id, w)]
            readers[w.buf] = [(o, x) for o, x in readers.get(w.buf, ()) if not _covers(w, x)]
        for r in op.reads:
            readers.setdefault(r.buf, []).append((op.id, r))
    return preds
