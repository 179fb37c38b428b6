"""Kernels of the ops lpuc's passes introduce (domain "lpuc"): pieces of lowered convolutions."""

from __future__ import annotations

import numpy as np

from lpuc.ir.graph import LPUC_DOMAIN
from lpuc.kernels import windows
from lpuc.kernels.conv import im2col, scatter_transposed
from lpuc.kernels.registry import KernelContext, kernel, run_kernel


@kernel("Im2Col", domain=LPUC_DOMAIN)
def im2col_kernel(ctx: KernelContext, x: np.ndarray) -> np.ndarray:
    """x [N, C, *spatial] -> [N * prod(out), C * prod(kernel)]; attrs kernel_shape/strides/pads/dilations.
    With channels_last, x is [N, *spatial, C] (the columns keep the same order)."""
    if ctx.attr("slab"):  # channels-last rows [r0, r1) from an input row slab
        values = windows.gather(x, ctx.attrs, 0)
        return values.transpose(0, 2, 1).reshape(len(values), -1)
    if ctx.attr("channels_last", 0):
        x = np.moveaxis(x, -1, 1)
    return im2col(x, ctx.attr("kernel_shape"), ctx.attr("strides"), ctx.attr("pads"), ctx.attr("dilations"))


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


def _pool_rows(ctx: KernelContext, x: np.ndarray) -> np.ndarray:
    if ctx.op_type == "MaxPool":
        low = -np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min
        return windows.gather(x, ctx.attrs, low).max(axis=1)
    values = windows.gather(x, ctx.attrs, 0).astype(np.float64)
    if ctx.attr("count_include_pad", 0):
        count = values.shape[1]
    else:
        slab = ctx.attr("slab")
        idx = windows.tap_rows(ctx.attrs, slab["in_shape"], *slab["out_rows"])
        count = np.maximum(1, (idx >= 0).sum(axis=1, keepdims=True))
    return (values.sum(axis=1) / count).astype(x.dtype)
