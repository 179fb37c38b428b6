"""MXM epilogues: a VXM map fused into the MM that produces its input (lowering strategy
`mxm_epilogues`).

On the chip an MM's result rows leave the plane on streams; the VXM can transform them in flight
(dequantize, add a bias or a residual, apply an activation, requantize) so that only the map's
results are written to SRAM. Here the MM becomes a compound instruction: opcode mxm.mm with
attrs["epilogue"] = {"expr", "operands", "result", "node"}; its reads are the activation window and
then the map's other operands, its write is the map's result window. Operand index 0 of the
epilogue is the MM's result, cast to `result` (the dtype of the tile it replaces, so the map computes
on the very values it read from SRAM before); index k >= 1 is reads[k]. Its work gains the map's ALU
ops and elementwise ops and `relay_words`, the words per result row the plane streams to the VXM
(lpuc.cost charges the fused rule from these).

A map fuses into the MM that writes one of its operand windows when:
- that MM is the only writer of the tile, writes exactly the window the map reads, and writes its
  final sum (not `keep`, not `acc`: SRAM accumulation reads the tile back);
- the map is the tile's only reader (then the tile disappears from SRAM) and reads it once;
- the map is not the K-split sum of partial results (those maps belong to the MM's own node: the
  MMs write partials, not the final sum);
- the map streams one 32-bit word per value (no 64-bit passes), row for row with the MM;
- the map's other operands are ready before the MM's weight group starts (their writers come
  earlier in program order), and nothing between the MM and the map touches the map's result:
  the fused op takes the MM's place in program order, and its group is scheduled as a whole;
- fusing pays: the MM alone would write its result more slowly than its rows stream in (an int8
  MM's int32 rows: 4 words per row through a slice's 2 banks), or the map is light enough that
  every plane can stream an epilogue at once (ALU ops x planes <= the VXM's ALUs). A heavier map
  on an MM that is not write-bound stays apart: fused, it would hold its ALUs for the MM's whole
  duration and the planes would take turns for them (GPT-2's GELU: 11 ALUs of 16).
Of several candidate MMs (a residual add of two convolutions) the latest legal one is taken.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from dataclasses import replace

from lpuc.dtypes import dtype_name, words_per_row
from lpuc.ir.tiled import Ref, TiledProgram, TileOp, copy_with
from lpuc.target import Target


def fuse_epilogues(tiled: TiledProgram, target: Target) -> TiledProgram:
    """The program with every map that can be fused into its producing MM fused (see module doc)."""
    ops = tiled.ops
    index = AccessIndex(ops)
    group_start = group_starts(ops)
    fused: dict[int, tuple[TileOp, int]] = {}  # mm id -> (map, read index of the MM's result)
    maps_done: set[int] = set()
    for m in ops:
        if m.opcode != "vxm.map" or has_stacked_operand(m):
            continue
        best = None
        for j, r in enumerate(m.reads):
            mm = fusable_producer(tiled, index, group_start, m, j, r)
            if mm is not None and not pays(tiled, target, mm, m.work.alu_ops):
                mm = None
            if mm is not None and mm.id not in fused and (best is None or mm.id > best[0].id):
                best = (mm, j)
        if best is not None:
            fused[best[0].id] = (m, best[1])
            maps_done.add(m.id)
    if not fused:
        return tiled
    new_ops = []
    for op in ops:
        if op.id in maps_done:
            continue
        if op.id in fused:
            m, j = fused[op.id]
            op = _fused_op(tiled, op, m, j)
        new_ops.append(copy_with(op, id=len(new_ops)))
    return without_unused_tiles(replace(tiled, ops=new_ops), {ops[i].writes[0].buf for i in fused})


def fusable_producer(
    tiled: TiledProgram, index: AccessIndex, group_start: dict[int, int], m: TileOp, j: int, r: Ref
) -> TileOp | None:
    """The MM whose result window `r` (read j of map m) m can be fused into, or None (see module doc)."""
    buf = tiled.buffers[r.buf]
    if buf.kind != "temp":
        return None
    writers, readers = index.writers[r.buf], index.readers[r.buf]
    if len(writers) != 1 or len(readers) != 1 or readers[0][0] != m.id:
        return None
    mm = tiled.ops[writers[0][0]]
    if (
        mm.opcode != "mxm.mm"
        or mm.attrs.get("keep")
        or mm.attrs.get("acc")
        or mm.writes != (r,)
        or mm.node == m.node
        or m.work.vectors != r.nrows
        or len(m.writes) != 1
        or (m.writes[0].nrows, m.writes[0].nlanes) != (r.nrows, r.nlanes)
    ):
        return None
    first = group_start[mm.id]
    for k, q in enumerate(m.reads):
        if k != j and index.touched(q, first, m.id, writes_only=True):
            return None
    if index.touched(m.writes[0], mm.id, m.id, writes_only=False):
        return None
    return mm


def has_stacked_operand(m: TileOp) -> bool:
    """A map reading an operand stacked from several windows (lpuc.lowering.stacked_rows): its
    operand indices do not map one to one onto its reads, so it is fused into nothing."""
    return any(isinstance(k, list) for k in m.attrs.get("operands", ()))


def pays(tiled: TiledProgram, target: Target, mm: TileOp, alu_ops: int) -> bool:
    """Whether an epilogue of `alu_ops` ALU ops on `mm` is worth its ALUs (see module doc)."""
    result_words = mm.work.relay_words or words_per_row(tiled.buffers[mm.writes[0].buf].dtype)
    write_bound = result_words > target.mem_banks * target.mxm_mode(mm.attrs["precision"]).cycles_per_row
    return write_bound or alu_ops * target.num_mxm <= target.vxm_alus


def _fused_op(tiled: TiledProgram, mm: TileOp, m: TileOp, j: int) -> TileOp:
    """`mm` with map `m` (whose read j is mm's result) applied to its result rows."""
    extra = [q for k, q in enumerate(m.reads) if k != j]
    position = {k: 0 if k == j else 1 + k - (k > j) for k in range(len(m.reads))}  # 0: the MM's result
    operands = [None if k is None else position[k] for k in m.attrs["operands"]]
    result = tiled.buffers[mm.writes[0].buf].dtype
    epilogue = {"expr": m.attrs["expr"], "operands": operands, "result": dtype_name(result), "node": m.node}
    work = replace(
        mm.work, alu_ops=m.work.alu_ops, elem_ops=m.work.elem_ops, relay_words=words_per_row(result)
    )
    return replace(
        mm, reads=(mm.reads[0], *extra), writes=m.writes, work=work, attrs={**mm.attrs, "epilogue": epilogue}
    )


def group_starts(ops: list[TileOp]) -> dict[int, int]:
    """MM id -> id of the first op of its chain or weight group (scheduled as a whole with it)."""
    first: dict[tuple[str, int], int] = {}
    out = {}
    for op in ops:
        if op.group < 0:
            continue
        key = ("chain", op.chain) if op.chain >= 0 else ("group", op.group)
        out[op.id] = first.setdefault(key, op.id)
    return out


class AccessIndex:
    """Per tile, the ops that read and write it (in id order, with the window)."""

    def __init__(self, ops: list[TileOp]) -> None:
        self.readers: dict[int, list[tuple[int, Ref]]] = defaultdict(list)
        self.writers: dict[int, list[tuple[int, Ref]]] = defaultdict(list)
        for op in ops:
            for r in op.reads:
                self.readers[r.buf].append((op.id, r))
            for w in op.writes:
                self.writers[w.buf].append((op.id, w))

    def touched(self, window: Ref, lo: int, hi: int, writes_only: bool) -> bool:
        """Whether an op with id in [lo, hi) writes (or reads, unless writes_only) a window
        overlapping `window`."""
        lists = [self.writers[window.buf]] + ([] if writes_only else [self.readers[window.buf]])
        for accesses in lists:
            at = bisect.bisect_left(accesses, lo, key=lambda a: a[0])
            for op_id, ref in accesses[at:]:
                if op_id >= hi:
                    break
                if ref.overlaps(window):
                    return True
        return False


def without_unused_tiles(tiled: TiledProgram, candidates: set[int]) -> TiledProgram:
    """Drop the result tiles of fused MMs (no op touches them any more), renumbering the others."""
    used = {r.buf for op in tiled.ops for r in (*op.reads, *op.writes)}
    dropped = {b for b in candidates if b not in used}
    if not dropped:
        return tiled
    new_id, buffers = {}, []
    for buf in tiled.buffers:
        if buf.id not in dropped:
            new_id[buf.id] = len(buffers)
            buffers.append(copy_with(buf, id=len(buffers)))

    def moved(r: Ref) -> Ref:
        # Ref's constructor, not dataclasses.replace: this runs for every window of every op.
        return Ref(new_id[r.buf], r.row0, r.nrows, r.lane0, r.nlanes)

    ops = [
        copy_with(op, reads=tuple(map(moved, op.reads)), writes=tuple(map(moved, op.writes)))
        for op in tiled.ops
    ]
    tensors = {}
    for name, t in tiled.tensors.items():
        if any(b in dropped for b in t.tiles()):
            continue  # a fused MM's result (or a view of it): no longer stored
        tensors[name] = replace(t, grid=[[new_id[b] for b in row] for row in t.grid])
    return replace(tiled, tensors=tensors, buffers=buffers, ops=ops)
