"""Tiled IR: tensors cut into tiles that fit the chip, and the tile operations between them.

Layout. Every tensor is seen as a 2-D row-major view [rows, cols] with cols = its last dimension
(a scalar is [1, 1], a vector [1, n]). The view is cut into tiles of at most `block_rows` rows and
`lanes` columns: a tile row is one vector (one value per lane), stored in `itemsize` consecutive MEM
words. A tile is the unit of SRAM allocation: it lives in one slice at one address range.

Tile ops name an opcode the runtime executes (see runtime/isa.py), the unit class that executes it,
the tile windows (`Ref`) it reads and writes, and the work it does (`lpuc.cost.Work`), which the cost
model alone turns into cycles.
Ops are listed in a valid sequential order; the scheduler derives dependencies from their
overlapping windows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from lpuc.cost import Work
from lpuc.dtypes import words_per_row


@dataclass
class Buffer:
    """One tile of one tensor."""

    id: int
    tensor: str
    dtype: np.dtype
    rows: int
    lanes: int
    r0: int  # position of the tile in the tensor's [rows, cols] view
    c0: int
    const_key: str | None = None  # content hash of a constant tile: identical tiles share SRAM
    is_input: bool = False
    is_output: bool = False
    host: bool = False  # a whole tensor kept in host memory (host partitions); no SRAM slot
    replica: int = 0  # a further copy of a constant (lowering strategy constant_replicas), numbered

    @property
    def is_const(self) -> bool:
        return self.const_key is not None

    @property
    def words(self) -> int:
        return 0 if self.host else self.rows * words_per_row(self.dtype)

    @property
    def kind(self) -> str:
        if self.host:
            return "host"
        if self.is_const:
            return "const"
        if self.is_input:
            return "io" if self.is_output else "input"
        return "output" if self.is_output else "temp"


@dataclass(frozen=True)
class Ref:
    """A window [row0, row0 + nrows) x [lane0, lane0 + nlanes) of a buffer."""

    buf: int
    row0: int
    nrows: int
    lane0: int
    nlanes: int

    def overlaps(self, other: Ref) -> bool:
        return (
            self.buf == other.buf
            and self.row0 < other.row0 + other.nrows
            and other.row0 < self.row0 + self.nrows
            and self.lane0 < other.lane0 + other.nlanes
            and other.lane0 < self.lane0 + self.nlanes
        )


@dataclass
class TensorTiles:
    """How one tensor is cut into tiles: grid[row_block][lane_block] is a buffer id."""

    name: str
    shape: tuple[int, ...] | None  # None: dynamic (host-resident)
    dtype: np.dtype
    rows: int
    cols: int
    block_rows: int
    lanes: int
    grid: list[list[int]]

    def tiles(self) -> list[int]:
        return [b for row in self.grid for b in row]

    def view_shape(self) -> tuple[int, int]:
        return self.rows, self.cols


@dataclass
class TileOp:
    id: int
    opcode: str  # "mxm.lw" | "mxm.mm" | "vxm.map" | "vxm.kernel" | "sxm.kernel" | "host.kernel"
    unit_class: str  # "MXM" | "MXM.LW" | "VXM" | "SXM" | "HOST"
    reads: tuple[Ref, ...]
    writes: tuple[Ref, ...]
    node: str  # source node name (for traces and reports)
    work: Work
    attrs: dict[str, Any] = field(default_factory=dict)
    group: int = -1  # MXM weight group: an LW and the MMs that use its weights
    chain: int = -1  # MXM accumulation chain (groups summed in one plane), named by its first group


@dataclass
class TiledProgram:
    tensors: dict[str, TensorTiles]
    buffers: list[Buffer]
    ops: list[TileOp]
    const_data: dict[str, np.ndarray]  # const_key -> tile contents [rows, lanes]
    inputs: list[str]
    outputs: list[str]
    precision: str
    graph_name: str = "model"
    # The model's dtype of each input and output where its tiles store another (fp16 storage).
    io_dtypes: dict[str, np.dtype] = field(default_factory=dict)

    def buffer(self, buf_id: int) -> Buffer:
        return self.buffers[buf_id]


_T = TypeVar("_T", Buffer, TileOp)


def copy_with(item: _T, **changes: Any) -> _T:
    """dataclasses.replace for a Buffer or TileOp (plain dataclasses: no __post_init__, not frozen),
    at a third of its cost: lowering renumbers every tile and op of a program after fusing, and
    replace, which calls __init__ with every field, took a tenth of lowering."""
    new = object.__new__(item.__class__)
    fields = new.__dict__
    fields.update(item.__dict__)
    fields.update(changes)
    return new
