"""Stacked results: a fused epilogue's wide result cut into shorter tiles on several slices.

An MM with a fused map (lpuc.lowering.epilogue) writes the map's result rows into one tile, on one
slice, whose banks take `mem.banks` words per cycle; a 4-byte result is four words a row, so the int8
GEMM's dequantizing epilogue wrote a row every other cycle and held its plane twice as long as its
rows stream in (+288 cycles per 288-row chain of [2304x4096]x[4096x320]). Cut into tiles of
1/`split` the rows (placement puts them on different slices), the MM writes its result rows into
them in order, as an MM without an epilogue writes a stacked int32 result (lpuc.cost charges MEM
words per slice, and the windows share the result's stream ids). Costs are unchanged rules; only
where the words live moves.

Only tensors whose every tile is the whole result of one fused MM and that no op reads (a model
output): their readers would cut their own work at the shorter tiles.
"""

from __future__ import annotations

from dataclasses import replace

from lpuc.dtypes import words_per_row
from lpuc.ir.tiled import Ref, TiledProgram, TileOp, copy_with
from lpuc.lowering.epilogue import without_unused_tiles
from lpuc.target import Target


def stack_epilogue_results(tiled: TiledProgram, target: Target) -> TiledProgram:
    """The program with the results of write-bound epilogues stacked over several tiles (module doc)."""
    writer: dict[int, list[TileOp]] = {}
    read: set[int] = set()
    for op in tiled.ops:
        read.update(r.buf for r in op.reads)
        for w in op.writes:
            writer.setdefault(w.buf, []).append(op)
    buffers = list(tiled.buffers)
    tensors = dict(tiled.tensors)
    holders: dict[int, int] = {}  # tile -> tensors holding it (a view shares its tiles)
    for t in tiled.tensors.values():
        for b in t.tiles():
            holders[b] = holders.get(b, 0) + 1
    new_writes: dict[int, tuple[Ref, ...]] = {}  # op id -> its stacked result windows
    replaced: set[int] = set()
    for name, t in tiled.tensors.items():
        if any(holders[b] > 1 for b in t.tiles()):
            continue
        split = _split(tiled, target, t.tiles(), writer, read)
        if split < 2 or t.block_rows % split:
            continue
        grid = []
        for row in t.grid:
            grid.append([])
            for b in row:
                old = tiled.buffers[b]
                rows = old.rows // split
                parts = []
                for k in range(split):
                    parts.append(len(buffers))
                    buffers.append(copy_with(old, id=len(buffers), rows=rows, r0=old.r0 + k * rows))
                grid[-1].extend(parts)
                new_writes[writer[b][0].id] = tuple(Ref(p, 0, rows, 0, old.lanes) for p in parts)
                replaced.add(b)
        # Each tile of the grid becomes `split` row blocks: regroup the new tiles by row block.
        cols = len(t.grid[0]) if t.grid else 0
        regrouped = [
            [grid[rb][cb * split + k] for cb in range(cols)] for rb in range(len(grid)) for k in range(split)
        ]
        tensors[name] = replace(t, block_rows=t.block_rows // split, grid=regrouped)
    if not new_writes:
        return tiled
    ops = [copy_with(op, writes=new_writes[op.id]) if op.id in new_writes else op for op in tiled.ops]
    return without_unused_tiles(replace(tiled, tensors=tensors, buffers=buffers, ops=ops), replaced)


def _split(tiled: TiledProgram, target: Target, tiles: list[int], writer, read: set[int]) -> int:
    """Into how many tiles each of `tiles` is cut (1: left alone): as many as the fused MMs writing
    them need slices to keep up with their rows."""
    if not tiles or any(b in read for b in tiles):
        return 1
    splits = set()
    for b in tiles:
        ops, buf = writer.get(b, []), tiled.buffers[b]
        if len(ops) != 1 or "epilogue" not in ops[0].attrs or len(ops[0].writes) != 1:
            return 1
        w = ops[0].writes[0]
        if (w.row0, w.nrows, w.lane0, w.nlanes) != (0, buf.rows, 0, buf.lanes):
            return 1
        cycles_per_row = target.mxm_mode(ops[0].attrs["precision"]).cycles_per_row
        split = -(-words_per_row(buf.dtype) // (target.mem_banks * cycles_per_row))
        if buf.rows % split:
            return 1
        splits.add(split)
    return splits.pop() if len(splits) == 1 else 1
