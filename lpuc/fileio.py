"""Writing outputs so that a failure never leaves a half-written file: temp file, then rename."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from lpuc.errors import LpucError

_UMASK = os.umask(0)  # read the process umask (the only way is to set it) and restore it
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """A temporary path next to `path`; renamed over `path` only if the block succeeds."""
    target = Path(path)
    if target.is_dir():
        raise LpucError(f"{target}: is a directory; give a file name to write")
    if not target.parent.is_dir():
        raise LpucError(f"{target}: cannot write: directory {target.parent} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    except OSError as e:
        raise LpucError(f"{target}: cannot write ({e.strerror})") from None
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes it private; the result is an ordinary file
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
