"""Convolutions: Conv, ConvInteger, QLinearConv, DeformConv, ConvTranspose, Col2Im.

Conv is im2col + matmul, and the compiler lowers it to exactly that: it reuses `im2col`,
`resolve_pads` and `conv_output_shape` from here. Depthwise Conv (one input channel per output
channel) is a loop over window taps instead. Pooling shares `window_taps` and `sliding_windows`.
Hot window ops loop over the kernel's taps, each a whole-tensor strided slice of the padded
input, rather than materializing every window: that touches the input once per tap.
All tensors are NCHW-style: [N, C, *spatial].
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from numpy.lib.stride_tricks import as_strided, sliding_window_view

from lpuc.kernels._common import accumulation_dtype, ints
from lpuc.kernels.quantize import centered, quantize_values
from lpuc.kernels.registry import KernelContext, kernel
from lpuc.kernels.sampling import sample_at


def resolve_pads(
    auto_pad: str,
    input_shape: Sequence[int],
    kernel_shape: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
    pads: Sequence[int] | None = None,
    op_type: str = "Conv",
) -> list[int]:
    """Explicit pads [x1_begin, x2_begin, ..., x1_end, x2_end, ...] for a sliding window over the
    spatial `input_shape`. NOTSET keeps `pads` (default 0), VALID pads nothing, SAME_UPPER /
    SAME_LOWER pad so that output = ceil(input / stride), the odd pixel at the end / beginning."""
    rank = len(input_shape)
    if auto_pad in ("NOTSET", ""):
        return list(pads) if pads else [0] * (2 * rank)
    if auto_pad == "VALID":
        return [0] * (2 * rank)
    if auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
        raise ValueError(f"{op_type}: unsupported auto_pad {auto_pad!r}")
    begins, ends = [], []
    for size, k, s, d in zip(input_shape, kernel_shape, strides, dilations, strict=True):
        out = -(-size // s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
        small, large = total // 2, total - total // 2
        begins.append(small if auto_pad == "SAME_UPPER" else large)
        ends.append(large if auto_pad == "SAME_UPPER" else small)
    return begins + ends


def conv_output_shape(
    input_shape: Sequence[int],
    kernel_shape: Sequence[int],
    strides: Sequence[int],
    pads: Sequence[int],
    dilations: Sequence[int],
    ceil_mode: bool = False,
    op_type: str = "Conv",
) -> list[int]:
    """Spatial output shape of a sliding window (explicit pads, see `resolve_pads`). With
    `ceil_mode` (pooling) a partial last window counts, unless it would start in the end padding.
    Raises ValueError when the window does not fit the padded input."""
    rank = len(input_shape)
    out = []
    for i, (size, k, s, d) in enumerate(zip(input_shape, kernel_shape, strides, dilations, strict=True)):
        reach = size + pads[i] + pads[rank + i] - ((k - 1) * d + 1)
        n = (-(-reach // s) if ceil_mode else reach // s) + 1
        if ceil_mode and (n - 1) * s >= size + pads[i]:
            n -= 1
        out.append(n)
    if min(out, default=1) < 1:
        raise ValueError(
            f"{op_type}: window {list(kernel_shape)} does not fit the padded input {list(input_shape)}"
        )
    return out


def window_attrs(
    ctx: KernelContext, input_shape: Sequence[int], kernel_shape: Sequence[int]
) -> tuple[list[int], list[int], list[int]]:
    """(strides, pads, dilations) of a windowed op from its attributes, auto_pad resolved."""
    rank = len(input_shape)
    strides = ctx.attr("strides") or [1] * rank
    dilations = ctx.attr("dilations") or [1] * rank
    pads = resolve_pads(
        ctx.attr("auto_pad", "NOTSET"),
        input_shape,
        kernel_shape,
        strides,
        dilations,
        ctx.attr("pads"),
        ctx.op_type,
    )
    return list(strides), pads, list(dilations)


def _covered(
    output_shape: Sequence[int], kernel_shape: Sequence[int], strides: Sequence[int], dilations: Sequence[int]
) -> list[int]:
    """Padded extent per spatial axis that `output_shape` windows cover."""
    spans = [(k - 1) * d + 1 for k, d in zip(kernel_shape, dilations, strict=True)]
    return [(o - 1) * s + span for o, s, span in zip(output_shape, strides, spans, strict=True)]


def is_channels_last(x: np.ndarray) -> bool:
    """Whether x [N, C, *spatial] is a view of channels-last memory (lowered ops pass NHWC tensors
    as such views): then keeping that layout keeps every copy contiguous."""
    return x.ndim > 2 and x.shape[1] > 1 and x.strides[1] == x.itemsize and not x.flags.c_contiguous


def padded_input(
    x: np.ndarray, pads: Sequence[int], covered: Sequence[int], fill: float = 0, channels_last: bool = False
) -> np.ndarray:
    """x [N, C, *spatial] with `pads` of `fill` at the beginning, the end padded or cropped to `covered`;
    x itself when that changes nothing. A copy keeps x's layout (channels-first or channels-last);
    `channels_last` gives [N, *covered, C] instead (always a copy)."""
    begins = pads[: x.ndim - 2]
    kept = [max(0, min(n, c - b)) for n, b, c in zip(x.shape[2:], begins, covered, strict=True)]
    source = x[(slice(None), slice(None), *(slice(0, k) for k in kept))]
    interior = tuple(slice(b, b + k) for b, k in zip(begins, kept, strict=True))
    if channels_last:
        out = np.full((x.shape[0], *covered, x.shape[1]), fill, dtype=x.dtype)
        out[(slice(None), *interior)] = np.moveaxis(source, 1, -1)
        return out
    if not any(begins) and all(c <= n for c, n in zip(covered, x.shape[2:], strict=True)):
        return source  # nothing to pad: a view, cropped to the covered cells
    if is_channels_last(x):
        return np.moveaxis(padded_input(x, pads, covered, fill, channels_last=True), -1, 1)
    out = np.full((*x.shape[:2], *covered), fill, dtype=x.dtype)
    out[(slice(None), slice(None), *interior)] = source
    return out


def tap_views(
    padded: np.ndarray,
    kernel_shape: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
    output_shape: Sequence[int],
    first_axis: int = 2,
) -> list[np.ndarray]:
    """Per window tap (row-major over kernel_shape), the strided view [..., *output_shape, ...] of the
    padded input cells it reads, spatial axes from `first_axis`. A window op is then a loop over
    taps of whole-tensor slices: each touches the input once, with no window-sized copies."""
    lead = (slice(None),) * first_axis
    return [
        padded[
            (
                *lead,
                *(
                    slice(t * d, t * d + (o - 1) * s + 1, s)
                    for t, d, o, s in zip(tap, dilations, output_shape, strides, strict=True)
                ),
            )
        ]
        for tap in np.ndindex(*kernel_shape)
    ]


def window_taps(
    x: np.ndarray,
    kernel_shape: Sequence[int],
    strides: Sequence[int],
    pads: Sequence[int],
    dilations: Sequence[int],
    output_shape: Sequence[int],
    fill: float = 0,
) -> tuple[list[np.ndarray], Callable[[np.ndarray], np.ndarray]]:
    """The windows of x [N, C, *spatial] padded with `fill`, tap by tap: per tap, a view of the
    cells it reads, and `finish`, which turns an elementwise fold of those views (a sum, a max)
    into [N, C, *output_shape]. Strided windows give `tap_views` [N, C, *output_shape]; stride 1
    on channels-first memory gives `_flat_taps`, whose runs are whole channels, not output rows."""
    covered = _covered(output_shape, kernel_shape, strides, dilations)
    padded = padded_input(x, pads, covered, fill)
    if all(s == 1 for s in strides) and not is_channels_last(x):
        return _flat_taps(padded, kernel_shape, dilations, output_shape)
    return tap_views(padded, kernel_shape, strides, dilations, output_shape), lambda y: y


def _flat_taps(
    padded: np.ndarray, kernel_shape: Sequence[int], dilations: Sequence[int], output_shape: Sequence[int]
) -> tuple[list[np.ndarray], Callable[[np.ndarray], np.ndarray]]:
    """Stride-1 taps of a padded input [N, C, *covered]: per tap, a view [N, C, L] of it flattened
    per channel and shifted by the tap's offset. Output position o sits at flat index
    sum(o_i * grid_i) (grid: the row-major strides of `covered`); `finish` picks those out of a
    result [N, C, L], dropping the positions that straddle a padded row's end."""
    flat = np.ascontiguousarray(padded).reshape(*padded.shape[:2], -1)
    covered = padded.shape[2:]
    grid = [math.prod(covered[i + 1 :]) for i in range(len(covered))]
    length = sum((o - 1) * g for o, g in zip(output_shape, grid, strict=True)) + 1
    offsets = [
        sum(t * d * g for t, d, g in zip(tap, dilations, grid, strict=True))
        for tap in np.ndindex(*kernel_shape)
    ]

    def finish(y: np.ndarray) -> np.ndarray:
        shape = (*y.shape[:2], *output_shape)
        strides = (*y.strides[:2], *(g * y.itemsize for g in grid))
        return np.ascontiguousarray(as_strided(y, shape, strides, writeable=False))

    return [flat[..., off : off + length] for off in offsets], finish


def sliding_windows(
    x: np.ndarray,
    kernel_shape: Sequence[int],
    strides: Sequence[int],
    pads: Sequence[int],
    dilations: Sequence[int],
    output_shape: Sequence[int],
    fill: float = 0,
) -> np.ndarray:
    """View [N, C, *output_shape, *kernel_shape] of the windows of x [N, C, *spatial] padded with
    `fill`; the end is padded further (or cropped) to exactly what `output_shape` windows cover."""
    rank = len(kernel_shape)
    spans = [(k - 1) * d + 1 for k, d in zip(kernel_shape, dilations, strict=True)]
    padded = padded_input(x, pads, _covered(output_shape, kernel_shape, strides, dilations), fill)
    windows = sliding_window_view(padded, spans, axis=tuple(range(2, 2 + rank)))
    return windows[
        (
            slice(None),
            slice(None),
            *(slice(None, None, s) for s in strides),
            *(slice(None, None, d) for d in dilations),
        )
    ]


def im2col(
    x: np.ndarray,
    kernel_shape: Sequence[int],
    strides: Sequence[int],
    pads: Sequence[int],
    dilations: Sequence[int],
) -> np.ndarray:
    """Patches of x [N, C, *spatial] (zero padded) as a matrix [N * prod(out), C * prod(kernel)].

    Rows are output positions (n-major, then spatial row-major); columns are ordered
    (c, k0, k1, ...), so `im2col(x, ...) @ W.reshape(M, -1).T` is the group=1 convolution.
    """
    out_shape = conv_output_shape(x.shape[2:], kernel_shape, strides, pads, dilations)
    batch, channels = x.shape[:2]
    rows, taps = batch * math.prod(out_shape), math.prod(kernel_shape)
    covered = _covered(out_shape, kernel_shape, strides, dilations)
    if taps == 1:  # a 1x1 kernel: the strided input, channels moved last (one transposed copy)
        (view,) = tap_views(padded_input(x, pads, covered), kernel_shape, strides, dilations, out_shape)
        return np.moveaxis(view, 1, -1).reshape(rows, channels)
    if channels <= kernel_shape[-1]:
        # Few channels: a window row is the longest contiguous run, so copy whole windows.
        windows = sliding_windows(x, kernel_shape, strides, pads, dilations, out_shape)
        rank = len(kernel_shape)
        order = (0, *range(2, 2 + rank), 1, *range(2 + rank, 2 + 2 * rank))
        return windows.transpose(order).reshape(rows, -1)
    # Channels last once, then each tap copies runs of C contiguous values into its column slots.
    padded = padded_input(x, pads, covered, channels_last=True)
    cols = np.empty((batch, *out_shape, channels, taps), dtype=x.dtype)
    for t, view in enumerate(tap_views(padded, kernel_shape, strides, dilations, out_shape, first_axis=1)):
        cols[..., t] = view
    return cols.reshape(rows, channels * taps)


def _grouped_matmul(cols: np.ndarray, w: np.ndarray, group: int, batch: int, out_shape: Sequence[int]):
    """Columns [N * P, C * K] times weights [M, C / group, *kernel] per group -> [N, M, *out]."""
    rows, m = cols.shape[0], w.shape[0]
    by_group = cols.reshape(rows, group, -1).transpose(1, 0, 2)
    y = np.matmul(by_group, w.reshape(group, m // group, -1).transpose(0, 2, 1))
    return np.moveaxis(y.transpose(1, 0, 2).reshape(batch, *out_shape, m), -1, 1)


def _check_channels(ctx: KernelContext, fits: bool, x: np.ndarray, w: np.ndarray, group: int) -> None:
    if not fits:
        raise ValueError(
            f"{ctx.op_type}: {x.shape[1]} input channels do not fit weights {list(w.shape)}, group={group}"
        )


def _convolve(ctx: KernelContext, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Convolution of x [N, C, *S] with w [M, C / group, *k] in their common dtype -> [N, M, *out]."""
    group = ctx.attr("group", 1)
    _check_channels(ctx, x.shape[1] == w.shape[1] * group and w.shape[0] % group == 0, x, w, group)
    kernel_shape = w.shape[2:]
    strides, pads, dilations = window_attrs(ctx, x.shape[2:], kernel_shape)
    out_shape = conv_output_shape(x.shape[2:], kernel_shape, strides, pads, dilations, op_type=ctx.op_type)
    cols = im2col(x, kernel_shape, strides, pads, dilations)
    return _grouped_matmul(cols, w, group, x.shape[0], out_shape)


def _channel_vector(values: np.ndarray, rank: int) -> np.ndarray:
    """Per-output-channel values [M] (or a scalar) shaped to broadcast over [N, M, *spatial]."""
    return values.reshape(-1, *([1] * rank)) if values.size > 1 else values.reshape(())


def _add_bias(y: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    return y if bias is None else y + bias.astype(y.dtype).reshape(-1, *([1] * (y.ndim - 2)))


def _depthwise(ctx: KernelContext, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Convolution where every output channel reads one input channel (w [M, 1, *k], group = C):
    a sum over taps of shifted input slices times a per-channel weight, instead of C tiny matmuls."""
    kernel_shape = w.shape[2:]
    strides, pads, dilations = window_attrs(ctx, x.shape[2:], kernel_shape)
    out_shape = conv_output_shape(x.shape[2:], kernel_shape, strides, pads, dilations, op_type=ctx.op_type)
    # With a channel multiplier, output channel m reads input channel m // multiplier.
    x = np.repeat(x, w.shape[0] // x.shape[1], axis=1) if w.shape[0] != x.shape[1] else x
    views, finish = window_taps(x, kernel_shape, strides, pads, dilations, out_shape)
    weights = w.reshape(w.shape[0], -1, *([1] * (views[0].ndim - 2)))  # [M, taps, 1, ...]
    y = np.zeros_like(views[0])  # the views' layout, so every op below runs contiguously
    product = np.empty_like(y)
    for t, view in enumerate(views):
        y += np.multiply(view, weights[:, t], out=product)
    return finish(y)


@kernel("Conv")
def conv(ctx: KernelContext, x, w, bias=None):
    work = accumulation_dtype(x.dtype)
    xw, ww = x.astype(work, copy=False), w.astype(work, copy=False)
    group = ctx.attr("group", 1)
    if group > 1 and group == x.shape[1] and w.shape[1] == 1 and w.shape[0] % group == 0:
        y = _depthwise(ctx, xw, ww)
    else:
        y = _convolve(ctx, xw, ww)
    return _add_bias(y, bias).astype(x.dtype, copy=False)


@kernel("ConvInteger")
def conv_integer(ctx: KernelContext, x, w, x_zero_point=None, w_zero_point=None):
    if w_zero_point is not None:
        w_zero_point = _channel_vector(w_zero_point, w.ndim - 1)
    return _convolve(ctx, centered(x, x_zero_point), centered(w, w_zero_point)).astype(np.int32)


@kernel("QLinearConv")
def qlinear_conv(
    ctx: KernelContext, x, x_scale, x_zero_point, w, w_scale, w_zero_point, y_scale, y_zero_point, bias=None
):
    accumulator = _convolve(
        ctx, centered(x, x_zero_point), centered(w, _channel_vector(w_zero_point, w.ndim - 1))
    )
    multiplier = (
        x_scale.astype(np.float32) * _channel_vector(w_scale, w.ndim - 2).astype(np.float32) / y_scale
    )
    return quantize_values(
        _add_bias(accumulator, bias) * multiplier.astype(np.float64), y_zero_point, y_zero_point.dtype
    )


@kernel("DeformConv")
def deform_conv(ctx: KernelContext, x, w, offset, bias=None, mask=None):
    group, offset_group = ctx.attr("group", 1), ctx.attr("offset_group", 1)
    _check_channels(ctx, x.shape[1] == w.shape[1] * group and w.shape[0] % group == 0, x, w, group)
    if x.shape[1] % offset_group:
        raise ValueError(
            f"DeformConv: {x.shape[1]} input channels do not split into offset_group={offset_group}"
        )
    work = accumulation_dtype(x.dtype)
    kernel_shape = w.shape[2:]
    rank, taps = len(kernel_shape), math.prod(kernel_shape)
    batch, channels = x.shape[:2]
    strides, pads, dilations = window_attrs(ctx, x.shape[2:], kernel_shape)
    out_shape = conv_output_shape(x.shape[2:], kernel_shape, strides, pads, dilations, op_type=ctx.op_type)
    offset_shape = (batch, offset_group * taps * rank, *out_shape)
    mask_shape = (batch, offset_group * taps, *out_shape)
    if offset.shape != offset_shape or (mask is not None and mask.shape != mask_shape):
        raise ValueError(f"DeformConv: offset must be {list(offset_shape)} and mask {list(mask_shape)}")
    # Offsets are laid out [offset_group, tap, axis]; each tap samples at its regular conv
    # position plus its offset, per output position.
    offset = offset.astype(work).reshape(batch, offset_group, taps, rank, *out_shape)
    tap_index = np.indices(kernel_shape).reshape(rank, taps)
    coords = []
    for i in range(rank):
        start = np.arange(out_shape[i]) * strides[i] - pads[i]
        regular = (tap_index[i] * dilations[i]).reshape(taps, *([1] * rank)) + start.reshape(
            [-1 if j == i else 1 for j in range(rank)]
        )
        coords.append((offset[:, :, :, i] + regular).reshape(batch * offset_group, taps, *out_shape))
    grouped = x.astype(work).reshape(batch * offset_group, channels // offset_group, *x.shape[2:])
    sampled = sample_at(grouped, coords).reshape(batch, offset_group, channels // offset_group, taps, -1)
    if mask is not None:
        sampled = sampled * mask.astype(work).reshape(batch, offset_group, 1, taps, -1)
    cols = sampled.reshape(batch, channels * taps, -1).transpose(0, 2, 1).reshape(-1, channels * taps)
    y = _grouped_matmul(cols, w.astype(work), group, batch, out_shape)
    return _add_bias(y, bias).astype(x.dtype, copy=False)


def col2im(
    cols: np.ndarray,
    image_shape: Sequence[int],
    block_shape: Sequence[int],
    strides: Sequence[int],
    pads: Sequence[int],
    dilations: Sequence[int],
) -> np.ndarray:
    """Inverse of im2col's rearrangement: sums blocks [N, C * prod(block), L] (L = block positions,
    row-major) into an image [N, C, *image_shape], overlapping entries accumulated."""
    rank = len(image_shape)
    padded_shape = [image_shape[i] + pads[i] + pads[rank + i] for i in range(rank)]
    grid = conv_output_shape(image_shape, block_shape, strides, pads, dilations)
    batch = cols.shape[0]
    blocks = cols.reshape(batch, -1, *block_shape, *grid)
    image = np.zeros((batch, blocks.shape[1], *padded_shape), dtype=cols.dtype)
    for tap in np.ndindex(*block_shape):
        region = tuple(
            slice(t * d, t * d + (g - 1) * s + 1, s)
            for t, d, g, s in zip(tap, dilations, grid, strides, strict=True)
        )
        image[(slice(None), slice(None), *region)] += blocks[(slice(None), slice(None), *tap)]
    return image[(slice(None), slice(None), *(slice(pads[i], pads[i] + image_shape[i]) for i in range(rank)))]


@kernel("Col2Im")
def col2im_kernel(ctx: KernelContext, x, image_shape, block_shape):
    image_shape, block_shape = ints(image_shape), ints(block_shape)
    rank = len(image_shape)
    strides = ctx.attr("strides") or [1] * rank
    dilations = ctx.attr("dilations") or [1] * rank
    pads = ctx.attr("pads") or [0] * (2 * rank)
    blocks = math.prod(
        conv_output_shape(image_shape, block_shape, strides, pads, dilations, op_type=ctx.op_type)
    )
    if x.shape[2] != blocks:
        raise ValueError(f"Col2Im: input has {x.shape[2]} blocks, the image and block shapes give {blocks}")
    work = accumulation_dtype(x.dtype)
    return col2im(x.astype(work, copy=False), image_shape, block_shape, strides, pads, dilations).astype(
        x.dtype
    )


def _transpose_pads(
    ctx: KernelContext, input_shape: Sequence[int], strides: Sequence[int], full_shape: Sequence[int]
) -> tuple[list[int], list[int]]:
    """(pads, output spatial shape) of ConvTranspose, whose unpadded output is `full_shape`: an
    explicit output_shape or SAME auto_pad decides the pads, otherwise the pads (and
    output_padding) decide the output shape."""
    rank = len(full_shape)
    output_padding = ctx.attr("output_padding") or [0] * rank
    extended = [f + p for f, p in zip(full_shape, output_padding, strict=True)]
    auto_pad = ctx.attr("auto_pad", "NOTSET")
    if auto_pad not in ("NOTSET", "", "VALID", "SAME_UPPER", "SAME_LOWER"):
        raise ValueError(f"ConvTranspose: unsupported auto_pad {auto_pad!r}")
    output_shape = ctx.attr("output_shape")
    if output_shape is None and auto_pad.startswith("SAME"):
        output_shape = [n * s for n, s in zip(input_shape, strides, strict=True)]
    if output_shape is None:
        pads = [0] * (2 * rank) if auto_pad == "VALID" else list(ctx.attr("pads") or [0] * (2 * rank))
        return pads, [extended[i] - pads[i] - pads[rank + i] for i in range(rank)]
    output_shape = list(output_shape)[-rank:]
    totals = [e - o for e, o in zip(extended, output_shape, strict=True)]
    # The odd pixel goes to the end for SAME_UPPER, to the beginning otherwise. Negative totals
    # (an output larger than the full one) floor-divide into zeros appended at the end.
    if auto_pad == "SAME_UPPER":
        pads = [t // 2 for t in totals] + [t - t // 2 for t in totals]
    else:
        pads = [t - t // 2 for t in totals] + [t // 2 for t in totals]
    return pads, output_shape


@kernel("ConvTranspose")
def conv_transpose(ctx: KernelContext, x, w, bias=None):
    group = ctx.attr("group", 1)
    _check_channels(ctx, x.shape[1] == w.shape[0] and w.shape[0] % group == 0, x, w, group)
    work = accumulation_dtype(x.dtype)
    kernel_shape = w.shape[2:]
    rank = len(kernel_shape)
    batch, channels = x.shape[:2]
    strides, dilations, full, pads, out_shape = transpose_geometry(ctx, x.shape[2:], kernel_shape)
    # Each input pixel scatters W^T @ x[:, pixel] over its window: columns for col2im.
    xg = x.astype(work).reshape(batch, group, channels // group, -1)
    wg = w.astype(work).reshape(group, channels // group, -1)
    cols = np.matmul(wg.transpose(0, 2, 1)[None], xg).reshape(batch, -1, xg.shape[-1])
    y = scatter_transposed(cols, full, kernel_shape, strides, dilations, pads[:rank], out_shape)
    return _add_bias(y, bias).astype(x.dtype, copy=False)


def scatter_transposed(
    cols: np.ndarray,
    full_shape: Sequence[int],
    kernel_shape: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
    pads_begin: Sequence[int],
    out_shape: Sequence[int],
) -> np.ndarray:
    """The ConvTranspose image [N, M, *out_shape] from its columns [N, M * prod(kernel), L].

    Output pixel j is pixel j + pads_begin of the full (unpadded) image; outside the full image
    (negative pads, output_padding) it is zero.
    """
    rank = len(full_shape)
    image = col2im(cols, full_shape, kernel_shape, strides, [0] * (2 * rank), dilations)
    extend = [(0, 0)] * 2 + [
        (max(0, -b), max(0, b + o - f)) for b, o, f in zip(pads_begin, out_shape, full_shape, strict=True)
    ]
    image = np.pad(image, extend)
    starts = [max(0, b) for b in pads_begin]
    crop = (slice(s, s + o) for s, o in zip(starts, out_shape, strict=True))
    return image[(slice(None), slice(None), *crop)]


def transpose_geometry(ctx: KernelContext, input_shape: Sequence[int], kernel_shape: Sequence[int]):
    """(strides, dilations, full image shape, pads, output shape) of a ConvTranspose node."""
    rank = len(kernel_shape)
    strides = ctx.attr("strides") or [1] * rank
    dilations = ctx.attr("dilations") or [1] * rank
    full = [
        (n - 1) * s + (k - 1) * d + 1
        for n, k, s, d in zip(input_shape, kernel_shape, strides, dilations, strict=True)
    ]
    pads, out_shape = _transpose_pads(ctx, input_shape, strides, full)
    return list(strides), list(dilations), full, pads, out_shape
