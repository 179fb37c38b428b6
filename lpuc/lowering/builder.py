"""State shared by the lowering rules: tensors cut into tiles, and the tile ops emitted so far."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable

import numpy as np

from lpuc.cost import Work
from lpuc.dtypes import dtype_name, words_per_row
from lpuc.ir.graph import Graph, Node
from lpuc.ir.tiled import Buffer, Ref, TensorTiles, TiledProgram, TileOp
from lpuc.target import Target


def view_of(shape: tuple[int, ...]) -> tuple[int, int]:
    """The [rows, cols] view of a tensor: cols is the last dim; a scalar is [1, 1]."""
    if not shape:
        return 1, 1
    cols = int(shape[-1])
    rows = int(np.prod(shape[:-1], dtype=np.int64)) if len(shape) > 1 else 1
    return rows, cols


# rows_per_tile: tensors shorter than this many tiles get one tile more; below SHORT_TILE_MIN_ROWS
# rows per tile the fixed latency of each instruction (delays, transport: ~40 cycles) outweighs what
# finer pipelining gains. Measured on ResNet-50 v1.5 (fp16 / int8 cycles): two tiles for 196 rows
# 244,167 / 240,266; three 246,107 / 248,131; 32-row minimum (49 rows in two) slower; this rule
# (also 784 rows in four) 234,575 / 243,609.
SHORT_TILES = 4
SHORT_TILE_MIN_ROWS = 64


def split_range(start: int, stop: int, *boundaries: Iterable[int] | int) -> list[tuple[int, int]]:
    """Cut [start, stop) at every multiple of the given step sizes (ints) or explicit points."""
    cuts = {start, stop}
    for b in boundaries:
        if isinstance(b, int):
            cuts.update(range((start // b + 1) * b, stop, b))
        else:
            cuts.update(p for p in b if start < p < stop)
    points = sorted(cuts)
    return list(zip(points[:-1], points[1:]))


def stacked_split(dtype: np.dtype, target: Target, model_input: bool = False) -> int:
    """Into how many tiles a stacked value's tile is cut (lpuc.lowering.stacked_rows), 1 if one
    slice's banks keep up with a row per cycle: else enough slices that each streams its share of a
    row per cycle through its banks. A model input (no op writes it: no map is cut at its shorter
    tiles) over enough slices that each streams through one bank, so the map reading them leaves
    every slice's other banks free to the weight loads and MMs beside it: with both banks of two
    slices held by each of its quantize maps, the int8 GEMM [2304x4096]x[4096x320]'s weight loads
    waited for them (12,439 cycles; over four slices, 10,464). A map's result stays on the fewest
    slices: cut shorter, its maps are too, each with its own latency."""
    words = words_per_row(dtype)
    if words <= target.mem_banks:
        return 1
    return words if model_input else -(-words // target.mem_banks)


def default_block_rows(target: Target) -> int:
    """Rows per tile. Square tiles keep MXM operands aligned with other tensors; a tile of the widest
    dtype (8 bytes per lane) must also fit in one slice."""
    return min(target.lanes, target.addresses_per_slice // words_per_row(np.dtype(np.int64)))


def rows_per_tile(rows: int, block_rows: int, short_tiles: bool) -> int:
    """TiledBuilder.rows_per_tile for a builder of `block_rows` rows per tile."""
    if not short_tiles or rows >= SHORT_TILES * block_rows:
        return block_rows
    parts = -(-rows // block_rows) + 1
    per_tile = -(-rows // parts)  # the last tile may be a few rows shorter (169 rows: 85 + 84)
    return per_tile if per_tile >= SHORT_TILE_MIN_ROWS else block_rows


class TiledBuilder:
    def __init__(
        self,
        graph: Graph,
        target: Target,
        precision: str,
        host_resident: set[str] | None = None,
        host_tables: frozenset[str] = frozenset(),
        fp16_values: set[str] | None = None,
        disabled: frozenset[str] = frozenset(),
        segment_rows: dict[str, int] | None = None,
        stacked_values: set[str] | None = None,
        plane_rows: dict[str, int] | None = None,
    ):
        self.graph = graph
        # Values whose maps read several shorter tiles side by side (lpuc.lowering.stacked_rows).
        self.stacked_values = stacked_values or set()
        # Rows per tile of values cut shorter than block_rows (lpuc.lowering.row_segments).
        self.segment_rows = segment_rows or {}
        # Rows per tile of the values of tall products cut to balance the planes (lpuc.lowering.plane_rows).
        self.plane_rows = plane_rows or {}
        self.disabled = disabled  # lowering strategies turned off (lpuc.lowering.STRATEGIES)
        self.host_resident = host_resident or set()
        # Constant lookup tables kept in host memory (they do not fit SRAM): one host buffer each.
        self.host_tables = host_tables
        self.fp16_values = fp16_values or set()  # float32 values stored as fp16 (see lowering)
        self.target = target
        self.precision = precision
        self.lanes = target.lanes
        self.block_rows = default_block_rows(target)
        self.short_tiles = self.enabled("short_tiles") and any(n.op == "Im2Col" for n in graph.nodes)
        self.buffers: list[Buffer] = []
        self.tensors: dict[str, TensorTiles] = {}
        self.ops: list[TileOp] = []
        self.const_data: dict[str, np.ndarray] = {}
        self._stored_consts: dict[tuple[str, str], TensorTiles] = {}
        self._groups = 0
        # Compile-time maximum size of each data-dependent (host-resident) tensor, for host costs.
        self.max_bytes: dict[str, int] = {}

    def enabled(self, strategy: str) -> bool:
        return strategy not in self.disabled

    @functools.cached_property
    def producers(self) -> dict[str, Node]:
        """Each value's producing node (the graph is not changed while lowering)."""
        return self.graph.producers()

    @functools.cached_property
    def consumers(self) -> dict[str, list[Node]]:
        """Each value's reading nodes (the graph is not changed while lowering)."""
        return self.graph.consumers()

    # -- tensors --------------------------------------------------------------------------------
    def tensor(self, name: str) -> TensorTiles:
        """Tiles of a value; constants are materialized on first use in their own dtype."""
        t = self.tensors.get(name)
        if t is None:
            v = self.graph.values[name]
            if not v.is_const:
                raise KeyError(f"value {name!r} used before it was produced")
            t = self.host_table(name) if name in self.host_tables else self.const_tensor(name, v.dtype)
            self.tensors[name] = t
        return t

    def const_tensor(
        self, name: str, dtype: np.dtype, block_rows: int | None = None, replica: int = 0
    ) -> TensorTiles:
        """Tiles of constant `name` stored as `dtype` (e.g. weights rounded to fp16 for the MXM), cut
        into tiles of `block_rows` rows (default: the builder's). Replicas > 0 are further copies in
        slots of their own, so instructions running side by side need not share a slice's ports."""
        key = (name, dtype_name(dtype), block_rows, replica)
        t = self._stored_consts.get(key)
        if t is None:
            data = np.asarray(self.graph.values[name].const)  # new_tensor converts it tile by tile
            t = self.new_tensor(
                name, data.shape, np.dtype(dtype), const=data, block_rows=block_rows, replica=replica
            )
            self._stored_consts[key] = t
        return t

    def host_table(self, name: str) -> TensorTiles:
        """Constant `name` kept whole in host memory: a host buffer carrying its content key."""
        data = np.ascontiguousarray(self.graph.values[name].const)
        key = content_key(data)
        self.const_data.setdefault(key, data)
        buf = Buffer(len(self.buffers), name, data.dtype, 1, 1, 0, 0, const_key=key, host=True)
        self.buffers.append(buf)
        rows, cols = view_of(data.shape)
        return TensorTiles(name, data.shape, data.dtype, rows, cols, self.block_rows, self.lanes, [[buf.id]])

    def new_tensor(
        self,
        name: str,
        shape: tuple[int, ...],
        dtype: np.dtype,
        const: np.ndarray | None = None,
        block_rows: int | None = None,
        replica: int = 0,
    ) -> TensorTiles:
        rows, cols = view_of(tuple(shape))
        block_rows = block_rows or self.rows_per_tile(rows)
        # A constant is converted to `dtype` a band of tile rows at a time, never the whole tensor
        # first: a band's rows are contiguous, which numpy converts about twice as fast as a strided
        # tile (the same values: casting does not depend on the layout); its tiles are then cut from
        # the converted band, so each copies the narrower words once.
        flat = None if const is None else np.asarray(const).reshape(rows, cols)
        grid = []
        for r0 in range(0, rows, block_rows):
            nr = min(block_rows, rows - r0)
            band = None
            if flat is not None:
                band = np.ascontiguousarray(flat[r0 : r0 + nr]).astype(dtype, copy=False)
            row = []
            for c0 in range(0, cols, self.lanes):
                nl = min(self.lanes, cols - c0)
                key = None
                if band is not None:
                    tile = np.ascontiguousarray(band[:, c0 : c0 + nl])
                    key = content_key(tile) + (f".{replica}" if replica else "")
                    self.const_data.setdefault(key, tile)
                buf = Buffer(
                    len(self.buffers), name, np.dtype(dtype), nr, nl, r0, c0, const_key=key, replica=replica
                )
                self.buffers.append(buf)
                row.append(buf.id)
            grid.append(row)
        return TensorTiles(
            name, tuple(int(d) for d in shape), np.dtype(dtype), rows, cols, block_rows, self.lanes, grid
        )

    def rows_per_tile(self, rows: int) -> int:
        """Tile rows of a tensor with `rows` rows. In a convolution network (short_tiles), a tensor
        shorter than SHORT_TILES full tiles is cut into one tile more than it needs, of near-equal
        rows (at least SHORT_TILE_MIN_ROWS): the ops of the later stages (28x28 = 784 rows: 4 tiles of
        196; 14x14: 2 of 98) then pipeline a tile at a time instead of waiting for a short last tile
        or for the whole tensor. Every tensor with that many rows is cut alike, so elementwise
        operands keep matching tiles."""
        return rows_per_tile(rows, self.block_rows, self.short_tiles)

    def define(self, name: str) -> TensorTiles:
        """Create the tiles of a node output (one host buffer if it stays in host memory)."""
        v = self.graph.values[name]
        if name in self.host_resident:
            buf = Buffer(len(self.buffers), name, np.dtype(v.dtype), 1, 1, 0, 0, host=True)
            self.buffers.append(buf)
            rows, cols = view_of(v.shape) if v.shape is not None else (0, 0)
            t = TensorTiles(
                name, v.shape, np.dtype(v.dtype), rows, cols, self.block_rows, self.lanes, [[buf.id]]
            )
        else:
            dtype = np.float16 if name in self.fp16_values else v.dtype
            block_rows = (
                self.segment_rows.get(name)
                or self._stacked_block_rows(name, v.shape, dtype)
                or self.plane_rows.get(name)
            )
            t = self.new_tensor(name, v.shape, dtype, block_rows=block_rows)
        self.tensors[name] = t
        return t

    def _stacked_block_rows(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> int | None:
        """Rows per tile of a stacked value: its consumers' tile rows cut in `split` (None: default)."""
        if name not in self.stacked_values:
            return None
        total = view_of(tuple(shape))[0]
        rows = self.plane_rows.get(name) or self.rows_per_tile(total)
        if self.enabled("stacked_products"):  # a value shorter than a tile: its own rows cut
            rows = min(rows, total)
        split = stacked_split(dtype, self.target, model_input=name in self.graph.inputs)
        return rows // split if rows % split == 0 and rows // split > 0 else None

    def alias(self, name: str, source: TensorTiles) -> None:
        """`name` is a reshape of `source` with the same [rows, cols] view: share its tiles."""
        v = self.graph.values[name]
        self.tensors[name] = TensorTiles(
            name,
            v.shape,
            source.dtype,
            source.rows,
            source.cols,
            source.block_rows,
            source.lanes,
            source.grid,
        )

    # -- windows --------------------------------------------------------------------------------
    def whole(self, buf_id: int) -> Ref:
        b = self.buffers[buf_id]
        return Ref(buf_id, 0, b.rows, 0, b.lanes)  # a host buffer's window is a 1x1 token

    def window(self, t: TensorTiles, r0: int, r1: int, c0: int, c1: int) -> Ref:
        """The window of view rows [r0, r1) x cols [c0, c1), which must lie inside one tile."""
        rb, cb = r0 // t.block_rows, c0 // t.lanes
        if (r1 - 1) // t.block_rows != rb or (c1 - 1) // t.lanes != cb:
            raise AssertionError(f"window {r0}:{r1}x{c0}:{c1} of {t.name} crosses a tile boundary")
        return Ref(t.grid[rb][cb], r0 - rb * t.block_rows, r1 - r0, c0 - cb * t.lanes, c1 - c0)

    def windows(self, t: TensorTiles, r0: int, r1: int, c0: int, c1: int) -> list[Ref]:
        """The windows of view rows [r0, r1) x cols [c0, c1) (inside one lane block), one per tile."""
        cuts = split_range(r0, r1, t.block_rows)
        return [self.window(t, lo, hi, c0, c1) for lo, hi in cuts]

    # -- ops ------------------------------------------------------------------------------------
    def emit(
        self,
        opcode: str,
        unit_class: str,
        reads: Iterable[Ref],
        writes: Iterable[Ref],
        node: str,
        work: Work,
        **fields,
    ) -> TileOp:
        op = TileOp(len(self.ops), opcode, unit_class, tuple(reads), tuple(writes), node, work, **fields)
        self.ops.append(op)
        return op

    def new_group(self) -> int:
        self._groups += 1
        return self._groups - 1

    def finish(self) -> TiledProgram:
        for name in self.graph.inputs:
            for b in self.tensor(name).tiles():
                self.buffers[b].is_input = True
        for name in self.graph.outputs:
            for b in self.tensor(name).tiles():
                self.buffers[b].is_output = True
        return TiledProgram(
            self.tensors,
            self.buffers,
            self.ops,
            self.const_data,
            list(self.graph.inputs),
            list(self.graph.outputs),
            self.precision,
            self.graph.name,
            {
                n: np.dtype(self.graph.values[n].dtype)
                for n in [*self.graph.inputs, *self.graph.outputs]
                if self.tensors[n].dtype != self.graph.values[n].dtype
            },
        )


def content_key(tile: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(f"{dtype_name(tile.dtype)}{tile.shape}".encode())
    h.update(tile.reshape(-1).view(np.uint8))  # the (C-contiguous) tile's bytes, without a copy
    return h.hexdigest()[:24]
