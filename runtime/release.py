"""Giving SRAM pages back to the OS while nothing in the run needs what they hold (opt-in:
LPUC_SRAM_RELEASE=1, trading run time for memory).

The SRAM is anonymous memory that the OS fills with zeros on first touch. Over a run, a program
touches every address some tile ever uses, often several times its peak of live bytes (its SRAM
image): slots are reused, at other addresses and in other slices. A computed tile is live from its
first access (a write: every read takes values that earlier writes of the same tile produced, the
validator proves it) to its last; a page none of whose tiles is live holds nothing the run needs
until its next tile's first write, so it is dropped (MADV_DONTNEED) right after the step ending
its live stretch, and that write faults in a zeroed page. Constants and outputs are kept for good,
inputs from the start of the run. Programs that read values left by a previous run (the plan zeroes
their written SRAM at the start of each run) are left alone.

Tiles are taken whole (a kernel loads and stores whole tiles; a window lies in its tile) and by
their full words (all lanes): a superset of the bytes touched, so no page is dropped early.
"""

from __future__ import annotations

import mmap
import os
from collections import defaultdict

from lpuc.program import Instruction, Program, TileSlot

Release = list[tuple[int, int]]  # (byte offset, length) ranges of pages, page-aligned

# Opt-in (LPUC_SRAM_RELEASE=1): every dropped page costs a zero-filled page fault at its next
# write, 3-10 us a page on the shared bench machine, and programs refault one to several times
# their SRAM per run: SqueezeNet fp32 ran 2x slower (peak run RSS 5.2x -> 2.7x its image and I/O).
ENABLED = os.environ.get("LPUC_SRAM_RELEASE") == "1"
# Even then, only when the program touches this much memory beyond its image.
MIN_SAVING = 4 << 20


def _tile_bytes(t: TileSlot, addresses: int, word_bytes: int) -> tuple[int, int]:
    """[start, end) byte offsets of a tile in the SRAM buffer (slices x addresses x word bytes)."""
    start = (t.slice * addresses + t.addr) * word_bytes
    return start, start + t.words * word_bytes


def page_releases(program: Program, order: list[Instruction], image_bytes: int) -> dict[int, Release]:
    """Step index -> the page ranges to drop after that step (empty when not enabled or not worth
    it)."""
    if not ENABLED:
        return {}
    target = program.target
    addresses, word_bytes, page = target.addresses_per_slice, target.word_bytes, mmap.PAGESIZE
    never = len(order)
    tiles = program.tiles
    live: dict[int, list[int]] = {}  # tile id -> [first step, last step]
    for i, ins in enumerate(order):
        for a in (*ins.reads, *ins.writes):
            span = live.get(a.buf)
            if span is None:
                live[a.buf] = [i, i]
            else:
                span[1] = i
    for b in program.inputs:  # stored before the first step
        for buf in b.tiles:
            live.setdefault(buf, [0, 0])[0] = 0
    kept = {buf for b in program.outputs for buf in b.tiles}
    kept |= {t.id for t in tiles if t.kind in ("const", "io", "output")}
    for buf in kept:
        live[buf] = [0, never]
    by_page: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for buf, (first, last) in live.items():
        t = tiles[buf]
        if t.kind == "host":
            continue
        lo, hi = _tile_bytes(t, addresses, word_bytes)
        for p in range(lo // page, -(-hi // page)):
            by_page[p].append((first, last))
    if len(by_page) * page < image_bytes + MIN_SAVING:
        return {}
    drops: dict[int, list[int]] = defaultdict(list)  # step -> pages dropped after it
    for p, spans in by_page.items():
        spans.sort()
        end = spans[0][1]
        for first, last in spans[1:]:
            if first > end + 1:  # dead in between: dropped after its stretch ends
                drops[end].append(p)
            end = max(end, last)
        if end < never:
            drops[end].append(p)
    releases: dict[int, Release] = {}
    for step in sorted(drops):
        ranges: Release = []
        for p in sorted(drops[step]):
            if ranges and ranges[-1][0] + ranges[-1][1] == p * page:
                ranges[-1] = (ranges[-1][0], ranges[-1][1] + page)
            else:
                ranges.append((p * page, page))
        releases[step] = ranges
    return releases


def drop(buffer: mmap.mmap, ranges: Release) -> None:
    """The pages of `ranges` given back to the OS (read as zeros until written again)."""
    for start, length in ranges:
        buffer.madvise(mmap.MADV_DONTNEED, start, length)
