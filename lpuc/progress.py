"""Progress bars for long compiles and runs, on stderr, only when a person is watching.

A bar appears only once its stage has run for `DELAY` seconds, so quick commands stay clean, and
never when stderr is not a terminal or progress was switched off (`--quiet`, `set_quiet`). Bars are
transient: a finished stage's bar is erased. Stages nest by name: `stage("passes")` opened by the
compile driver and `stage("passes", total=14)` opened inside it by the pass pipeline share one bar,
which the inner call gives its length.

    with progress.stage("lowering"):            # elapsed time only
        ...
    with progress.stage("passes", total=n) as bar:  # a bar with a count
        for p in passes:
            bar.label(p.name)
            ...
            bar.advance()
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any, TextIO

import click

DELAY = 1.0  # seconds a stage runs before its bar is shown
TICK = 0.25  # seconds between redraws while nothing advances (elapsed time keeps moving)

_quiet = False
_stream: TextIO | None = None  # None: sys.stderr at the time a stage starts
_local = threading.local()  # per thread: the open stages, innermost last (compiles may run in threads)


def set_quiet(quiet: bool = True) -> None:
    """Switch progress output off (`--quiet`) or back on (still only on a terminal)."""
    global _quiet
    _quiet = bool(quiet)


def set_stream(stream: TextIO | None) -> None:
    """Where bars go (tests pass a fake terminal); None restores sys.stderr."""
    global _stream
    _stream = stream


def enabled(stream: TextIO | None = None) -> bool:
    """Whether a stage started now would draw: not quiet, and the stream is a terminal."""
    out = stream or _stream or sys.stderr
    if _quiet or out is None:
        return False
    try:
        return bool(out.isatty())
    except (AttributeError, ValueError):  # closed or not a real stream
        return False


def _quiet_callback(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    set_quiet(value)  # set on every invocation, so a previous --quiet does not stick in-process
    return value


quiet_option = click.option(
    "-q",
    "--quiet",
    is_flag=True,
    expose_value=False,
    callback=_quiet_callback,
    help="No progress bars (they are shown only on a terminal, for stages longer than a second).",
)


class _Bar:
    """One stage's bar; a no-op when progress is disabled (`bar is None`)."""

    def __init__(self, name: str, bar: Any) -> None:
        self.name = name
        self.bar = bar

    def set_total(self, total: int) -> None:
        if self.bar is not None and total:
            self.bar.total = total
            self.bar.bar_format = _COUNTED

    def label(self, text: str) -> None:
        """What the stage is doing now (e.g. the pass being run), shown after the count."""
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=False)

    def advance(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)


# No time estimate: steps (passes, instructions) differ too much in cost for one to mean anything.
_COUNTED = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]"
_OPEN = "{desc}: {elapsed}{postfix}"  # no total known: elapsed time only


@contextlib.contextmanager
def stage(name: str, total: int | None = None) -> Iterator[_Bar]:
    """A bar for one stage; reuses the enclosing stage's bar when it has the same name."""
    active = _open_stages()
    if active and active[-1].name == name:
        outer = active[-1]
        if total:
            outer.set_total(total)
        yield outer
        return
    out = _stream or sys.stderr
    if not enabled(out):
        bar = _Bar(name, None)
        active.append(bar)
        try:
            yield bar
        finally:
            active.pop()
        return
    from tqdm import tqdm

    tq = tqdm(
        desc=f"lpuc {name}",
        total=total or None,
        file=out,
        delay=DELAY,
        leave=False,
        bar_format=_COUNTED if total else _OPEN,
        dynamic_ncols=True,
    )
    bar = _Bar(name, tq)
    active.append(bar)
    stop = threading.Event()
    ticker = threading.Thread(target=_tick, args=(tq, stop), name=f"lpuc-progress-{name}", daemon=True)
    ticker.start()
    try:
        yield bar
    finally:
        stop.set()
        ticker.join()
        active.pop()
        tq.close()


def _open_stages() -> list[_Bar]:
    if not hasattr(_local, "stages"):
        _local.stages = []
    return _local.stages


def _tick(tq: Any, stop: threading.Event) -> None:
    # tqdm draws only when update() is called; an opaque stage (one long call) never calls it,
    # so redraw from here once the delay has passed.
    if stop.wait(DELAY):
        return
    while not stop.is_set():
        tq.refresh()
        tq.last_print_t = time.time()  # tqdm's own record that the bar is on screen (close clears it)
        stop.wait(TICK)
