"""Convolutions onto the MXM: Conv -> Im2Col + MatMul, ConvTranspose -> MatMul + scatter,
ConvInteger (int8, as lower_quantized leaves it) -> Im2Col + MatMulInteger (the int8 mode).

    Conv:           x[N,C,*S] --Im2Col (SXM)--> [N*P, C*K] --MatMul W^T (MXM)--> [N*P, M] (+bias)
                    --Reshape (free)--> [N,*out,M] --Transpose (SXM)--> [N,M,*out]
    ConvTranspose:  x --Transpose--> [N*L, C] --MatMul W (MXM)--> [N*L, M*K] --Transpose-->
                    [N, M*K, L] --ConvTransposeScatter (SXM, adds bias)--> [N,M,*out]

Grouped convolutions use one MatMul with block-diagonal weights (the MXM does `group` times the
useful MACs). Grouped convolutions with at most DEPTHWISE_CHANNELS input channels per group
(depthwise) gain nothing from the MXM and stay `Conv`, which runs on the VXM (see lpuc.ops), as do
grouped ones with runtime weights. Grouped ConvTranspose stays for the host.
"""

from __future__ import annotations

import math

import numpy as np

from lpuc.ir.graph import LPUC_DOMAIN, Graph, Node
from lpuc.kernels.conv import transpose_geometry, window_attrs
from lpuc.kernels.registry import KernelContext
from lpuc.passes.builder import NodeBuilder, replace_nodes

DEPTHWISE_CHANNELS = 4


def lower_conv(graph: Graph, ctx: object = None) -> Graph:
    return replace_nodes(graph, _lowerable, _lower)


def _lowerable(node: Node, graph: Graph) -> bool:
    if node.domain or graph.touches_dynamic(node):
        return False
    if node.op == "ConvTranspose":
        return node.attr("group", 1) == 1
    if node.op == "ConvInteger":
        return _integer_core(node, graph) and _worth_mxm(node, graph)
    return node.op == "Conv" and _worth_mxm(node, graph)


def _integer_core(node: Node, graph: Graph) -> bool:
    """ConvInteger the int8 MXM mode runs as it is (lower_quantized makes others so): int8 x with a
    constant scalar zero point or none, constant int8 weights without a zero point."""
    x, w = (graph.values[i] for i in node.inputs[:2])
    zero_point = graph.values[node.inputs[2]] if len(node.inputs) > 2 and node.inputs[2] else None
    return (
        x.dtype == np.int8
        and w.dtype == np.int8
        and w.is_const
        and (zero_point is None or (zero_point.is_const and zero_point.size == 1))
        and not any(node.inputs[3:])
    )


def _worth_mxm(node: Node, graph: Graph) -> bool:
    w = graph.values[node.inputs[1]]
    if len(w.shape) < 3:
        return False
    # Grouped: the block-diagonal weights are built here, so from constant weights only.
    return node.attr("group", 1) == 1 or (w.shape[1] > DEPTHWISE_CHANNELS and w.is_const)


def _lower(b: NodeBuilder) -> None:
    if b.node.op in ("Conv", "ConvInteger"):
        _lower_conv(b)
    else:
        _lower_conv_transpose(b)


def _lower_conv(b: NodeBuilder) -> None:
    node = b.node
    x, y = node.inputs[0], node.outputs[0]
    (n, channels, *_), (m, _, *kernel_shape) = b.shape(x), b.shape(node.inputs[1])
    strides, pads, dilations = window_attrs(KernelContext("Conv", node.attrs), b.shape(x)[2:], kernel_shape)
    out_spatial = b.shape(y)[2:]
    rows = n * math.prod(out_spatial)
    window = {"kernel_shape": kernel_shape, "strides": strides, "pads": pads, "dilations": dilations}
    cols_shape = (rows, channels * math.prod(kernel_shape))
    if node.op == "ConvInteger":
        product = _integer_product(b, x, cols_shape, window)
    else:
        cols = b.emit("Im2Col", [x], cols_shape, b.dtype(x), "im2col", domain=LPUC_DOMAIN, **window)
        product = b.matmul(cols, _weights_matrix(b))
        if len(node.inputs) > 2 and node.inputs[2]:
            product = b.binary("Add", product, node.inputs[2], "bias")
    nhwc = b.reshape(product, (n, *out_spatial, m), "nhwc")
    rank = len(out_spatial)
    b.bind_output(b.transpose(nhwc, [0, rank + 1, *range(1, rank + 1)], "nchw"), y)


def _integer_product(b: NodeBuilder, x: str, cols_shape: tuple[int, ...], window: dict) -> str:
    """ConvInteger's int32 result as [rows, M]: sum over taps of (x - z) * W. The Im2Col pads with
    the zero point z (padding is zero once centered) and the MXM multiplies x itself, so the
    accumulator gets -z * (column sums of W), a constant, added on the VXM."""
    node = b.node
    has_zero_point = len(node.inputs) > 2 and node.inputs[2]
    zero_point = int(b.graph.values[node.inputs[2]].const.reshape(())) if has_zero_point else 0
    pad = {"pad_value": zero_point} if zero_point else {}
    cols = b.emit("Im2Col", [x], cols_shape, np.int8, "im2col", domain=LPUC_DOMAIN, **window, **pad)
    weights = _weights_matrix(b)
    product = b.emit("MatMulInteger", [cols, weights], (cols_shape[0], b.shape(weights)[1]), np.int32)
    if not zero_point:
        return product
    column_sums = b.graph.values[weights].const.astype(np.int64).sum(axis=0)
    return b.binary("Add", product, b.const("zero_point_term", (-zero_point * column_sums).astype(np.int32)))


def _weights_matrix(b: NodeBuilder) -> str:
    """W [M, C/group, *k] as the MatMul operand [C * K, M] (block-diagonal over groups)."""
    w = b.node.inputs[1]
    group = int(b.node.attr("group", 1))
    m, cg, *kernel_shape = b.shape(w)
    k = math.prod(kernel_shape)
    if group == 1:  # constant weights fold to a constant matrix
        return b.transpose(b.reshape(w, (m, cg * k), "weights_flat"), (1, 0), "weights_T")
    blocks = b.graph.values[w].const.reshape(group, m // group, cg * k)
    dense = np.zeros((group * cg * k, m), dtype=b.dtype(w))
    for i in range(group):
        dense[i * cg * k : (i + 1) * cg * k, i * (m // group) : (i + 1) * (m // group)] = blocks[i].T
    return b.const("weights", dense)


def _lower_conv_transpose(b: NodeBuilder) -> None:
    node = b.node
    x, w, y = node.inputs[0], node.inputs[1], node.outputs[0]
    (n, c, *_), (_, m, *kernel_shape) = b.shape(x), b.shape(w)
    strides, dilations, full, pads, out_shape = transpose_geometry(
        KernelContext("ConvTranspose", node.attrs), b.shape(x)[2:], kernel_shape
    )
    rank = len(kernel_shape)
    pixels = math.prod(b.shape(x)[2:])
    k = math.prod(kernel_shape)
    channels_last = b.transpose(x, [0, *range(2, rank + 2), 1], "nhwc")
    flat = b.reshape(channels_last, (n * pixels, c), "rows")
    cols = b.matmul(flat, b.reshape(w, (c, m * k), "weights"))
    per_image = b.reshape(cols, (n, pixels, m * k), "cols3")
    blocks = b.transpose(per_image, [0, 2, 1], "blocks")
    bias = [node.inputs[2]] if len(node.inputs) > 2 and node.inputs[2] else []
    geometry = {
        "full_shape": full,
        "kernel_shape": kernel_shape,
        "strides": strides,
        "dilations": dilations,
        "pads_begin": pads[:rank],
        "out_shape": list(out_shape),
    }
    inputs = [blocks, *bias]
    scattered = b.emit(
        "ConvTransposeScatter", inputs, b.shape(y), b.dtype(y), "scatter", domain=LPUC_DOMAIN, **geometry
    )
    b.bind_output(scattered, y)
