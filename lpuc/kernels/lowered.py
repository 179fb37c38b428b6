"""Kernels of the ops lpuc's passes introduce (domain "lpuc"): pieces of lowered convolutions."""

from __future__ import annotations

import numpy as np

from lpuc.ir.graph import LPUC_DOMAIN
from lpuc.kernels.conv import im2col, scatter_transposed
from lpuc.kernels.registry import KernelContext, kernel, run_kernel


@kernel("Im2Col", domain=LPUC_DOMAIN)
def im2col_kernel(ctx: KernelContext, x: np.ndarray) -> np.ndarray:
    """x [N, C, *spatial] -> [N * prod(out), C * prod(kernel)]; attrs kernel_shape/strides/pads/dilations.
    With channels_last, x is [N, *spatial, C] (the columns keep the same order). `pad_value` (an
    integer x's zero point, default 0) fills the padding, so that the padding is zero once centered;
    `pack_rows` p returns [rows / p, p * cols] (row-major: p consecutive rows side by side)."""
    if ctx.attr("channels_last", 0):
        x = np.moveaxis(x, -1, 1)
    geometry = (ctx.attr("kernel_shape"), ctx.attr("strides"), ctx.attr("pads"), ctx.attr("dilations"))
    pad_value = int(ctx.attr("pad_value", 0))
    if pad_value == 0:
        cols = im2col(x, *geometry)
    else:  # shift so that the pad value is 0, pad with zeros, shift back (exact in int64)
        cols = (im2col(x.astype(np.int64) - pad_value, *geometry) + pad_value).astype(x.dtype)
    pack = int(ctx.attr("pack_rows", 1))  # `pack_rows` consecutive rows side by side (quantize_int8)
    return cols if pack == 1 else cols.reshape(cols.shape[0] // pack, cols.shape[1] * pack)


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
    channels-last too): sink_transposes keeps convolution chains channels-last through pooling."""
    onnx_ctx = KernelContext(ctx.op_type, ctx.attrs, ctx.opset, 1)
    (y,) = run_kernel(onnx_ctx, [np.moveaxis(x, -1, 1)])
    return np.moveaxis(y, 1, -1)
