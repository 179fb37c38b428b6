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
"""

from __future__ import annotations

import numpy as np

from lpuc.cost import Work
from lpuc.dtypes import words_per_row
from lpuc.ir.graph import Node
from lpuc.lowering.builder import TiledBuilder, split_range


def mxm_mode_for(dtype: np.dtype, precision: str) -> str:
    if np.dtype(dtype).kind in "iub":
        return "int8" if np.dtype(dtype).itemsize == 1 else "fp32"
    return precision


def lower_matmul(b: TiledBuilder, node: Node) -> None:
    a_name, w_name = node.inputs[0], node.inputs[1]
    av, wv, cv = (b.graph.values[n] for n in (a_name, w_name, node.outputs[0]))
    if len(av.shape) < 2 or len(wv.shape) < 2:
        raise AssertionError("MatMul operands must be at least 2-D after canonicalize_matmul")
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
    k, n = av.shape[-1], wv.shape[-1]
    if k == 0:
        raise AssertionError("MatMul with K = 0 must be folded before lowering")
    attrs = {"precision": mode_name}
    for a_row0, w_row0, c_row0, m in _problems(av.shape, wv.shape, cv.shape):
        # Row segments of the activations that stay inside one tile of A and of C.
        m_segments = split_range(
            0,
            m,
            [p - a_row0 for p in range(0, a_row0 + m + 1, a.block_rows)],
            [p - c_row0 for p in range(0, c_row0 + m + 1, c.block_rows)],
        )
        # A weight load may read several tiles of a constant (spread over slices), one of anything else.
        w_tiles = (
            []
            if wv.is_const and b.enabled("weight_spread")
            else [p - w_row0 for p in range(0, w_row0 + k + 1, w.block_rows)]
        )
        k_chunks = split_range(0, k, mode.k_tile, a.lanes, w_tiles)
        n_chunks = split_range(0, n, mode.n_tile, c.lanes, w.lanes)
        if len(k_chunks) == 1 or not b.enabled("mxm_accumulators"):
            _weight_stationary(
                b, node, attrs, a, w, c, (a_row0, w_row0, c_row0), m_segments, k_chunks, n_chunks, k
            )
        else:
            # Partial sums stay in the plane's accumulators, which hold acc_rows rows.
            segments = split_range(0, m, b.target.mxm.acc_rows, [e for _, e in m_segments])
            _accumulated(b, node, attrs, a, w, c, (a_row0, w_row0, c_row0), segments, k_chunks, n_chunks, k)


def _weight_stationary(b, node, attrs, a, w, c, origin, m_segments, k_chunks, n_chunks, k) -> None:
    """Load each weight tile once per plane and stream every row of that plane's share past it (tall
    activations are shared among the planes). K chunks after the first add into C through SRAM."""
    a_row0, w_row0, c_row0 = origin
    for n0, n1 in n_chunks:
        for ki, (k0, k1) in enumerate(k_chunks):
            weights = b.windows(w, w_row0 + k0, w_row0 + k1, n0, n1)
            for part in _parts(m_segments, b.target.num_mxm):
                group = _load(b, node, attrs, w, weights)
                for mi, (m0, m1) in enumerate(part):
                    act = b.window(a, a_row0 + m0, a_row0 + m1, k0, k1)
                    out = b.window(c, c_row0 + m0, c_row0 + m1, n0, n1)
                    b.emit(
                        "mxm.mm",
                        "MXM",
                        [act, out] if ki else [act],
                        [out],
                        node.name,
                        Work(vectors=m1 - m0, macs=(m1 - m0) * (k1 - k0) * (n1 - n0)),
                        group=group,
                        attrs={**attrs, "group": group, "install": mi == 0, "acc": ki > 0, "k": [k0, k1, k]},
                    )


def _accumulated(b, node, attrs, a, w, c, origin, segments, k_chunks, n_chunks, k) -> None:
    """K spans several weight tiles: each row segment is one chain on one plane, a weight load and an
    MM per K chunk; the plane sums the partial products in its accumulators and the last MM writes
    the total, so no partial sum goes through SRAM."""
    a_row0, w_row0, c_row0 = origin
    for n0, n1 in n_chunks:
        for m0, m1 in segments:
            chain = -1
            for ki, (k0, k1) in enumerate(k_chunks):
                last = ki == len(k_chunks) - 1
                group = _load(b, node, attrs, w, b.windows(w, w_row0 + k0, w_row0 + k1, n0, n1), chain)
                chain = group if chain < 0 else chain
                act = b.window(a, a_row0 + m0, a_row0 + m1, k0, k1)
                out = b.window(c, c_row0 + m0, c_row0 + m1, n0, n1)
                mm_attrs = {**attrs, "group": group, "install": True, "k": [k0, k1, k]}
                if ki > 0:
                    mm_attrs.update(from_acc=True, k_from=k_chunks[0][0])
                if not last:
                    mm_attrs.update(keep=True, lanes=n1 - n0)
                b.emit(
                    "mxm.mm",
                    "MXM",
                    [act],
                    [out] if last else [],
                    node.name,
                    Work(vectors=m1 - m0, macs=(m1 - m0) * (k1 - k0) * (n1 - n0)),
                    group=group,
                    chain=chain,
                    attrs=mm_attrs,
                )


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


def _parts(segments: list[tuple[int, int]], planes: int) -> list[list[tuple[int, int]]]:
    """Row segments cut into at most `planes` contiguous runs of near-equal length."""
    count = max(1, min(planes, len(segments)))
    bounds = [round(i * len(segments) / count) for i in range(count + 1)]
    return [segments[lo:hi] for lo, hi in zip(bounds, bounds[1:])]


def _problems(a_shape, w_shape, c_shape) -> list[tuple[int, int, int, int]]:
    """(A row, B row, C row, M) of each 2-D product; shared 2-D weights make one tall product."""
    m, k = a_shape[-2], a_shape[-1]
    batch = tuple(c_shape[:-2])
    if int(np.prod(w_shape[:-2], dtype=np.int64)) == 1 and tuple(a_shape[:-2]) == batch:
        return [(0, 0, 0, m * int(np.prod(batch, dtype=np.int64)))]
    a_index, w_index = _batch_index(a_shape[:-2], batch), _batch_index(w_shape[:-2], batch)
    return [(int(a_index[i]) * m, int(w_index[i]) * k, i * m, m) for i in range(len(a_index))]


def _batch_index(shape: tuple[int, ...], batch: tuple[int, ...]) -> np.ndarray:
    """For each flat batch index of C, the flat batch index of an operand (numpy broadcasting)."""
    total = int(np.prod(batch, dtype=np.int64))
    if not shape:
        return np.zeros(total, dtype=np.int64)
    padded = (1,) * (len(batch) - len(shape)) + tuple(shape)
    idx = np.arange(int(np.prod(padded, dtype=np.int64))).reshape(padded)
    return np.broadcast_to(idx, batch).reshape(-1)
