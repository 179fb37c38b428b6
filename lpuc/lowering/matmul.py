"""MatMul -> MXM weight groups: LW a weight tile into a plane, stream activation tiles through it.

C[..., M, N] = A[..., M, K] @ B[..., K, N]. For every batch of C, the K range is cut into chunks of
at most the plane's k_tile (never crossing a tile of A's lanes or B's rows) and N into chunks of at
most n_tile. Each (k-chunk, n-chunk) is one weight group per plane it runs on: an LW, then one MM per
row segment of the activations (tall activations are shared among up to all planes). MMs after the
first k-chunk accumulate into C (read-modify-write of the C window). Weight-stationary order: a
weight tile is loaded once per plane and every activation row of that plane's share passes it.
"""

from __future__ import annotations

import math

import numpy as np

from lpuc.cost import Work
from lpuc.dtypes import words_per_row
from lpuc.ir.graph import Node
from lpuc.lowering.builder import TiledBuilder, split_range


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
    mode_name = mxm_mode_for(av.dtype, b.precision)
    mode = b.target.mxm_mode(mode_name)  # its tile sizes; the cost model charges its row rate
    a = b.tensor(a_name)
    # Constant weights are stored in the MXM input precision (the rounding the MXM applies anyway).
    w_dtype = np.float16 if mode_name == "fp16" and wv.dtype.kind == "f" else wv.dtype
    w = b.const_tensor(w_name, w_dtype) if wv.is_const else b.tensor(w_name)
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
        k_chunks = split_range(
            0, k, mode.k_tile, a.lanes, [p - w_row0 for p in range(0, w_row0 + k + 1, w.block_rows)]
        )
        n_chunks = split_range(0, n, mode.n_tile, c.lanes, w.lanes)
        for n0, n1 in n_chunks:
            # Tall activations: the rows are shared among the planes, each loading the weights. A part
            # goes through every k-chunk before the next part starts, so its result tiles are final
            # (and can be read, then freed) while the MXM works on the others.
            for part in _parts(m_segments, b.target.num_mxm):
                for ki, (k0, k1) in enumerate(k_chunks):
                    weights = b.window(w, w_row0 + k0, w_row0 + k1, n0, n1)
                    group = b.new_group()
                    b.emit(
                        "mxm.lw",
                        "MXM.LW",
                        [weights],
                        [],
                        node.name,
                        Work(words=weights.nrows * words_per_row(w.dtype)),
                        group=group,
                        attrs={**attrs, "group": group},
                    )
                    for mi, (m0, m1) in enumerate(part):
                        act = b.window(a, a_row0 + m0, a_row0 + m1, k0, k1)
                        out = b.window(c, c_row0 + m0, c_row0 + m1, n0, n1)
                        accumulate = ki > 0
                        b.emit(
                            "mxm.mm",
                            "MXM",
                            [act, out] if accumulate else [act],
                            [out],
                            node.name,
                            Work(vectors=m1 - m0, macs=(m1 - m0) * (k1 - k0) * (n1 - n0)),
                            group=group,
                            attrs={
                                **attrs,
                                "group": group,
                                "acc": accumulate,
                                "install": mi == 0,
                                "k": [k0, k1, k],
                            },
                        )


# At most this many row segments (tiles of A / C) per weight load: tall results are then finished a
# part at a time instead of all at the end, and a 224x224 image's int32 accumulators are not all live.
SEGMENTS_PER_PART = 8


def _parts(segments: list[tuple[int, int]], planes: int) -> list[list[tuple[int, int]]]:
    """Row segments cut into contiguous runs of near-equal length: one per plane, or more when
    that would put over SEGMENTS_PER_PART segments in a run."""
    count = max(1, min(planes, len(segments)), math.ceil(len(segments) / SEGMENTS_PER_PART))
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
