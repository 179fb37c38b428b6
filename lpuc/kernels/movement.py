"""Kernels that move data without arithmetic: Transpose, Concat, Split, Slice, Expand, Tile, Pad,
DepthToSpace, SpaceToDepth, Trilu, ReverseSequence and CenterCropPad."""

from __future__ import annotations

import math

import numpy as np

from lpuc.kernels._common import ints, normalize_axes, normalize_axis, opset_before
from lpuc.kernels.registry import KernelContext, kernel


def _rotation_split(perm: tuple[int, ...]) -> tuple[int, int] | None:
    """(p, j) when perm keeps axes [0, p) and swaps the groups [p, j) and [j, n): the tensor is then a
    batch of 2-D matrices being transposed (NHWC -> NCHW is (1, 3)). None otherwise."""
    n = len(perm)
    p = next((i for i, a in enumerate(perm) if a != i), n)
    for j in range(p + 1, n):
        if perm[p:] == (*range(j, n), *range(p, j)):
            return p, j
    return None


# Elements a row block of the blocked transpose reads: the block's source rows are C elements
# apart, and a power-of-two C makes them collide in the cache unless the block stays small.
_TRANSPOSE_BLOCK = 8192


@kernel("Transpose")
def transpose_kernel(ctx: KernelContext, x: np.ndarray) -> np.ndarray:
    perm = ctx.attr("perm")
    perm = tuple(reversed(range(x.ndim))) if perm is None else normalize_axes(perm, x.ndim)
    split = _rotation_split(perm)
    if split is None or x.size < 65536:  # numpy's own copy is fine for these
        return np.transpose(x, perm)
    # A batch of matrix transposes [A, R, C] -> [A, C, R], copied R-blocks at a time so the
    # strided reads of a block stay in cache.
    p, j = split
    a, r, c = math.prod(x.shape[:p]), math.prod(x.shape[p:j]), math.prod(x.shape[j:])
    source = x.reshape(a, r, c)
    out = np.empty((a, c, r), dtype=x.dtype)
    block = max(16, _TRANSPOSE_BLOCK // c)
    for start in range(0, r, block):
        out[:, :, start : start + block] = source[:, start : start + block].transpose(0, 2, 1)
    return out.reshape([x.shape[i] for i in perm])


@kernel("Concat")
def concat_kernel(ctx: KernelContext, *inputs: np.ndarray) -> np.ndarray:
    axis = normalize_axis(ctx.attr("axis", 1), inputs[0].ndim)  # optional (default 1) only in opset 1
    return np.concatenate(inputs, axis=axis)


def split_sizes(dim: int, parts: int) -> list[int]:
    """Split into `parts` chunks of ceil(dim / parts), the last one taking the remainder."""
    chunk = -(-dim // parts)
    last = dim - chunk * (parts - 1)
    if last < 0:
        raise ValueError(f"Split: cannot split a dimension of {dim} into {parts} outputs")
    return [chunk] * (parts - 1) + [last]


@kernel("Split")
def split_kernel(
    ctx: KernelContext, x: np.ndarray, split: np.ndarray | None = None
) -> tuple[np.ndarray, ...]:
    axis = normalize_axis(ctx.attr("axis", 0), x.ndim)
    sizes = ints(split) if split is not None else ctx.attr("split")  # an attribute before opset 13
    if not sizes:
        sizes = split_sizes(x.shape[axis], ctx.attr("num_outputs", ctx.num_outputs))
    if sum(sizes) != x.shape[axis] or any(s < 0 for s in sizes):
        raise ValueError(f"Split: sizes {sizes} do not partition dimension {x.shape[axis]}")
    return tuple(np.split(x, np.cumsum(sizes)[:-1], axis=axis))


def _slice_bounds(start: int, end: int, step: int, dim: int) -> slice:
    """ONNX clamping of one axis's start/end (different from Python's for negative steps)."""
    if step == 0:
        raise ValueError("Slice: steps must not be zero")
    start = start + dim if start < 0 else start
    end = end + dim if end < 0 else end
    if step > 0:
        return slice(min(max(start, 0), dim), min(max(end, 0), dim), step)
    start = min(max(start, 0), dim - 1)
    end = min(max(end, -1), dim - 1)
    return slice(start, None if end < 0 else end, step)  # end -1 means "past index 0"


@kernel("Slice")
def slice_kernel(
    ctx: KernelContext,
    x: np.ndarray,
    starts: np.ndarray | None = None,
    ends: np.ndarray | None = None,
    axes: np.ndarray | None = None,
    steps: np.ndarray | None = None,
) -> np.ndarray:
    if starts is None:  # opset < 10: starts/ends/axes are attributes
        begin, end, listed_axes, step = ctx.attr("starts"), ctx.attr("ends"), ctx.attr("axes"), None
    else:
        begin, end, listed_axes, step = ints(starts), ints(ends), ints(axes), ints(steps)
    listed_axes = range(len(begin)) if listed_axes is None else normalize_axes(listed_axes, x.ndim)
    step = step or [1] * len(begin)
    if not len(begin) == len(end) == len(listed_axes) == len(step):
        raise ValueError("Slice: starts, ends, axes and steps differ in length")
    index = [slice(None)] * x.ndim
    for axis, b, e, s in zip(listed_axes, begin, end, step, strict=True):
        index[axis] = _slice_bounds(b, e, s, x.shape[axis])
    return x[tuple(index)]


@kernel("Expand")
def expand_kernel(ctx: KernelContext, x: np.ndarray, shape: np.ndarray) -> np.ndarray:
    # Bidirectional broadcast: a 1 in `shape` keeps the input's dim. Copy: broadcast views are read-only.
    return np.broadcast_to(x, np.broadcast_shapes(x.shape, tuple(ints(shape)))).copy()


@kernel("Tile")
def tile_kernel(
    ctx: KernelContext, x: np.ndarray, repeats: np.ndarray, axis: np.ndarray | None = None
) -> np.ndarray:
    if opset_before(ctx, 6):  # Tile-1: a scalar count of tiles along one axis
        counts = [1] * x.ndim
        counts[normalize_axis(int(axis), x.ndim)] = int(repeats)
    else:
        counts = ints(repeats)
    if len(counts) != x.ndim or any(c < 0 for c in counts):
        raise ValueError(f"Tile: repeats {counts} do not fit input rank {x.ndim}")
    return np.tile(x, counts)


_PAD_MODES = ("constant", "reflect", "edge", "wrap")  # named as numpy.pad names them


@kernel("Pad")
def pad_kernel(
    ctx: KernelContext,
    x: np.ndarray,
    pads: np.ndarray | None = None,
    constant_value: np.ndarray | None = None,
    axes: np.ndarray | None = None,
) -> np.ndarray:
    mode = ctx.attr("mode", "constant")
    if mode not in _PAD_MODES:
        raise ValueError(f"Pad: unsupported mode {mode!r}")
    if pads is None:  # opset < 11: attributes ("paddings" in opset 1)
        amounts, fill = ctx.attr("pads", ctx.attr("paddings")), ctx.attr("value", 0.0)
    else:
        has_fill = constant_value is not None and constant_value.size
        amounts, fill = ints(pads), constant_value.reshape(-1)[0] if has_fill else 0
    padded_axes = range(x.ndim) if axes is None else normalize_axes(ints(axes), x.ndim)
    if len(amounts) != 2 * len(padded_axes):
        raise ValueError(f"Pad: {len(amounts)} pads for {len(padded_axes)} axes")
    before, after = [0] * x.ndim, [0] * x.ndim
    for i, axis in enumerate(padded_axes):
        before[axis], after[axis] = amounts[i], amounts[i + len(padded_axes)]
    # Negative pads crop; the rest is ordinary padding of the cropped tensor.
    kept = zip(before, after, x.shape, strict=True)
    x = x[tuple(slice(max(-b, 0), dim - max(-a, 0)) for b, a, dim in kept)]
    widths = [(max(b, 0), max(a, 0)) for b, a in zip(before, after, strict=True)]
    if mode == "constant":
        return np.pad(x, widths, mode="constant", constant_values=np.asarray(fill).astype(x.dtype))
    return np.pad(x, widths, mode=mode)


def _blocksize(ctx: KernelContext, x: np.ndarray) -> int:
    if x.ndim != 4:
        raise ValueError(f"{ctx.op_type}: input must be 4-D (N, C, H, W), got shape {x.shape}")
    return int(ctx.attr("blocksize"))


def _block_mode(ctx: KernelContext) -> str:
    mode = ctx.attr("mode", "DCR")
    if mode not in ("DCR", "CRD"):
        raise ValueError(f"{ctx.op_type}: unsupported mode {mode!r}")
    return mode


@kernel("DepthToSpace")
def depth_to_space_kernel(ctx: KernelContext, x: np.ndarray) -> np.ndarray:
    b = _blocksize(ctx, x)
    n, c, h, w = x.shape
    if _block_mode(ctx) == "DCR":  # channels ordered (block row, block column, depth)
        blocks = x.reshape(n, b, b, c // (b * b), h, w).transpose(0, 3, 4, 1, 5, 2)
    else:  # CRD: (depth, block row, block column)
        blocks = x.reshape(n, c // (b * b), b, b, h, w).transpose(0, 1, 4, 2, 5, 3)
    return blocks.reshape(n, c // (b * b), h * b, w * b)


@kernel("SpaceToDepth")
def space_to_depth_kernel(ctx: KernelContext, x: np.ndarray) -> np.ndarray:
    b = _blocksize(ctx, x)
    n, c, h, w = x.shape
    blocks = x.reshape(n, c, h // b, b, w // b, b)
    if _block_mode(ctx) == "DCR":
        blocks = blocks.transpose(0, 3, 5, 1, 2, 4)
    else:
        blocks = blocks.transpose(0, 1, 3, 5, 2, 4)
    return blocks.reshape(n, c * b * b, h // b, w // b)


@kernel("Trilu")
def trilu_kernel(ctx: KernelContext, x: np.ndarray, k: np.ndarray | None = None) -> np.ndarray:
    diagonal = 0 if k is None else int(k)
    return np.triu(x, diagonal) if ctx.attr("upper", 1) else np.tril(x, diagonal)


@kernel("ReverseSequence")
def reverse_sequence_kernel(ctx: KernelContext, x: np.ndarray, sequence_lens: np.ndarray) -> np.ndarray:
    batch_axis = normalize_axis(ctx.attr("batch_axis", 1), x.ndim)
    time_axis = normalize_axis(ctx.attr("time_axis", 0), x.ndim)
    lengths = sequence_lens.astype(np.int64).reshape(-1, 1)  # [batch, 1]
    steps = np.arange(x.shape[time_axis])[None, :]  # [1, time]
    source = np.where(steps < lengths, lengths - 1 - steps, steps)  # [batch, time]
    if batch_axis > time_axis:
        source = source.T
    shape = [1] * x.ndim
    shape[batch_axis], shape[time_axis] = x.shape[batch_axis], x.shape[time_axis]
    return np.take_along_axis(x, source.reshape(shape), axis=time_axis)


@kernel("CenterCropPad")
def center_crop_pad_kernel(ctx: KernelContext, x: np.ndarray, shape: np.ndarray) -> np.ndarray:
    listed = ctx.attr("axes")
    axes = range(x.ndim) if listed is None else normalize_axes(listed, x.ndim)
    sizes = ints(shape)
    if len(sizes) != len(axes):
        raise ValueError(f"CenterCropPad: {len(sizes)} sizes for {len(axes)} axes")
    target = list(x.shape)
    for axis, size in zip(axes, sizes, strict=True):
        target[axis] = size
    source, dest = [], []
    for dim, size in zip(x.shape, target, strict=True):
        crop, pad = max(dim - size, 0) // 2, max(size - dim, 0) // 2  # odd remainders go to the end
        kept = min(dim, size)
        source.append(slice(crop, crop + kept))
        dest.append(slice(pad, pad + kept))
    out = np.zeros(target, dtype=x.dtype)
    out[tuple(dest)] = x[tuple(source)]
    return out
