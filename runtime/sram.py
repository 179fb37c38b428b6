"""The chip's SRAM: slices x addresses x word bytes, read and written through tile windows."""

from __future__ import annotations

import mmap

import numpy as np

from lpuc.dtypes import words_per_row
from lpuc.program import Access
from lpuc.target import Target


class Sram:
    def __init__(self, target: Target):
        # Anonymous memory, zero-filled lazily by the OS: untouched SRAM costs no memory. Not
        # np.zeros: numpy asks for transparent huge pages on large arrays, and then the first write
        # to each slice makes 2 MiB resident, so a program using a tenth of the SRAM held all of it.
        shape = (target.num_slices, target.addresses_per_slice, target.word_bytes)
        # Private: a page given back (runtime/release.py) is freed and reads as zeros; a shared
        # mapping would keep its contents in shared memory, out of the process's RSS but not freed.
        buffer = mmap.mmap(-1, int(np.prod(shape)), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        if hasattr(mmap, "MADV_NOHUGEPAGE"):
            buffer.madvise(mmap.MADV_NOHUGEPAGE)
        self.buffer = buffer  # (runtime/release.py gives pages of it back)
        self.words = np.frombuffer(buffer, dtype=np.uint8).reshape(shape)

    def _rows(self, a: Access, dtype: np.dtype) -> np.ndarray:
        wpr = words_per_row(dtype)
        block = self.words[a.slice, a.addr : a.addr + a.nrows * wpr]
        return block.reshape(a.nrows, wpr * self.words.shape[2]).view(dtype)

    def view(self, a: Access, dtype: np.dtype) -> np.ndarray:
        """The window itself, [nrows, nlanes]: a live view (writes through it change SRAM)."""
        return self._rows(a, dtype)[:, a.lane0 : a.lane0 + a.nlanes]

    def read(self, a: Access, dtype: np.dtype) -> np.ndarray:
        """The window's values, [nrows, nlanes] (a copy: later writes never change it)."""
        return self.view(a, dtype).copy()

    def write(self, a: Access, dtype: np.dtype, values: np.ndarray) -> None:
        self.view(a, dtype)[...] = np.broadcast_to(
            np.asarray(values).astype(dtype, copy=False), (a.nrows, a.nlanes)
        )
