"""When each tile is live: the single rule the allocator plans with and the validator checks.

A tile is live from the start of the first instruction that writes it to the end of the last one
that touches it. Inputs are live from cycle 0 (the host writes them before the program starts);
outputs and constants until the end of the program (constants form a static image).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

STARTS_AT_ZERO = frozenset({"const", "input", "io"})
LIVES_TO_END = frozenset({"const", "output", "io"})


def live_intervals(
    kinds: Sequence[str], accesses: Iterable[tuple[int, int, Iterable[int], Iterable[int]]]
) -> list[tuple[int, int]]:
    """[start, end) per tile, from (start, end, tiles read, tiles written) of each instruction."""
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    program_end = 1
    for start, end, reads, writes in accesses:
        program_end = max(program_end, end)
        for b in writes:
            first[b] = min(first.get(b, start), start)
            last[b] = max(last.get(b, end), end)
        for b in reads:
            last[b] = max(last.get(b, end), end)
    out = []
    for tile, kind in enumerate(kinds):
        start = 0 if kind in STARTS_AT_ZERO else first.get(tile, last.get(tile, 0))
        end = program_end if kind in LIVES_TO_END else max(last.get(tile, start + 1), start + 1)
        out.append((start, end))
    return out
