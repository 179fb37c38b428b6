"""Giving SRAM pages back to the OS once nothing in the run reads them again.

The SRAM is anonymous memory that the OS fills with zeros on first touch. Over a run, a program
touches every address some tile ever uses, often several times its peak of live bytes (its SRAM
image): slots are reused at other addresses, in other slices. A page whose last reader (or writer)
in the run has executed holds nothing the rest of the run needs, so it is dropped
(MADV_DONTNEED) right after that instruction; the next write faults in a zeroed page. Values are
unchanged: every read takes bytes written earlier in the same run (the validator proves it; a
program that reads values left by a previous run gets its written SRAM zeroed at the start of each
run, and dropped pages read as those zeros too). Pages holding constants or outputs are kept.

Reads and writes are taken as whole tiles (a kernel loads and stores whole tiles; a window lies in
its tile): a superset of the bytes touched, so a page is never dropped early.
"""

from __future__ import annotations

import mmap

import numpy as np

from lpuc.dtypes import words_per_row
from lpuc.program import Instruction, Program, TileSlot

Release = list[tuple[int, int]]  # (byte offset, length) ranges of pages, page-aligned

# Dropping pages costs a system call per range and a zero-filled page fault on the next write:
# worth it only when it saves this much memory beyond the image.
MIN_SAVING = 4 << 20


def _tile_bytes(t: TileSlot, addresses: int, word_bytes: int) -> tuple[int, int]:
    """[start, end) byte offsets of a tile in the SRAM buffer (slices x addresses x word bytes)."""
    start = (t.slice * addresses + t.addr) * word_bytes
    return start, start + t.rows * words_per_row(t.np_dtype) * word_bytes


def page_releases(program: Program, order: list[Instruction], image_bytes: int) -> dict[int, Release]:
    """Step index -> the page ranges to drop after that step (empty when not worth it)."""
    target = program.target
    addresses, word_bytes, page = target.addresses_per_slice, target.word_bytes, mmap.PAGESIZE
    pages = -(-target.num_slices * addresses * word_bytes // page)
    last = np.full(pages, -1, dtype=np.int64)  # the last step touching each page
    never = len(order)  # pinned: kept for good

    def pages_of(t: TileSlot) -> slice:
        lo, hi = _tile_bytes(t, addresses, word_bytes)
        return slice(lo // page, -(-hi // page))

    tiles = program.tiles
    for i, ins in enumerate(order):
        for a in (*ins.reads, *ins.writes):
            t = tiles[a.buf]
            if t.kind != "host":
                last[pages_of(t)] = i  # (ascending i: the latest wins)
    for b in program.inputs:  # stored before the first step: a page no step reads stays as it is
        for buf in b.tiles:
            if tiles[buf].kind != "host":
                p = pages_of(tiles[buf])
                last[p] = np.maximum(last[p], 0)
    pinned = [t for t in tiles if t.kind == "const"]
    pinned += [tiles[buf] for b in program.outputs for buf in b.tiles if tiles[buf].kind != "host"]
    for t in pinned:
        last[pages_of(t)] = never
    droppable = np.flatnonzero((last >= 0) & (last < never))
    touched = np.count_nonzero(last >= 0) * page
    if len(droppable) * page < MIN_SAVING or touched < image_bytes + MIN_SAVING:
        return {}
    steps = last[droppable]
    by_step = np.lexsort((droppable, steps))
    droppable, steps = droppable[by_step], steps[by_step]
    # a new range wherever the step changes or the pages stop being consecutive
    breaks = np.flatnonzero((np.diff(steps) != 0) | (np.diff(droppable) != 1)) + 1
    releases: dict[int, Release] = {}
    for run in np.split(np.arange(len(droppable)), breaks):
        first, n = int(droppable[run[0]]), len(run)
        releases.setdefault(int(steps[run[0]]), []).append((first * page, n * page))
    return releases


def drop(buffer: mmap.mmap, ranges: Release) -> None:
    """The pages of `ranges` given back to the OS (read as zeros until written again)."""
    for start, length in ranges:
        buffer.madvise(mmap.MADV_DONTNEED, start, length)
