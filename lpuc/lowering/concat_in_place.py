"""Channel Concats written in place (lowering strategy `concat_in_place`).

A Concat along the lanes (channels last) is an SXM copy of every operand into the result's tiles.
When an operand's writers can write the result's tiles directly, the copy is not needed: its
windows move into the result's tiles at the operand's lane offset, row for row. That holds for
- an MM's result (its epilogue's too): the MXM puts result column j on the lane its weights' column
  j occupies in the plane, so the result can start at any superlane when its weights are loaded from
  a copy stored that many lanes further on (so are its epilogue's per-lane constants), and a map of such
  results only it reads (a K-split sum), their MMs writing them at the same lanes;
- at lane offset 0 only (nothing moves across lanes), a map's result, and an operand that is itself
  a Concat done in place: the DenseNet chain x[k+1] = Concat(x[k], y[k]) becomes one tensor whose
  growing prefixes the later layers read, each y[k] written beside them by its convolution.
The operand's other readers must read windows (MMs, maps) and, at a nonzero offset, there must be
none: a kernel reads whole tiles where its tensor's layout puts them. At most one operand (a pooled
block input) cannot be placed: it is copied by one SXM Pad per row tile into the result's tiles it
covers, before any other writer of those tiles. Row tiles of the operands and the result must match
and a moved window must stay in one lane tile of the result, starting at a superlane.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace

import numpy as np

from lpuc.cost import Work
from lpuc.dtypes import dtype_name
from lpuc.ir.graph import Graph, Node
from lpuc.ir.tiled import Buffer, Ref, TensorTiles, TiledProgram, TileOp, copy_with
from lpuc.jsonable import to_json
from lpuc.kernels._common import normalize_axis
from lpuc.lowering.builder import content_key
from lpuc.lowering.epilogue import without_unused_tiles
from lpuc.target import Target

_WINDOW_OPS = frozenset({"mxm.mm", "vxm.map"})


@dataclass
class _Copy:
    """The one operand of an in-place Concat copied by SXM Pads: tensor, lane offset in the result,
    and the op index the Pads go before."""

    source: str
    offset: int
    before: int
    node: str  # the Concat the Pads copy for


def place_concats(tiled: TiledProgram, graph: Graph, target: Target) -> TiledProgram:
    """The program with every Concat along the lanes that can be done in place done so."""
    return _Placer(tiled, graph, target).run()


class _Placer:
    def __init__(self, tiled: TiledProgram, graph: Graph, target: Target) -> None:
        self.tiled, self.graph, self.target = tiled, graph, target
        self.ops: list[TileOp | None] = list(tiled.ops)
        self.readers: dict[int, set[int]] = defaultdict(set)
        self.writers: dict[int, set[int]] = defaultdict(set)
        self.concat_ops: dict[str, list[int]] = defaultdict(list)
        for op in tiled.ops:
            for r in op.reads:
                self.readers[r.buf].add(op.id)
            for w in op.writes:
                self.writers[w.buf].add(op.id)
            if (
                op.opcode == "sxm.kernel"
                and op.attrs.get("kernel") == "Concat"
                and not op.attrs.get("domain")
            ):
                self.concat_ops[op.node].append(op.id)
        self.copies: dict[str, _Copy] = {}  # in-place Concat result -> its copied operand
        self.copied: set[str] = set()  # tensors a Pad reads (a kernel reader: never moved)
        self.buffers = list(tiled.buffers)
        self.const_data = dict(tiled.const_data)
        self.shifted: dict[tuple[int, int, int, int], int] = {}  # (tile, lane0, shift, lanes) -> copy
        self.loads = {op.group: op.id for op in tiled.ops if op.opcode == "mxm.lw"}
        self.shifted_loads: set[int] = set()
        self.moved: set[int] = set()
        self.opsets: dict[str, dict] = {}

    def run(self) -> TiledProgram:
        for node in self.graph.nodes:
            if node.op == "Concat" and not node.domain and self.concat_ops.get(node.name):
                self._place(node)
        if not self.moved:
            return self.tiled
        pads: dict[int, list[TileOp]] = defaultdict(list)
        for name, copy in self.copies.items():  # dict order: the Concats' graph order
            pads[copy.before] += self._pads(name, copy)
        ops: list[TileOp] = []
        for i, op in enumerate(self.ops):
            for pad in pads.get(i, ()):
                ops.append(copy_with(pad, id=len(ops)))
            if op is not None:
                ops.append(copy_with(op, id=len(ops)))
        tiled = replace(self.tiled, ops=ops, buffers=self.buffers, const_data=self.const_data)
        return without_unused_tiles(tiled, self.moved)

    # -- one Concat -----------------------------------------------------------------------------
    def _place(self, node: Node) -> None:
        tensors = self.tiled.tensors
        out = node.outputs[0]
        if out not in tensors or any(i not in tensors for i in node.inputs) or out in self.copied:
            return
        y = tensors[out]
        if y.shape is None or normalize_axis(int(node.attr("axis", 1)), len(y.shape)) != len(y.shape) - 1:
            return
        offsets = np.cumsum([0] + [tensors[i].cols for i in node.inputs[:-1]]).tolist()
        placed, copied = [], []
        for name, offset in zip(node.inputs, offsets):
            shift = self._shift(node, name, offset, y)
            (copied if shift is None else placed).append((name, offset))
        pieces = [(n, o) for n, o in copied] + [
            (self.copies[n].source, o + self.copies[n].offset) for n, o in placed if n in self.copies
        ]
        if len(pieces) > 1 and any(n in self.copies for n, _ in placed):
            # Only one copied operand per result: chained results with a copy of their own stay apart.
            copied += [(n, o) for n, o in placed if n in self.copies]
            placed = [(n, o) for n, o in placed if n not in self.copies]
            pieces = copied
        if not placed or len(pieces) > 1:
            return
        before = None
        if pieces:
            source, offset = pieces[0]
            before = self._copy_position(placed, source)
            if before is None:
                return
        for name, offset in placed:
            self._move(tensors[name], y, offset)
            self.copies.pop(name, None)
        for i in self.concat_ops[node.name]:
            op = self.ops[i]
            self.opsets[out] = op.attrs["opsets"]
            self._forget(i)
        if pieces:
            self.copies[out] = _Copy(pieces[0][0], pieces[0][1], before, node.name)
            self.copied.add(pieces[0][0])

    def _shift(self, node: Node, name: str, offset: int, y: TensorTiles) -> int | None:
        """The lane shift of operand `name`'s windows in the result's tiles, None if it is copied."""
        graph, lanes = self.graph, self.target.lanes
        x = self.tiled.tensors[name]
        if (
            name in graph.inputs
            or name in graph.outputs
            or name in self.copied
            or node.inputs.count(name) != 1
            or x.dtype != y.dtype
            or x.rows != y.rows
            or len(x.grid) != len(y.grid)
        ):
            return None
        shift = offset % lanes
        if shift % self.target.lanes_per_superlane:
            return None
        own = set(self.concat_ops[node.name])
        bufs = x.tiles()
        for rb, row in enumerate(x.grid):
            tile = self.buffers[y.grid[rb][0]]
            for b in row:
                buf = self.buffers[b]
                if (
                    buf.kind != "temp"
                    or (buf.r0, buf.rows) != (tile.r0, tile.rows)
                    or shift + buf.lanes > lanes
                ):
                    return None
        writers = set().union(*(self.writers[b] for b in bufs))
        readers = set().union(*(self.readers[b] for b in bufs)) - own
        if not writers and name not in self.copies:
            return None
        for i in writers:
            if self.ops[i].opcode not in _WINDOW_OPS or (shift and not self._shiftable(i)):
                return None
        if any(self.ops[i].opcode not in _WINDOW_OPS for i in readers) or (shift and readers):
            return None
        return shift

    def _shiftable(self, i: int) -> bool:
        """Whether op i's result can be written at later lanes: an MM (_shiftable_mm), or a map (a
        K-split sum, an unfused bias) whose operands are constants (shifted copies) and MM results
        only it reads: those MMs write theirs at the same later lanes (a tile's lanes cost no SRAM:
        a row is a whole vector), so no value crosses lanes."""
        op = self.ops[i]
        if op.opcode == "mxm.mm":
            return self._shiftable_mm(op)
        width = op.writes[0].nlanes
        for r in op.reads:
            buf = self.buffers[r.buf]
            if buf.is_const:
                ok = r.nlanes in (1, width) and r.lane0 == 0
            else:
                writers = self.writers[r.buf]
                ok = (
                    buf.kind == "temp"
                    and r.lane0 == 0
                    and r.nlanes == width == buf.lanes
                    and self.readers[r.buf] == {i}
                    and bool(writers)
                    and all(self._shiftable_mm(self.ops[w]) for w in writers)
                )
            if not ok:
                return False
        return True

    def _shiftable_mm(self, op: TileOp) -> bool:
        """An MM whose result (with its epilogue) can land at other lanes: it reads no SRAM partial
        sums, and its epilogue's other operands are constants (a shifted copy is stored)."""
        if op.opcode != "mxm.mm" or op.attrs.get("acc") or len(op.writes) != 1:
            return False
        width = op.writes[0].nlanes
        return all(
            self.buffers[r.buf].is_const and r.nlanes in (1, width) and r.lane0 == 0 for r in op.reads[1:]
        )

    def _copy_position(self, placed: list[tuple[str, int]], source: str) -> int | None:
        """Where the copied operand's Pads go: before the first writer of a placed operand, after
        every writer of the copied one (None: no such place)."""
        tensors = self.tiled.tensors
        firsts = [min(self.writers[b], default=len(self.ops)) for n, _ in placed for b in tensors[n].tiles()]
        firsts += [self.copies[n].before for n, _ in placed if n in self.copies]
        before = min(firsts, default=len(self.ops))
        last = max((i for b in tensors[source].tiles() for i in self.writers[b]), default=-1)
        if source in self.copies:
            last = max(last, self.copies[source].before)
        return before if last < before else None

    def _move(self, x: TensorTiles, y: TensorTiles, offset: int) -> None:
        """Every window of x's tiles moved to y's tiles at lane offset `offset`."""
        lanes = self.target.lanes
        shift = offset % lanes
        for rb, row in enumerate(x.grid):
            for cb, b in enumerate(row):
                target = y.grid[rb][(offset + cb * lanes) // lanes]
                for i in sorted(self.writers[b] | self.readers[b]):
                    self._retarget(i, b, target, shift)
                self.moved.add(b)

    def _retarget(self, i: int, b: int, target: int, shift: int) -> None:
        op = self.ops[i]
        if op is None:
            return

        reads, writes = _moved(op.reads, b, target, shift), _moved(op.writes, b, target, shift)
        if shift and any(w.buf == b for w in op.writes):
            reads = self._shifted_operands(i, reads, shift)
        self._replace(i, reads, writes)

    def _shift_weights(self, group: int, shift: int) -> None:
        """The weight load of MM group `group` reads copies of its windows `shift` lanes further on:
        the plane's columns, and so its results, sit at the lanes the loaded weights occupy."""
        i = self.loads.get(group)
        if i is None or i in self.shifted_loads:
            return
        self.shifted_loads.add(i)
        load = self.ops[i]
        self._replace(i, tuple(self._shifted(r, shift) for r in load.reads), load.writes)

    def _shifted_operands(self, i: int, reads: tuple[Ref, ...], shift: int) -> tuple[Ref, ...]:
        """The reads of op i (all of a map's, an MM's but its activation) for its result written
        `shift` lanes further on: per-lane constants from shifted copies, MM results moved along
        (and an MM's weights loaded from a shifted copy)."""
        op = self.ops[i]
        if op.opcode == "mxm.mm":
            self._shift_weights(op.group, shift)
        width = op.writes[0].nlanes
        out = list(reads)
        for k in range(1 if op.opcode == "mxm.mm" else 0, len(reads)):
            r = reads[k]
            if self.buffers[r.buf].is_const:
                out[k] = self._shifted(r, shift) if r.nlanes == width else r
            else:
                self._relane(r.buf, shift, i)
                out[k] = Ref(r.buf, r.row0, r.nrows, r.lane0 + shift, r.nlanes)
        return tuple(out)

    def _relane(self, b: int, shift: int, reader: int) -> None:
        """Tile b (an MM result only op `reader` reads) with its values `shift` lanes further on."""
        buf = self.buffers[b]
        self.buffers[b] = copy_with(buf, lanes=buf.lanes + shift)
        for j in sorted(self.writers[b] - {reader}):
            op = self.ops[j]
            reads, writes = _moved(op.reads, b, b, shift), _moved(op.writes, b, b, shift)
            self._replace(j, self._shifted_operands(j, reads, shift), writes)

    def _replace(self, i: int, reads: tuple[Ref, ...], writes: tuple[Ref, ...]) -> None:
        op = self.ops[i]
        self._forget(i)
        self.ops[i] = copy_with(op, reads=reads, writes=writes)
        self._index(i)

    def _shifted(self, r: Ref, shift: int) -> Ref:
        """The window r of a constant tile read from a copy of its lanes that starts at lane `shift`."""
        key = (r.buf, r.lane0, shift, r.nlanes)
        if key not in self.shifted:
            buf = self.buffers[r.buf]
            data = self.const_data[buf.const_key]
            tile = np.zeros((buf.rows, shift + r.nlanes), dtype=data.dtype)
            tile[:, shift:] = data[:, r.lane0 : r.lane0 + r.nlanes]
            ckey = content_key(tile)
            self.const_data.setdefault(ckey, tile)
            copy = Buffer(
                len(self.buffers), f"{buf.tensor}@lane{shift}", buf.dtype, buf.rows, shift + r.nlanes,
                buf.r0, buf.c0, const_key=ckey,
            )  # fmt: skip
            self.buffers.append(copy)
            self.shifted[key] = copy.id
        return Ref(self.shifted[key], r.row0, r.nrows, shift, r.nlanes)

    def _forget(self, i: int) -> None:
        op = self.ops[i]
        for r in op.reads:
            self.readers[r.buf].discard(i)
        for w in op.writes:
            self.writers[w.buf].discard(i)
        self.ops[i] = None

    def _index(self, i: int) -> None:
        op = self.ops[i]
        for r in op.reads:
            self.readers[r.buf].add(i)
        for w in op.writes:
            self.writers[w.buf].add(i)

    # -- the copied operand -----------------------------------------------------------------------
    def _pads(self, name: str, copy: _Copy) -> list[TileOp]:
        """SXM Pads copying `copy.source` into the result tiles it covers, one per row tile (or
        one in all if the row tiles differ)."""
        y, x = self.tiled.tensors[name], self.tiled.tensors[copy.source]
        lanes = self.target.lanes
        blocks = range(copy.offset // lanes, (copy.offset + x.cols - 1) // lanes + 1)
        same_rows = len(x.grid) == len(y.grid) and all(
            self.buffers[xr[0]].r0 == self.buffers[yr[0]].r0 for xr, yr in zip(x.grid, y.grid)
        )
        slabs = [([xr], [yr]) for xr, yr in zip(x.grid, y.grid)] if same_rows else [(x.grid, y.grid)]
        attrs = {"mode": "constant", "pads": [0, copy.offset, 0, y.cols - copy.offset - x.cols]}
        ops = []
        for x_rows, y_rows in slabs:
            reads = [self._whole(b) for row in x_rows for b in row]
            writes = [self._whole(row[cb]) for row in y_rows for cb in blocks]
            r0 = self.buffers[y_rows[0][0]].r0
            rows = sum(self.buffers[row[0]].rows for row in y_rows)
            desc = {"first": 0, "row_offset": r0}
            op_attrs = {
                "kernel": "Pad",
                "domain": "",
                "opset": 2,  # pads as an attribute
                "attrs": to_json(attrs),
                "inputs": [
                    {**desc, "dtype": dtype_name(x.dtype), "count": len(reads), "shape": [rows, x.cols]}
                ],
                "outputs": [
                    {**desc, "dtype": dtype_name(y.dtype), "count": len(writes), "shape": [rows, y.cols]}
                ],
                "opsets": self.opsets[name],
            }
            vectors = sum(r.nrows for r in reads) + sum(w.nrows for w in writes)  # SXM: one pass (lpuc.ops)
            work = Work(vectors=vectors)
            ops.append(
                TileOp(-1, "sxm.kernel", "SXM", tuple(reads), tuple(writes), copy.node, work, op_attrs)
            )
        return ops

    def _whole(self, b: int) -> Ref:
        buf = self.buffers[b]
        return Ref(b, 0, buf.rows, 0, buf.lanes)


def _moved(refs: tuple[Ref, ...], b: int, target: int, shift: int) -> tuple[Ref, ...]:
    """`refs` with the windows of tile b moved to tile `target`, `shift` lanes further on."""
    return tuple(Ref(target, r.row0, r.nrows, r.lane0 + shift, r.nlanes) if r.buf == b else r for r in refs)
