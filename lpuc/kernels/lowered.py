"""Kernels of the ops lpuc's passes introduce (domain "lpuc"): lowered convolutions, attention pieces."""

from __future__ import annotations

import math

import numpy as np

from lpuc.ir.graph import LPUC_DOMAIN
from lpuc.kernels import windows
from lpuc.kernels._common import accumulation_dtype, onnx_dtype
from lpuc.kernels.conv import im2col, scatter_transposed
from lpuc.kernels.matmul import accumulated_matmul
from lpuc.kernels.quantize import quantize_values
from lpuc.kernels.registry import KernelContext, kernel, run_kernel
from lpuc.kernels.softmax import softmax


@kernel("Im2Col", domain=LPUC_DOMAIN)
def im2col_kernel(ctx: KernelContext, x: np.ndarray) -> np.ndarray:
    """x [N, C, *spatial] -> [N * prod(out), C * prod(kernel)]; attrs kernel_shape/strides/pads/dilations.
    With channels_last, x is [N, *spatial, C] (the columns keep the same order). `pad_value` (an
    integer x's zero point, default 0) fills the padding, so that the padding is zero once centered;
    `pack_rows` p returns [rows / p, p * cols] (row-major: p consecutive rows side by side); with
    `row_bands` (p result rows) and `band_rows` r instead [r, p * cols], lane group g of row j holding
    row row_bands[g] + j (passes/band_conv_rows; a slab of it: rows out_rows of that, from the rows
    of x's [rows, cols] view from in_row0 on, x of shape in_shape). With a
    slab attribute: result rows [r0, r1) (before packing) from an input row slab (the [rows, cols]
    view of x from row in_row0; lpuc.kernels.windows). `const_columns` (values): columns of those
    constants after each row's own, before packing (passes/fold_bias_columns). `row_tiles` [rows,
    step, halo]: the result in that halo layout (lpuc.kernels.windows.halo_tiles; a slab's out_rows
    are rows of the sequence then). `pack_blocks` [L, step, start, W]: the p rows side by side are
    not consecutive but p blocks of an image row (pool_blocks_index; a slab's out_rows are the
    unpacked rows of the image rows its packed rows [r0, r1) `packed_rows` cover). `keep_columns`:
    only those window columns, in that order, before the constant ones (passes/row_taps' tails);
    `halo_columns` h with it: a halo layout's rows past each tile's step (its halo) hold only the
    first h of them, the others `pad_value` (no product reads them: their windows need not be read)."""
    pack = int(ctx.attr("pack_rows", 1))  # `pack_rows` consecutive rows side by side (quantize_int8)
    blocks = ctx.attr("pack_blocks")
    if ctx.attr("row_bands") and ctx.attr("slab"):  # (rows [r0, r1) of the banded result)
        return _banded_slab(ctx, x)
    if ctx.attr("slab"):
        cols = windows.gather_columns(x, ctx.attrs, int(ctx.attr("pad_value", 0)))
        cols = _with_const_columns(_kept(cols, ctx.attr("keep_columns")), ctx.attr("const_columns"))
        if ctx.attr("halo_columns") is not None:
            _clear_halo_tails(ctx, cols, *ctx.attr("slab")["out_rows"])
        if blocks:
            slab = ctx.attr("slab")
            index = pool_blocks_index(blocks, pack, *slab["packed_rows"]) - int(slab["out_rows"][0])
            return cols[index].reshape(len(index), -1)
        return cols if pack == 1 else cols.reshape(cols.shape[0] // pack, cols.shape[1] * pack)
    if ctx.attr("channels_last", 0):
        x = np.moveaxis(x, -1, 1)
    geometry = (ctx.attr("kernel_shape"), ctx.attr("strides"), ctx.attr("pads"), ctx.attr("dilations"))
    pad_value = int(ctx.attr("pad_value", 0))
    if pad_value == 0:
        cols = im2col(x, *geometry)
    else:  # shift so that the pad value is 0, pad with zeros, shift back (exact in int64)
        cols = (im2col(x.astype(np.int64) - pad_value, *geometry) + pad_value).astype(x.dtype)
    cols = _with_const_columns(_kept(cols, ctx.attr("keep_columns")), ctx.attr("const_columns"))
    if ctx.attr("row_bands"):  # lane group g of row j: row row_bands[g] + j (passes/band_conv_rows)
        rows = int(ctx.attr("band_rows"))
        return np.concatenate([cols[int(r) : int(r) + rows] for r in ctx.attr("row_bands")], axis=1)
    if ctx.attr("row_tiles"):  # (a row-tapped product's operand in its halo layout: passes/row_taps)
        rows, step, halo = (int(v) for v in ctx.attr("row_tiles"))
        cols = cols[windows.halo_index(rows, step, halo)]
        if ctx.attr("halo_columns") is not None:
            at = 0
            for v0, v1 in windows.halo_tiles(rows, step, halo):
                _clear_halo_tails(ctx, cols[at : at + v1 - v0], v0, v1)
                at += v1 - v0
    if blocks:
        index = pool_blocks_index(blocks, pack, 0, len(cols) // int(blocks[3]) * int(blocks[0]))
        return cols[index].reshape(len(index), -1)
    return cols if pack == 1 else cols.reshape(cols.shape[0] // pack, cols.shape[1] * pack)


def _banded_slab(ctx: KernelContext, x: np.ndarray) -> np.ndarray:
    """Rows [r0, r1) of a banded Im2Col (passes/band_conv_rows): per band g the Im2Col's own rows
    row_bands[g] + [r0, r1), gathered as a slab of them, side by side."""
    slab = ctx.attr("slab")
    r0, r1 = slab["out_rows"]
    placed = _placed(x, slab)
    view = placed.reshape(-1, placed.shape[-1])  # (the [rows, cols] view, from row 0)
    fill = int(ctx.attr("pad_value", 0))
    bands = []
    for start in ctx.attr("row_bands"):
        rows = {"out_rows": [int(start) + r0, int(start) + r1], "in_row0": 0, "in_shape": slab["in_shape"]}
        if not ctx.attr("channels_last", 0):
            rows["channels_first"] = True
        cols = windows.gather_columns(view, {**ctx.attrs, "slab": rows}, fill)
        bands.append(_with_const_columns(cols, ctx.attr("const_columns")))
    return np.concatenate(bands, axis=1)


def pool_blocks_index(pack_blocks, pack: int, r0: int, r1: int) -> np.ndarray:
    """[r1 - r0, pack] the unpacked row (image row * W + x) block b of packed row r holds, in the
    layout passes/pool_ordered_pack gives a packed convolution a strided MaxPool reads: each image
    row of W pixels is L packed rows, block b of its row k pixel x = start + b * step + k, clamped
    to [0, W) (a clamped pixel repeats one its pool window holds anyway: the max is the same)."""
    rows, step, start, width = (int(v) for v in pack_blocks)
    image_row, k = np.divmod(np.arange(r0, r1), rows)
    x = np.clip(start + step * np.arange(pack)[None, :] + k[:, None], 0, width - 1)
    return image_row[:, None] * width + x


@kernel("UnpackBlocks", domain=LPUC_DOMAIN)
def unpack_blocks(ctx: KernelContext, x: np.ndarray) -> np.ndarray:
    """[..., Q, p * C] -> [..., p * Q, C]: block b of row q is pixel b * Q + q of its image row (the
    pool_ordered_pack layout after its pool). With a slab attribute: result rows [r0, r1) (view
    rows of the result) from the input's [rows, cols] view starting at its row in_row0."""
    blocks, cols = int(ctx.attr("blocks")), int(ctx.attr("block_rows"))
    slab = ctx.attr("slab")
    if not slab:
        *lead, q, width = x.shape
        c = width // blocks
        y = x.reshape(-1, q, blocks, c).transpose(0, 2, 1, 3)
        return np.ascontiguousarray(y).reshape(*lead, q * blocks, c)
    r0, r1 = slab["out_rows"]
    x2 = x.reshape(-1, x.shape[-1])
    c = x2.shape[1] // blocks
    out = np.arange(r0, r1)
    image_row, j = np.divmod(out, cols * blocks)
    block, q = np.divmod(j, cols)
    rows = image_row * cols + q - int(slab["in_row0"])
    return x2.reshape(len(x2), blocks, c)[rows, block]


def _clear_halo_tails(ctx: KernelContext, cols: np.ndarray, v0: int, v1: int) -> None:
    """In place: the rows of cols (rows [v0, v1) of the sequence a halo layout's tile holds) past
    the tile's step or the result's rows hold `pad_value` in their kept columns from halo_columns on."""
    rows, step, _ = (int(v) for v in ctx.attr("row_tiles"))
    start = max(0, min(step - v0 % step, rows - v0))
    cols[start:, int(ctx.attr("halo_columns")) : len(ctx.attr("keep_columns"))] = int(
        ctx.attr("pad_value", 0)
    )


def _kept(cols: np.ndarray, keep) -> np.ndarray:
    """cols [rows, K], or only its columns `keep` in that order when given."""
    return cols if not keep else cols.take(np.asarray(keep, dtype=np.intp), axis=1)


def _with_const_columns(cols: np.ndarray, values) -> np.ndarray:
    """cols [rows, K] followed by one column per value, each holding that value in every row."""
    if not values:
        return cols
    consts = np.broadcast_to(np.asarray(values, dtype=cols.dtype), (cols.shape[0], len(values)))
    return np.concatenate([cols, consts], axis=1)


@kernel("UnbandRows", domain=LPUC_DOMAIN)
def unband_rows(ctx: KernelContext, x: np.ndarray) -> np.ndarray:
    """x [1, Hb, W, p * C] (p bands of image rows side by side: passes/band_conv_rows) -> [1, H, W, C]:
    attribute bands (start, count) per band: rows [start, start + count) of the result are band g's
    first count rows, from its lane group g. H is the last band's start + count. With a slab
    attribute: result rows [r0, r1) of the [rows, cols] view (x: rows of x's view from in_row0 on, x of
    shape in_shape)."""
    bands = [int(v) for v in ctx.attr("bands")]
    pairs = list(zip(bands[0::2], bands[1::2]))
    slab = ctx.attr("slab")
    if slab:  # x: rows of the banded rows' [rows, cols] view
        x = _placed(x, slab)
    c = x.shape[-1] // len(pairs)
    out = np.empty((x.shape[0], pairs[-1][0] + pairs[-1][1], x.shape[2], c), x.dtype)
    for g, (start, count) in enumerate(pairs):
        out[:, start : start + count] = x[:, :count, :, g * c : (g + 1) * c]
    if slab:  # result rows [r0, r1) of its [rows, cols] view
        r0, r1 = slab["out_rows"]
        return out.reshape(-1, c)[r0:r1]
    return out


def _placed(x: np.ndarray, slab: dict) -> np.ndarray:
    """The input of shape slab["in_shape"] with x, rows of its [rows, cols] view from slab["in_row0"]
    on, in place (the rows a banded op's slab does not read, zero: its windows read none of them)."""
    shape = [int(d) for d in slab["in_shape"]]
    cols = shape[-1]
    rows = math.prod(shape[:-1])
    row0 = int(slab["in_row0"])
    view = np.zeros((rows, cols), x.dtype)
    view[row0 : row0 + x.shape[0]] = x.reshape(-1, cols)[: rows - row0]
    return view.reshape(shape)


@kernel("SaturatingCast", domain=LPUC_DOMAIN)
def saturating_cast(ctx: KernelContext, x: np.ndarray) -> np.ndarray:
    """Float to the integer type `to` (an ONNX TensorProto code) in one VXM op: round half to even,
    saturate to the type's range, convert (what Round, Clip to the type's range and Cast compute;
    passes/fold_requantize emits it)."""
    to = np.dtype(onnx_dtype(int(ctx.attr("to")), "SaturatingCast"))
    if to.kind not in "iu" or x.dtype.kind != "f":
        raise ValueError(f"SaturatingCast: float to integer only, not {x.dtype} to {to}")
    return quantize_values(x, None, to)


@kernel("ReshapeRows", domain=LPUC_DOMAIN)
def reshape_rows(ctx: KernelContext, x: np.ndarray) -> np.ndarray:
    """Rows [r0, r1) of a row-major reshape to out_cols columns (attr slab), from the input's
    [rows, cols] view x starting at its row in_row0 (lowering's slabs of a Reshape that regroups rows)."""
    slab = ctx.attr("slab")
    (r0, r1), cols = slab["out_rows"], int(slab["out_cols"])
    start = r0 * cols - int(slab["in_row0"]) * x.shape[-1]
    return x.reshape(-1)[start : start + (r1 - r0) * cols].reshape(r1 - r0, cols)


@kernel("TransposeRows", domain=LPUC_DOMAIN)
def transpose_rows(ctx: KernelContext, x: np.ndarray) -> np.ndarray:
    """Rows [r0, r1) (attr slab out_rows) of the transpose of the matrix x [rows, cols]: its columns
    [r0, r1) as rows (lowering's slabs of a one-matrix Transpose; x holds only those columns)."""
    r0, r1 = ctx.attr("slab")["out_rows"]
    return np.ascontiguousarray(x.reshape(x.shape[-2], x.shape[-1])[:, r0:r1].T)


@kernel("ConvTransposeScatter", domain=LPUC_DOMAIN)
def conv_transpose_scatter(
    ctx: KernelContext, cols: np.ndarray, bias: np.ndarray | None = None
) -> np.ndarray:
    """ConvTranspose columns [N, M * prod(kernel), L] -> image [N, M, *out] (+ bias per channel)."""
    work = np.float64 if cols.dtype == np.float64 else np.float32
    image = scatter_transposed(
        cols.astype(work, copy=False),
        ctx.attr("full_shape"),
        ctx.attr("kernel_shape"),
        ctx.attr("strides"),
        ctx.attr("dilations"),
        ctx.attr("pads_begin"),
        ctx.attr("out_shape"),
    )
    if bias is not None:
        image = image + bias.astype(work).reshape(1, -1, *([1] * (image.ndim - 2)))
    return image.astype(cols.dtype, copy=False)


@kernel("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", domain=LPUC_DOMAIN)
def channels_last_pool(ctx: KernelContext, x: np.ndarray) -> np.ndarray:
    """The ONNX pooling op of the same name on a channels-last [N, *spatial, C] tensor (result
    channels-last too): sink_transposes keeps convolution chains channels-last through pooling.
    With a slab attribute: result rows [r0, r1) from an input row slab (MaxPool, AveragePool)."""
    if ctx.attr("slab"):
        return _pool_rows(ctx, x)
    onnx_ctx = KernelContext(ctx.op_type, ctx.attrs, ctx.opset, 1)
    (y,) = run_kernel(onnx_ctx, [np.moveaxis(x, -1, 1)])
    return np.moveaxis(y, 1, -1)


@kernel("DepthwiseConv", domain=LPUC_DOMAIN)
def depthwise_conv(ctx: KernelContext, x: np.ndarray, taps: np.ndarray, bias: np.ndarray | None = None):
    """A depthwise 2-D convolution of a channels-last [N, H, W, C] tensor (result channels-last):
    `taps` [kh * kw, C] holds each window tap's weights over the channels (sink_transposes). The
    sum runs over the taps in order from zero, as the Conv kernel's depthwise path does. With a slab
    attribute: result rows [r0, r1) from an input row slab."""
    work = accumulation_dtype(x.dtype)
    if not ctx.attr("slab"):
        channels = x.shape[-1]
        weights = taps.T.reshape(channels, 1, *ctx.attr("kernel_shape"))
        conv_ctx = KernelContext("Conv", {**ctx.attrs, "group": channels}, 11, 1)
        (y,) = run_kernel(conv_ctx, [np.moveaxis(x, -1, 1), weights] + ([] if bias is None else [bias]))
        return np.ascontiguousarray(np.moveaxis(y, 1, -1))
    weights = taps.astype(work, copy=False)
    shifted = windows.shifted_taps(x, ctx.attrs, 0, work)
    if shifted is not None:  # the same products summed in the same order, over strided views
        views, crop = shifted
        tap = np.empty(views[0].shape, work)
        value = crop(tap)  # (products and sums over the result rows alone: see shifted_taps)
        y = np.zeros(value.shape, work)
        for t, view in enumerate(views):
            np.copyto(tap, view)
            np.multiply(value, weights[t], out=value)
            y += value
        if bias is not None:
            y += bias.astype(work)
        return y.astype(x.dtype, copy=False)
    wide = x.astype(work, copy=False)
    folded = windows.fold_taps(wide, ctx.attrs, 0)
    if folded is None:
        values = windows.gather(wide, ctx.attrs, 0)  # [rows, taps, C]
        folded = (values[:, t] for t in range(values.shape[1]))
    y = None
    for t, value in enumerate(folded):  # tap by tap, as over the gathered [rows, taps, C]
        if y is None:
            y = np.zeros(value.shape, work)
        np.multiply(value, weights[t], out=value)  # (an array of its own)
        y += value
    if bias is not None:
        y = y + bias.astype(work)
    return y.astype(x.dtype, copy=False)


def _pool_rows(ctx: KernelContext, x: np.ndarray) -> np.ndarray:
    if ctx.op_type == "MaxPool":
        low = -np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min
        return windows.gather_max(x, ctx.attrs, low)
    taps = math.prod(int(k) for k in ctx.attr("kernel_shape"))
    count = taps if ctx.attr("count_include_pad", 0) else windows.window_counts(ctx.attrs)
    # numpy sums the middle axis of the gathered [rows, taps, C] by folding the taps in order, from
    # the first: the same sums tap by tap, each tap widened to float64 (exactly) as it is added,
    # without the gather. Only for channels in multiples of 8: with fewer numpy sums in another
    # order, and with a remainder its NaN payloads come out otherwise (tests/kernels/test_fast_paths.py).
    lanes = x.shape[-1] if x.ndim == 2 else 0
    folded = windows.fold_taps(x, ctx.attrs, 0) if lanes and lanes % 8 == 0 else None
    if folded is None:
        # (widened before the gather: the same values, and the cast touches each input value once
        # instead of each of the taps that read it)
        total = windows.gather(x.astype(np.float64), ctx.attrs, 0).sum(axis=1)
    else:
        total = None
        for value in folded:
            if total is None:
                total = value.astype(np.float64)
            else:
                total += value
    return (total / count).astype(x.dtype)


def evaluate_expression(steps: list[dict], operands: list[np.ndarray | None]) -> np.ndarray:
    """A fused elementwise expression (lpuc.passes.fuse_elementwise's steps) over its operands."""
    results: list[np.ndarray] = []
    with np.errstate(all="ignore"):  # once: entering it costs microseconds
        for step in steps:
            args = [
                None if a == "-" else operands[int(a[1:])] if a[0] == "i" else results[int(a[1:])]
                for a in step["args"]
            ]
            ctx = KernelContext(step["op"], step["attrs"], step.get("opset", 0), 1, step["domain"])
            results.append(run_kernel(ctx, args)[0])
    return results[-1]


@kernel("FusedSoftmax", domain=LPUC_DOMAIN)
def fused_softmax(ctx: KernelContext, *operands: np.ndarray | None) -> np.ndarray:
    """Softmax over the last axis of an elementwise expression (attr expr; e.g. x * scale + mask).

    Operand 0 has the result's shape; the others are that shape too, one row of the last axis, a
    scalar, or (attr triangles: operand -> diagonal d) a causal mask given as its two values [on, off]:
    `on` where column - row >= d in each [S, S] matrix (S: attr `matrix_rows`), `off` below. The
    runtime may hand over a 2-D row slab of the shaped operands starting at view row `row0`: rows keep
    their last axis, so a row operand is applied as a vector along it."""
    rows = [o if o is None or o.ndim < 2 or o.size != o.shape[-1] else o.reshape(-1) for o in operands]
    for k, diagonal in (ctx.attr("triangles") or {}).items():
        rows[int(k)] = _causal_mask(operands[0].shape, ctx, int(diagonal), operands[int(k)])
    x = evaluate_expression(ctx.attr("expr"), rows)
    return softmax(np.asarray(x).reshape(operands[0].shape), -1)


def _causal_mask(shape: tuple[int, ...], ctx: KernelContext, diagonal: int, values: np.ndarray) -> np.ndarray:
    """The mask of FusedSoftmax's `triangles` for view rows row0.. of a [rows, cols] slab (or whole)."""
    cols = int(shape[-1])
    rows = int(np.prod(shape[:-1], dtype=np.int64))
    matrix_rows = int(ctx.attr("matrix_rows", shape[-2] if len(shape) > 1 else 1))
    row = (int(ctx.attr("row0", 0)) + np.arange(rows)) % matrix_rows
    on = np.arange(cols)[None, :] - row[:, None] >= diagonal
    return np.where(on, values[0], values[1]).reshape(shape)


@kernel("HeadMatMul", domain=LPUC_DOMAIN)
def head_matmul(ctx: KernelContext, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """MatMul over [B, H, *, *] operands, either of which may be given as its heads' lanes: a_lanes /
    b_lanes = [offset, width] read head h from lanes offset + h*width of a [B, S, *] tensor (as
    passes/address_heads folds the head split); merge = 1 returns [B, M, H*N] instead of [B, H, M, N];
    a_packed = g gives A as [B, H/g, M, g*K], g heads side by side in its lanes (passes/pair_heads)."""
    heads = int(ctx.attr("heads"))
    a = _packed_heads(a, int(ctx.attr("a_packed", 1)))
    y = accumulated_matmul(
        _heads(a, heads, ctx.attr("a_lanes")), _heads(b, heads, ctx.attr("b_lanes"))
    ).astype(a.dtype, copy=False)
    if ctx.attr("merge", 0):
        y = y.transpose(0, 2, 1, 3).reshape(y.shape[0], y.shape[2], heads * y.shape[3])
    return y


def _packed_heads(x: np.ndarray, packed: int) -> np.ndarray:
    """[B, H/g, M, g*K] with g = `packed` heads side by side in the lanes -> [B, H, M, K]."""
    if packed == 1:
        return x
    b, groups, m, width = x.shape
    k = width // packed
    return x.reshape(b, groups, m, packed, k).transpose(0, 1, 3, 2, 4).reshape(b, groups * packed, m, k)


@kernel("SegmentedSoftmax", domain=LPUC_DOMAIN)
def segmented_softmax(ctx: KernelContext, x: np.ndarray) -> np.ndarray:
    """Softmax over each run of `segment` elements of the last axis (heads side by side in a row:
    passes/pair_heads). The runtime may hand over a row slab: rows keep their last axis."""
    segment = int(ctx.attr("segment"))
    y = softmax(x.reshape(*x.shape[:-1], x.shape[-1] // segment, segment), -1)
    return y.reshape(x.shape)


def _heads(x: np.ndarray, heads: int, lanes: list[int]) -> np.ndarray:
    if not lanes:
        return x
    offset, width = lanes
    window = x[..., offset : offset + heads * width]
    return window.reshape(*x.shape[:-1], heads, width).transpose(0, 2, 1, 3)
