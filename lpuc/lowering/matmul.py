"""MatMul -> MXM weight groups: LW a weight tile into a plane, stream activation tiles through it.

C[..., M, N] = A[..., M, K] @ B[..., K, N]. For every batch of C, the K range is cut into chunks of
at most the plane's k_tile (never crossing a tile of A's lanes or B's rows) and N into chunks of at
most n_tile. A weight group is an LW into a plane and the MMs that use those weights.

- K in one chunk: weight-stationary. Each n-chunk's weights are loaded once per plane and every
  activation row of that plane's share passes them (tall activations are shared among the planes).
- K in several chunks: one accumulation chain per (row segment, n-chunk) on one plane, an LW and an
  MM per k-chunk. The plane keeps the partial sum in its accumulators (`keep`; the next MM starts
  `from_acc`) and only the last MM writes C, so partial sums never travel through SRAM. Segments are
  at most the target's `mxm.acc_rows` rows.

An lpuc.HeadMatMul is the same with attention heads addressed: the products of head h read (or
write) their windows at lane offsets instead of from separate head-major tensors.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass

import numpy as np

from lpuc import cost
from lpuc.cost import Stream, Work
from lpuc.dtypes import words_per_row
from lpuc.ir.graph import LPUC_DOMAIN, Node
from lpuc.ir.model_work import macs_per_row, model_blocks
from lpuc.lowering.builder import TiledBuilder, split_range
from lpuc.ops import expression_alu_ops


def mxm_mode_for(dtype: np.dtype, precision: str) -> str:
    """The MXM mode an activation dtype multiplies in. In an int8 build, float operands (MatMuls
    quantize_int8 left alone, e.g. two runtime operands) take the fp16 path."""
    if np.dtype(dtype).kind in "iub":
        return "int8" if np.dtype(dtype).itemsize == 1 else "fp32"
    return "fp16" if precision == "int8" else precision


def lower_matmul(b: TiledBuilder, node: Node) -> None:
    a_name, w_name = node.inputs[0], node.inputs[1]
    av, wv, cv = (b.graph.values[n] for n in (a_name, w_name, node.outputs[0]))
    if len(av.shape) < 2 or len(wv.shape) < 2:
        raise AssertionError("MatMul operands must be at least 2-D after canonicalize_matmul")
    heads = _HeadViews.of(node)
    a_shape = heads.a_shape(av.shape)
    taps = _RowTaps.of(node, a_shape)
    if taps.offsets:  # the problem is C's rows by the whole K (taps side by side)
        a_shape = (cv.shape[-2], wv.shape[-2])
    w_shape = heads.operand_shape(wv.shape, heads.b_lanes)
    c_shape = heads.result_shape(cv.shape)
    mode_name = mxm_mode_for(av.dtype, b.precision)
    mode = b.target.mxm_mode(mode_name)  # its tile sizes; the cost model charges its row rate
    a = b.tensor(a_name)
    # Constant weights are stored in the MXM input precision (the rounding the MXM applies anyway),
    # in tiles short enough that one K chunk spans as many slices as a weight load needs to reach
    # its full rate (one word per bank per cycle from each slice).
    w_dtype = np.float16 if mode_name == "fp16" and wv.dtype.kind == "f" else wv.dtype
    if wv.is_const and b.enabled("weight_spread"):
        spread = -(-b.target.lw_words_per_cycle // b.target.mem_banks)
        w = b.const_tensor(w_name, w_dtype, block_rows=max(1, -(-mode.k_tile // spread)))
    else:
        w = b.tensor(w_name)
    c = b.define(node.outputs[0])
    if c.rows == 0 or c.cols == 0:
        return
    k, n = a_shape[-1], w_shape[-1]
    if k == 0:
        raise AssertionError("MatMul with K = 0 must be folded before lowering")
    attrs = {"precision": mode_name}
    # Constant rows or columns a pass added (fold_bias_columns) and the zero blocks of rows packed
    # side by side are no model work: MMs count their MACs without them (lpuc.ir.model_work), so the
    # MXM bound and the summary's MACs leave them out.
    blocks = model_blocks(node, k, n)
    # Packed rows' block-diagonal weights are p copies of the convolution's: the weight-load bound
    # counts the bytes of one.
    im2col = b.producers.get(a_name)
    if im2col is not None and im2col.op == "Im2Col" and int(im2col.attr("pack_rows", 1)) > 1:
        attrs["block_diagonal"] = int(im2col.attr("pack_rows"))
    problems = _problems(a_shape, w_shape, c_shape, heads)
    for p in problems:
        # Row segments of the activations that stay inside one tile of A and of C.
        m_segments = split_range(0, p.m, *taps.row_edges(p, a), _tile_edges(p.c_row, p.m, c.block_rows))
        # A weight load may read several tiles of a constant (spread over slices), one of anything else.
        w_tiles = [] if wv.is_const and b.enabled("weight_spread") else _tile_edges(p.w_row, k, w.block_rows)
        k_chunks = taps.k_chunks(p, a, mode.k_tile, w_tiles) or split_range(
            0, k, mode.k_tile, _tile_edges(p.a_col, k, a.lanes), w_tiles
        )
        n_chunks = split_range(
            0, n, mode.n_tile, _tile_edges(p.c_col, n, c.lanes), _tile_edges(p.w_col, n, w.lanes)
        )
        if len(k_chunks) == 1 or not b.enabled("mxm_accumulators"):
            _weight_stationary(b, node, attrs, (a, taps), w, c, p, m_segments, k_chunks, n_chunks, k, blocks)
        else:
            # Partial sums stay in the plane's accumulators, which hold acc_rows rows.
            segments = _at_most(m_segments, b.target.mxm.acc_rows)
            # K splits over planes only for one product (a batch of them keeps the planes busy), and
            # not in fp32 builds, the exact reference: adding the parts' sums reassociates the sum
            # over K, which can overflow where the sequential sum does not. Split MMs write partial
            # results of their own tiles, so only A's tiles cut their rows (C's, cut shorter by row
            # segments, would double the weight loads).
            split = len(problems) == 1 and mode_name != "fp32" and b.enabled("k_split")
            a_tiles = split_range(0, p.m, *taps.row_edges(p, a, c))
            a_segments = _at_most(a_tiles, b.target.mxm.acc_rows)
            chains = [m1 - m0 for m0, m1 in a_segments for _ in n_chunks]
            if split and _k_split(b, c, chains, len(k_chunks), mode.cycles_per_row) > 1:
                segments = a_segments
            _accumulated(b, node, attrs, (a, taps), w, c, p, segments, k_chunks, n_chunks, k, split, blocks)


def tapped_operand_rows(graph) -> dict[str, int]:
    """Value name -> rows per tile for the activations of row-tapped products (passes/row_taps): the
    tiles of their halo layout."""
    rows = {}
    for node in graph.nodes:
        if node.op in ("MatMul", "MatMulInteger") and node.attr("row_taps"):
            _, step, halo = (int(v) for v in node.attr("row_tiles"))
            rows[node.inputs[0]] = step + halo
    return rows


def _at_most(segments: list[tuple[int, int]], rows: int) -> list[tuple[int, int]]:
    """Each segment cut into pieces of at most `rows` rows from its own start (a tile of 196 rows
    from row 196 stays whole: one MM writes it, so a map reading it can fuse into that MM)."""
    return [piece for m0, m1 in segments for piece in split_range(m0, m1, range(m0 + rows, m1, rows))]


def _weight_stationary(
    b, node, attrs, a, w, c, p: _Problem, m_segments, k_chunks, n_chunks, k, blocks
) -> None:
    """Load each weight tile once per plane and stream every row of that plane's share past it (tall
    activations are shared among the planes). K chunks after the first add into C through SRAM."""
    a, taps = a
    for n0, n1 in n_chunks:
        for ki, (k0, k1) in enumerate(k_chunks):
            weights = b.windows(w, p.w_row + k0, p.w_row + k1, p.w_col + n0, p.w_col + n1)
            for part in _parts(m_segments, b.target.num_mxm):
                group = _load(b, node, attrs, w, weights)
                for mi, (m0, m1) in enumerate(part):
                    act = taps.window(b, a, p, (m0, m1), (k0, k1))
                    out = b.window(c, p.c_row + m0, p.c_row + m1, p.c_col + n0, p.c_col + n1)
                    b.emit(
                        "mxm.mm",
                        "MXM",
                        [act, out] if ki else [act],
                        [out],
                        node.name,
                        Work(vectors=m1 - m0, macs=(m1 - m0) * macs_per_row(blocks, k0, k1, n0, n1)),
                        group=group,
                        attrs={**attrs, "group": group, "install": mi == 0, "acc": ki > 0, "k": [k0, k1, k]},
                    )


def _accumulated(
    b, node, attrs, a, w, c, p: _Problem, segments, k_chunks, n_chunks, k, split: bool, blocks
) -> None:
    """K spans several weight tiles: each row segment is one chain on one plane, a weight load and an
    MM per K chunk; the plane sums the partial products in its accumulators and the last MM writes
    the total, so no partial sum goes through SRAM.

    With too few chains to keep the planes equally busy (one 196-row segment on four planes), K is
    split: each part is a chain of its own, free to run on another plane, writing a partial result,
    and one VXM map per tile adds the partials into C."""
    rows = [m1 - m0 for m0, m1 in segments for _ in n_chunks]
    mode = b.target.mxm_mode(attrs["precision"])
    count = _k_split(b, c, rows, len(k_chunks), mode.cycles_per_row) if split else 1
    parts = _runs(k_chunks, count)
    # Activations computed on the chip arrive a few columns at a time (a model input is all there).
    computed = node.inputs[0] not in b.graph.inputs and not b.graph.values[node.inputs[0]].is_const
    parts = _front_loaded(parts) if computed else parts
    if len(parts) == 1:
        partials = [c]
    else:
        rows = _partial_block_rows(b, c, mode.cycles_per_row)
        partials = [
            b.new_tensor(f"{node.name}/partial{j}", c.shape, c.dtype, block_rows=rows)
            for j in range(len(parts))
        ]
    for n0, n1 in n_chunks:
        for m0, m1 in segments:
            for part, into in zip(parts, partials):
                whole_k = k if len(parts) == 1 else None
                _chain(b, node, attrs, (a, w, into), p, (m0, m1), part, (n0, n1), whole_k, blocks)
    if len(parts) > 1:
        _add_partials(b, node, partials, c, p, segments[-1][1] - segments[0][0], n_chunks[-1][1])


def _chain(b, node, attrs, tensors, p: _Problem, rows, part, cols, k: int | None, blocks) -> None:
    """One accumulation chain: rows x cols of the result over the K chunks of `part` (K = k, or None:
    a partial result over the part alone)."""
    (a, taps), w, c = tensors
    (m0, m1), (n0, n1) = rows, cols
    # A partial result is the product over its part of K: the validator sees K ranges within it.
    base = 0 if k is not None else part[0][0]
    k_part = k is None  # (the scheduler ranks a K part's chain apart from the others)
    k = k if k is not None else part[-1][1] - base
    chain = -1
    for ki, (k0, k1) in enumerate(part):
        last = ki == len(part) - 1
        weights = b.windows(w, p.w_row + k0, p.w_row + k1, p.w_col + n0, p.w_col + n1)
        group = _load(b, node, attrs, w, weights, chain)
        chain = group if chain < 0 else chain
        act = taps.window(b, a, p, (m0, m1), (k0, k1))
        # (a partial result in stacked tiles: its rows written over their windows in order)
        outs = b.windows(c, p.c_row + m0, p.c_row + m1, p.c_col + n0, p.c_col + n1)
        mm_attrs = {**attrs, "group": group, "install": True, "k": [k0 - base, k1 - base, k]}
        if ki > 0:
            mm_attrs.update(from_acc=True, k_from=part[0][0] - base)
        if k_part:
            mm_attrs["k_part"] = True
        if not last:
            mm_attrs.update(keep=True, lanes=n1 - n0)
        b.emit(
            "mxm.mm",
            "MXM",
            [act],
            outs if last else [],
            node.name,
            Work(vectors=m1 - m0, macs=(m1 - m0) * macs_per_row(blocks, k0, k1, n0, n1)),
            group=group,
            chain=chain,
            attrs=mm_attrs,
        )


def _k_split(b: TiledBuilder, c, rows: list[int], chunks: int, cycles_per_row: int) -> int:
    """How many parts to split each chain's K into (chains of `rows` rows each, of result C): the
    number that makes the busiest plane's share of the work, plus what adding the partials costs
    (_adding_cycles), smallest, placing the parts longest first on the least busy plane. Only with
    few chains: one 196-row chain on four planes becomes four quarter chains, one per plane."""
    planes = b.target.num_mxm

    def cycles(s: int) -> float:
        load = [0.0] * planes
        for r in sorted((r for r in rows for _ in range(s)), reverse=True):
            load[load.index(min(load))] += r / s
        return max(load) * chunks * cycles_per_row + _adding_cycles(b, c, rows, s, cycles_per_row)

    if len(rows) > 2 * planes:  # enough chains to go round: the partials' pass would not pay
        return 1
    # Short chains (under two K chunks per plane) split only when they leave most planes idle: the
    # partials' map, their fp32 SRAM round trip and the ports and streams they hold cost more than
    # the planes gain while other products can fill them (GPT-2 12L fp16: its three-chain attention
    # output products and six-chain QKV products split, 306.3k cycles; unsplit, 287.8k).
    if chunks < 2 * planes and 2 * len(rows) > planes:
        return 1
    return min(range(1, min(chunks, planes) + 1), key=lambda s: (cycles(s), s))


def _adding_cycles(b: TiledBuilder, c, rows: list[int], parts: int, cycles_per_row: int) -> float:
    """What the maps adding `parts` partial results of chains of `rows` rows (_add_partials: one per
    chain, reading each part's stacked tiles) cost the schedule, by lpuc.cost's rules: the longest
    runs after the last MM (its duration), and each holds the stream ids of its 4-byte operands for
    its duration, which the product's other maps and MMs then lack (its stream-cycles over both
    directions' streams). Placed on the slices nearest the VXM (the least transport they can have)."""
    if parts == 1:
        return 0.0
    target = b.target
    vxm = target.position("VXM0")
    nearest = sorted(range(target.num_slices), key=lambda i: (abs(target.slice_positions[i] - vxm), i))
    words = words_per_row(c.dtype)
    block = _partial_block_rows(b, c, cycles_per_row)
    ops = expression_alu_ops([_sum_step(parts, c.dtype)])
    passes = math.ceil(np.dtype(c.dtype).itemsize / 4)  # 32-bit ALUs (as _add_partials charges)
    longest, stream_cycles = 0, 0
    for r in sorted(set(rows)):
        stacked = -(-r // block)
        slices = iter(nearest)
        reads = [
            Stream(next(slices), min(block, r - i * block), words, target.lanes, stacked)
            for _ in range(parts)
            for i in range(stacked)
        ]
        writes = [Stream(next(slices), r, words, target.lanes)]
        work = Work(vectors=r * passes, alu_ops=ops, elem_ops=r * target.lanes * ops)
        held = cost.duration(target, "vxm.map", "VXM0", work, reads, writes)
        east, west = cost.stream_needs(target, "vxm.map", "VXM0", reads, writes, work)
        longest = max(longest, held)
        stream_cycles += held * (east + west) * rows.count(r)
    return longest + stream_cycles / (2 * target.streams_per_direction)


def _front_loaded(parts: list[list]) -> list[list]:
    """K parts with one chunk moved from the last to the first (of three or more parts, the last
    keeping three or more), for activations computed on the chip: they arrive in K order when the
    product reads the columns of a product before it (an MLP's down projection after its up
    projection), so the first part starts earliest and the last latest, and a shorter last chain
    shortens what follows its input's last column (GPT-2 12L fp16, 20 chunks as 6, 5, 5, 4: 282,976
    cycles to 279,375; 4 layers 98,686 to 96,081; 7, 5, 5, 3 or 6, 6, 4, 4 gain less). Not for a
    model input, all there at once (a lone GEMM: 32,405 cycles, front-loaded 32,885), nor parts
    too short to give a chunk (GPT-2 12L int8, ten 320-row chunks as 4, 3, 2, 1: 235,427 cycles
    instead of 228,606 as 3, 3, 2, 2)."""
    if len(parts) < 3 or len(parts[-1]) < 4:
        return parts
    flat = [c for part in parts for c in part]
    sizes = [len(part) for part in parts]
    sizes[0], sizes[-1] = sizes[0] + 1, sizes[-1] - 1
    bounds = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
    return [flat[lo:hi] for lo, hi in zip(bounds, bounds[1:])]


def _add_partials(b: TiledBuilder, node: Node, partials, c, p: _Problem, m: int, n: int) -> None:
    """C = the sum of the K parts' partial results, one VXM map per tile window of this product."""
    step = _sum_step(len(partials), c.dtype)
    for r0, r1 in split_range(p.c_row, p.c_row + m, c.block_rows):
        for c0, c1 in split_range(p.c_col, p.c_col + n, c.lanes):
            out = b.window(c, r0, r1, c0, c1)
            reads, operands = [], []
            for t in partials:  # each partial's windows of these rows, stacked (stacked tiles)
                windows = b.windows(t, r0, r1, c0, c1)
                at = list(range(len(reads), len(reads) + len(windows)))
                operands.append(at if len(at) > 1 else at[0])
                reads.extend(windows)
            attrs = {"expr": [step], "operands": operands}
            b.emit(
                "vxm.map",
                "VXM",
                reads,
                [out],
                node.name,
                Work(
                    vectors=(r1 - r0) * math.ceil(np.dtype(c.dtype).itemsize / 4),
                    alu_ops=expression_alu_ops([step]),
                    elem_ops=(r1 - r0) * (c1 - c0) * expression_alu_ops([step]),
                ),
                attrs=attrs,
            )


def _sum_step(parts: int, dtype) -> dict:
    """The expression step adding `parts` partial results."""
    args = [f"i{j}" for j in range(parts)]
    return {"op": "Sum", "domain": "", "attrs": {}, "args": args, "dtype": np.dtype(dtype).name, "opset": 13}


def _partial_block_rows(b: TiledBuilder, c, cycles_per_row: int) -> int:
    """Rows per tile of the K parts' partial results: C's tiles, so that the maps adding them (one per
    tile of C) read tiles of their own, not rows of one tile (a 128-row partial read by the two maps
    of C's 64-row segments: both on one slice's ports); cut (lpuc.lowering.stacked_rows) into as many
    as the slices an MM needs to write its result rows at its row rate (an int8 MM's int32 rows, 4
    words a cycle: two slices). An MM longer than them writes its rows over several, in order."""
    split = -(-words_per_row(c.dtype) // (b.target.mem_banks * cycles_per_row))
    if split < 2 or not b.enabled("stacked_rows") or c.block_rows % split:
        return c.block_rows
    return c.block_rows // split


def _load(b: TiledBuilder, node: Node, attrs: dict, w, weights, chain: int = -1) -> int:
    """An LW of the `weights` windows (rows in order) opening a new weight group (of `chain` when it
    continues one); its id."""
    group = b.new_group()
    b.emit(
        "mxm.lw",
        "MXM.LW",
        weights,
        [],
        node.name,
        Work(words=sum(r.nrows for r in weights) * words_per_row(w.dtype)),
        group=group,
        chain=group if chain < 0 else chain,
        attrs={**attrs, "group": group},
    )
    return group


# At most this many row segments (tiles of A / C) per weight load: tall results are then finished a
# part at a time instead of all at the end, and a 224x224 image's int32 accumulators are not all live.
SEGMENTS_PER_PART = 8


def _parts(segments: list[tuple[int, int]], planes: int) -> list[list[tuple[int, int]]]:
    """Row segments cut into contiguous runs of near-equal length: one per plane, or more when
    that would put over SEGMENTS_PER_PART segments in a run."""
    return _runs(segments, max(min(planes, len(segments)), math.ceil(len(segments) / SEGMENTS_PER_PART)))


def _runs(items: list, count: int) -> list[list]:
    """`items` cut into `count` (at least 1, at most len(items)) contiguous runs of near-equal length."""
    count = max(1, min(count, len(items)))
    bounds = [round(i * len(items) / count) for i in range(count + 1)]
    return [items[lo:hi] for lo, hi in zip(bounds, bounds[1:])]


def _problems(a_shape, w_shape, c_shape, heads: _HeadViews) -> list[_Problem]:
    """The 2-D products of C; shared 2-D weights make one tall product. Head h of batch b of an
    operand read by heads is its rows of batch b at lanes offset + h*width (merged C: lanes h*N; A
    packed g heads a row: rows of its group (b*H + h) // g, lanes (h mod g) * K)."""
    m, k, n = a_shape[-2], a_shape[-1], w_shape[-1]
    batch = tuple(c_shape[:-2])
    plain = not (heads.a_lanes or heads.b_lanes or heads.merge or heads.a_packed > 1)
    if plain and int(np.prod(w_shape[:-2], dtype=np.int64)) == 1 and tuple(a_shape[:-2]) == batch:
        return [_Problem(0, 0, 0, 0, 0, 0, m * int(np.prod(batch, dtype=np.int64)))]
    a_index, w_index = _batch_index(a_shape[:-2], batch), _batch_index(w_shape[:-2], batch)
    problems = []
    for i in range(len(a_index)):
        outer, h = divmod(i, heads.heads) if heads.heads else (0, 0)
        a_row, a_col = (outer * m, heads.a_lanes[0] + h * k) if heads.a_lanes else (int(a_index[i]) * m, 0)
        if heads.a_packed > 1:  # head h: its group's rows, lanes (h mod g) * K
            g = heads.a_packed
            a_row, a_col = ((outer * heads.heads + h) // g * m, h % g * k)
        w_row, w_col = (outer * k, heads.b_lanes[0] + h * n) if heads.b_lanes else (int(w_index[i]) * k, 0)
        c_row, c_col = (outer * m, h * n) if heads.merge else (i * m, 0)
        problems.append(_Problem(a_row, a_col, w_row, w_col, c_row, c_col, m))
    return problems


@dataclass(frozen=True)
class _RowTaps:
    """How a row-tapped product (passes/row_taps: attributes row_taps, row_tiles, tap_columns) reads
    A: the K chunks of block i of K (A's columns columns[i], by default all of them) from the rows
    offsets[i] further of the sequence whose halo layout A is (lpuc.kernels.windows.halo_tiles):
    result rows [j * step, (j + 1) * step) from A's tile j (step + halo rows from row j * (step +
    halo)). A plain product has none."""

    offsets: tuple[int, ...] = ()
    columns: tuple[tuple[int, int], ...] = ()  # A's columns [c0, c1) each block reads
    step: int = 0
    halo: int = 0

    @classmethod
    def of(cls, node: Node, a_shape: tuple[int, ...]) -> _RowTaps:
        offsets = tuple(int(t) for t in node.attr("row_taps") or ())
        if not offsets:
            return cls()
        _, step, halo = (int(v) for v in node.attr("row_tiles"))
        flat = [int(c) for c in node.attr("tap_columns") or [0, int(a_shape[-1])] * len(offsets)]
        return cls(offsets, tuple(zip(flat[0::2], flat[1::2])), step, halo)

    def row_edges(self, p: _Problem, a, c=None) -> list[list[int]]:
        """Where C's rows [0, p.m) must be cut: at A's tile edges (a row-tapped product: at its halo
        tiles' steps, and C's tile edges, given c, as a plain A cut like C would cut them)."""
        if not self.offsets:
            return [_tile_edges(p.a_row, p.m, a.block_rows)]
        edges = [list(range(self.step, p.m, self.step))]
        return edges + [_tile_edges(p.c_row, p.m, c.block_rows)] if c is not None else edges

    def _starts(self) -> list[int]:
        """Where each block starts in K (the blocks side by side)."""
        starts = [0]
        for c0, c1 in self.columns[:-1]:
            starts.append(starts[-1] + c1 - c0)
        return starts

    def k_chunks(self, p: _Problem, a, k_tile: int, w_tiles: list[int]) -> list[tuple[int, int]]:
        """K chunks that stay inside one tap's block (and A's lane tiles), [] for a plain product."""
        chunks = []
        for k0, (c0, c1) in zip(self._starts(), self.columns):
            lane_edges = [k0 + e for e in _tile_edges(p.a_col + c0, c1 - c0, a.lanes)]
            steps = range(k0 + k_tile, k0 + c1 - c0, k_tile)
            chunks += split_range(k0, k0 + c1 - c0, lane_edges, steps, w_tiles)
        return chunks

    def window(self, b: TiledBuilder, a, p: _Problem, rows: tuple[int, int], ks: tuple[int, int]):
        """The window of A an MM over C's rows `rows` and K `ks` reads."""
        (m0, m1), (k0, k1) = rows, ks
        if not self.offsets:
            return b.window(a, p.a_row + m0, p.a_row + m1, p.a_col + k0, p.a_col + k1)
        starts = self._starts()
        i, j = bisect_right(starts, k0) - 1, m0 // self.step
        row = j * (self.step + self.halo) + m0 - j * self.step + self.offsets[i]
        col = self.columns[i][0] - starts[i]
        return b.window(a, row, row + m1 - m0, p.a_col + k0 + col, p.a_col + k1 + col)


def _tile_edges(start: int, length: int, step: int) -> list[int]:
    """Tile boundaries (multiples of `step`) inside [start, start + length), relative to start."""
    return [e - start for e in range((start // step + 1) * step, start + length, step)]


@dataclass(frozen=True)
class _HeadViews:
    """How an lpuc.HeadMatMul (passes/address_heads) reads its operands and writes its result: an
    operand with lanes [offset, width] is [B, S, *] whose head h is lanes offset + h*width onward; a
    merged result is [B, M, H*N]; A with a_packed = g is [B, H/g, M, g*K] (g heads side by side in
    its lanes, passes/pair_heads). A plain MatMul has none of these."""

    heads: int = 0
    a_lanes: tuple[int, ...] = ()
    b_lanes: tuple[int, ...] = ()
    merge: bool = False
    a_packed: int = 1

    @classmethod
    def of(cls, node: Node) -> _HeadViews:
        if node.domain != LPUC_DOMAIN or node.op != "HeadMatMul":
            return cls()
        lanes = (tuple(int(v) for v in node.attr(k) or ()) for k in ("a_lanes", "b_lanes"))
        merge, packed = bool(node.attr("merge", 0)), int(node.attr("a_packed", 1))
        return cls(int(node.attr("heads")), *lanes, merge, packed)

    def a_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The [B, H, M, K] activations the MXM multiplies."""
        if self.a_packed > 1:
            return (shape[0], self.heads, shape[2], shape[3] // self.a_packed)
        return self.operand_shape(shape, self.a_lanes)

    def operand_shape(self, shape: tuple[int, ...], lanes: tuple[int, ...]) -> tuple[int, ...]:
        """The [B, H, rows, cols] operand the MXM multiplies."""
        return (shape[0], self.heads, shape[1], lanes[1]) if lanes else tuple(shape)

    def result_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return (shape[0], self.heads, shape[1], shape[2] // self.heads) if self.merge else tuple(shape)


@dataclass(frozen=True)
class _Problem:
    """One 2-D product: where its A, B and C start (view row, lane) and its M."""

    a_row: int
    a_col: int
    w_row: int
    w_col: int
    c_row: int
    c_col: int
    m: int


def _batch_index(shape: tuple[int, ...], batch: tuple[int, ...]) -> np.ndarray:
    """For each flat batch index of C, the flat batch index of an operand (numpy broadcasting)."""
    total = int(np.prod(batch, dtype=np.int64))
    if not shape:
        return np.zeros(total, dtype=np.int64)
    padded = (1,) * (len(batch) - len(shape)) + tuple(shape)
    idx = np.arange(int(np.prod(padded, dtype=np.int64))).reshape(padded)
    return np.broadcast_to(idx, batch).reshape(-1)
