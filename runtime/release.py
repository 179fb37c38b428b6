"""Giving SRAM pages back to the OS while nothing in the run needs what they hold: by default only
few drops, those that keep the SRAM resident within CAP times the program's SRAM image, every
dead stretch with LPUC_SRAM_RELEASE=1 (trading more run time for memory), none with
LPUC_SRAM_RELEASE=0.

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

import heapq
import mmap
import os

import numpy as np

from lpuc.program import Instruction, Program, TileSlot

Release = list[tuple[int, int]]  # (byte offset, length) ranges of pages, page-aligned

# Every dropped page costs a zero-filled page fault at its next write, 3-12 us a page on the
# shared bench machine. Dropping every dead stretch (LPUC_SRAM_RELEASE=1) refaults one to several
# times a program's SRAM per run: SqueezeNet fp32 ran 2x slower (peak run RSS 5.2x -> 2.7x its
# image and I/O). By default the drops are chosen to keep the resident SRAM within CAP times the
# image with few of them (page_releases).
_MODE = os.environ.get("LPUC_SRAM_RELEASE")
ENABLED = _MODE == "1"  # every dead stretch
CAPPED = _MODE != "0"  # (default) few drops that keep the resident SRAM within CAP x image
CAP = 1.5
# Only when the program touches this much memory beyond what it is allowed to keep.
MIN_SAVING = 4 << 20


def _tile_bytes(t: TileSlot, addresses: int, word_bytes: int) -> tuple[int, int]:
    """[start, end) byte offsets of a tile in the SRAM buffer (slices x addresses x word bytes)."""
    start = (t.slice * addresses + t.addr) * word_bytes
    return start, start + t.words * word_bytes


def page_releases(program: Program, order: list[Instruction], image_bytes: int) -> dict[int, Release]:
    """Step index -> the page ranges to drop after that step (empty when not enabled or not worth
    it): every dead stretch of every page (ENABLED), or (CAPPED) few that keep the pages resident
    within CAP x image_bytes, in every run (capped_gaps)."""
    if not (ENABLED or CAPPED):
        return {}
    page = mmap.PAGESIZE
    pages, gaps = page_gaps(program, order)
    allowed = image_bytes if ENABLED else int(CAP * image_bytes)
    if pages * page < allowed + MIN_SAVING:
        return {}
    if not ENABLED:
        gaps = gaps[:, capped_gaps(gaps, pages, len(order), allowed // page)]
    releases: dict[int, Release] = {}
    by_step = np.lexsort((gaps[0], gaps[1]))  # (by step, then page)
    for step, p in zip(gaps[1, by_step].tolist(), gaps[0, by_step].tolist()):
        ranges = releases.setdefault(step, [])
        if ranges and ranges[-1][0] + ranges[-1][1] == p * page:
            ranges[-1] = (ranges[-1][0], ranges[-1][1] + page)
        else:
            ranges.append((p * page, page))
    return releases


def page_gaps(program: Program, order: list[Instruction]) -> tuple[int, np.ndarray]:
    """(the pages the run touches, their gaps [3, gaps]: page, the step after which it is dead, the
    step that next touches it). A page is live over the [first, last] steps of each tile touching
    it (inputs from the start of the run; constants and outputs for good); its gaps lie between
    those stretches and from its last one to its first in the next run (that end counted on from
    len(order) + 1, the next run's step 0). Arrays, not Python tuples: DenseNet's 45k gaps as
    tuples took more memory than the drops saved."""
    target = program.target
    addresses, word_bytes, page = target.addresses_per_slice, target.word_bytes, mmap.PAGESIZE
    never = len(order)
    tiles = program.tiles
    first, last = [-1] * len(tiles), [-1] * len(tiles)
    for i, ins in enumerate(order):
        for a in (*ins.reads, *ins.writes):
            if first[a.buf] < 0:
                first[a.buf] = i
            last[a.buf] = i
    for b in program.inputs:  # stored before the first step
        for buf in b.tiles:
            first[buf] = 0
            last[buf] = max(last[buf], 0)
    kept = {buf for b in program.outputs for buf in b.tiles}
    kept |= {t.id for t in tiles if t.kind in ("const", "io", "output")}
    for buf in kept:
        first[buf], last[buf] = 0, never
    used = [t.id for t in tiles if first[t.id] >= 0 and t.kind != "host"]
    lo = np.array([_tile_bytes(tiles[b], addresses, word_bytes)[0] for b in used], np.int64)
    hi = np.array([_tile_bytes(tiles[b], addresses, word_bytes)[1] for b in used], np.int64)
    p0, p1 = lo // page, -(-hi // page)
    counts = p1 - p0
    # one row per (tile, page it touches)
    pages = np.repeat(p0, counts) + np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    if not pages.size:  # (a program of empty tensors touches no page)
        return 0, np.empty((3, 0), np.int64)
    starts = np.repeat(np.array(first, np.int64)[used], counts)
    ends = np.repeat(np.array(last, np.int64)[used], counts)
    rows = np.lexsort((starts, pages))
    pages, starts, ends = pages[rows], starts[rows], ends[rows]
    # the latest end of the page's stretches so far (pages dominate the key: a running max per page)
    reach = np.maximum.accumulate(pages * (never + 2) + ends) - pages * (never + 2)
    same = np.r_[False, pages[1:] == pages[:-1]]
    before = np.r_[0, reach[:-1]]
    inner = same & (starts > before + 1)
    last_row = np.r_[pages[1:] != pages[:-1], True]
    first_row = ~same
    page_start = starts[first_row][np.cumsum(first_row) - 1]  # (each row's page's first step)
    wrap = last_row & (reach < never)
    inner_gaps = np.stack([pages[inner], before[inner], starts[inner]])
    wrap_gaps = np.stack([pages[wrap], reach[wrap], never + 1 + page_start[wrap]])
    return int(first_row.sum()), np.concatenate([inner_gaps, wrap_gaps], axis=1)


def capped_gaps(gaps: np.ndarray, pages: int, never: int, keep: int) -> np.ndarray:
    """Indexes of few gaps (page_gaps) whose drops keep at most `keep` of the `pages` pages resident
    at every step of a run after the first (more where even dropping every gap leaves more). A run
    is the same every time, so two are laid end to end (gaps from the end of one reach into the
    next) and the second is covered: at each step, while too few dropped gaps span it, the one
    spanning it that ends last is dropped (on a line, the greedy choice that needs fewest; a run's
    wrap-around makes it a circle, where it may take one or so more). A gap chosen in either copy
    is dropped in every run. (The first run holds no more: a page is only resident there from its
    first touch.)"""
    n, count = never + 1, gaps.shape[1]
    starts = np.concatenate([gaps[1], gaps[1] + n])  # (a gap spans steps start + 1 .. end - 1)
    ends = np.concatenate([gaps[2], gaps[2] + n])
    ids = np.concatenate([np.arange(count), np.arange(count)])
    by_start = np.argsort(starts, kind="stable")
    starts, ends, ids = starts[by_start], ends[by_start], ids[by_start]
    size = 3 * n + 2
    spanned = np.cumsum(  # per step, the gaps spanning it: the most that drops can free there
        np.bincount(starts + 1, minlength=size)[:size]
        - np.bincount(np.minimum(ends, size - 1), minlength=size)
    )
    keys = -(ends * (2 * count) + ids)  # a max-heap of (end, gap), one int each
    chosen = np.zeros(count, bool)
    spanning: list[int] = []  # keys of copies begun and not chosen
    dropped: list[int] = []  # ends of chosen copies begun
    k = 0
    for step in range(n, 2 * n):
        begun = int(np.searchsorted(starts, step, "left"))  # (those starting before this step)
        for key, end, g in zip(keys[k:begun].tolist(), ends[k:begun].tolist(), ids[k:begun].tolist()):
            if chosen[g]:
                heapq.heappush(dropped, end)
            else:
                heapq.heappush(spanning, key)
        k = begun
        while dropped and dropped[0] <= step:
            heapq.heappop(dropped)
        need = min(pages - keep, int(spanned[step]))
        while len(dropped) < need:
            end, g = divmod(-heapq.heappop(spanning), 2 * count)
            if end <= step or chosen[g]:
                continue  # (ended before this step; or its other copy chosen, counted already)
            chosen[g] = True
            heapq.heappush(dropped, end)
    return np.flatnonzero(chosen)


def drop(buffer: mmap.mmap, ranges: Release) -> None:
    """The pages of `ranges` given back to the OS (read as zeros until written again)."""
    for start, length in ranges:
        buffer.madvise(mmap.MADV_DONTNEED, start, length)
