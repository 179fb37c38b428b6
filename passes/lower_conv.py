"""Convolutions onto the MXM: Conv -> Im2Col + MatMul, ConvTranspose -> MatMul + scatter.

    Conv:           x[N,C,*S] --Im2Col (SXM)--> [N*P, C*K] --MatMul W^T (MXM)--> [N*P, M] (+bias)
                    --Reshape (free)--> [N,*out,M] --Transpose (SXM)--> [N,M,*out]
    ConvTranspose:  x --Transpose--> [N*L, C] --MatMul W (MXM)--> [N*L, M*K] --Transpose-->
                    [N, M*K, L] --ConvTransposeScatter (SXM, adds bias)--> [N,M,*out]

Grouped convolutions use one MatMul with block-diagonal weights (the MXM does `group` times the
useful MACs). Grouped convolutions with at most DEPTHWISE_CHANNELS input channels per group
(depthwise) gain nothing from the MXM and stay `Conv`, which runs on the VXM (see lpuc.ops). Grouped ConvTranspose stays
for the host.
"""

from __future__ import annotations

import math

import numpy as np

from lpuc.ir.graph import LPUC_DOMAIN, Graph, Node
from lpuc.kernels.conv import transpose_geometry, window_attrs
from lpuc.kernels.registry import KernelContext

DEPTHWISE_CHANNELS = 4


def lower_conv(graph: Graph, ctx=None) -> Graph:
    out = graph.copy(nodes=[])
    for node in graph.nodes:
        if node.domain or graph.touches_dynamic(node):
            out.nodes.append(node)
        elif node.op == "Conv" and _worth_mxm(node, graph):
            out.nodes.extend(_lower_conv(node, out))
        elif node.op == "ConvTranspose" and node.attr("group", 1) == 1:
            out.nodes.extend(_lower_conv_transpose(node, out))
        else:
            out.nodes.append(node)
    return out.prune_values()


def _worth_mxm(node: Node, graph: Graph) -> bool:
    w = graph.values[node.inputs[1]]
    return len(w.shape) >= 3 and (node.attr("group", 1) == 1 or w.shape[1] > DEPTHWISE_CHANNELS)


def _weights_matrix(node: Node, g: Graph, nodes: list[Node]) -> str:
    """W [M, C/group, *k] as the MatMul operand [C * K, M] (block-diagonal over groups)."""
    w = g.values[node.inputs[1]]
    group = int(node.attr("group", 1))
    m, cg = w.shape[0], w.shape[1]
    k = math.prod(w.shape[2:])
    if w.is_const:
        blocks = w.const.reshape(group, m // group, cg * k)
        dense = np.zeros((group * cg * k, m), dtype=w.dtype)
        for i in range(group):
            dense[i * cg * k : (i + 1) * cg * k, i * (m // group) : (i + 1) * (m // group)] = blocks[i].T
        return g.add_const(f"{node.inputs[1]}_im2col", dense)
    if group != 1:
        raise AssertionError("grouped Conv with runtime weights is left for the VXM")  # see _lower_conv
    shape = g.add_const(f"{node.name}_wshape", np.array([m, cg * k], dtype=np.int64))
    flat = g.add_value(f"{node.inputs[1]}_flat", (m, cg * k), w.dtype)
    wt = g.add_value(f"{node.inputs[1]}_im2col", (cg * k, m), w.dtype)
    nodes.append(Node("Reshape", f"{node.name}/weights_flat", (node.inputs[1], shape), (flat,), {}, "", 21))
    nodes.append(Node("Transpose", f"{node.name}/weights_T", (flat,), (wt,), {"perm": [1, 0]}, "", 21))
    return wt


def _lower_conv(node: Node, g: Graph) -> list[Node]:
    x, w = g.values[node.inputs[0]], g.values[node.inputs[1]]
    if not w.is_const and node.attr("group", 1) != 1:
        return [node]
    y = g.values[node.outputs[0]]
    kernel_shape = list(w.shape[2:])
    kctx = KernelContext("Conv", node.attrs)
    strides, pads, dilations = window_attrs(kctx, x.shape[2:], kernel_shape)
    n, m, out_spatial = x.shape[0], w.shape[0], y.shape[2:]
    rows = n * math.prod(out_spatial)
    nodes: list[Node] = []
    cols = g.add_value(f"{node.outputs[0]}_cols", (rows, x.shape[1] * math.prod(kernel_shape)), x.dtype)
    nodes.append(Node("Im2Col", f"{node.name}/im2col", (node.inputs[0],), (cols,),
                      {"kernel_shape": kernel_shape, "strides": strides, "pads": pads, "dilations": dilations},
                      LPUC_DOMAIN, 1))
    weights = _weights_matrix(node, g, nodes)
    prod = g.add_value(f"{node.outputs[0]}_mm", (rows, m), y.dtype)
    nodes.append(Node("MatMul", f"{node.name}/matmul", (cols, weights), (prod,), {}, "", 21))
    if len(node.inputs) > 2 and node.inputs[2]:
        biased = g.add_value(f"{node.outputs[0]}_bias", (rows, m), y.dtype)
        nodes.append(Node("Add", f"{node.name}/bias", (prod, node.inputs[2]), (biased,), {}, "", 21))
        prod = biased
    nhwc_shape = (n, *out_spatial, m)
    nhwc = g.add_value(f"{node.outputs[0]}_nhwc", nhwc_shape, y.dtype)
    shape = g.add_const(f"{node.name}_nhwc_shape", np.array(nhwc_shape, dtype=np.int64))
    nodes.append(Node("Reshape", f"{node.name}/nhwc", (prod, shape), (nhwc,), {}, "", 21))
    rank = len(out_spatial)
    perm = [0, rank + 1, *range(1, rank + 1)]
    nodes.append(Node("Transpose", f"{node.name}/nchw", (nhwc,), node.outputs, {"perm": perm}, "", 21))
    return nodes


def _lower_conv_transpose(node: Node, g: Graph) -> list[Node]:
    x, w = g.values[node.inputs[0]], g.values[node.inputs[1]]
    y = g.values[node.outputs[0]]
    kernel_shape = list(w.shape[2:])
    strides, dilations, full, pads, out_shape = transpose_geometry(
        KernelContext("ConvTranspose", node.attrs), x.shape[2:], kernel_shape
    )
    rank = len(kernel_shape)
    n, c, m = x.shape[0], x.shape[1], w.shape[1]
    pixels = math.prod(x.shape[2:])
    k = math.prod(kernel_shape)
    nodes: list[Node] = []
    channels_last = g.add_value(f"{node.inputs[0]}_nhwc", (n, *x.shape[2:], c), x.dtype)
    nodes.append(Node("Transpose", f"{node.name}/nhwc", (node.inputs[0],), (channels_last,),
                      {"perm": [0, *range(2, rank + 2), 1]}, "", 21))
    flat = g.add_value(f"{node.inputs[0]}_rows", (n * pixels, c), x.dtype)
    shape = g.add_const(f"{node.name}_rows_shape", np.array([n * pixels, c], dtype=np.int64))
    nodes.append(Node("Reshape", f"{node.name}/rows", (channels_last, shape), (flat,), {}, "", 21))
    if w.is_const:
        weights = g.add_const(f"{node.inputs[1]}_mat", np.ascontiguousarray(w.const.reshape(c, m * k)))
    else:
        weights = g.add_value(f"{node.inputs[1]}_mat", (c, m * k), w.dtype)
        wshape = g.add_const(f"{node.name}_wshape", np.array([c, m * k], dtype=np.int64))
        nodes.append(Node("Reshape", f"{node.name}/weights", (node.inputs[1], wshape), (weights,), {}, "", 21))
    cols = g.add_value(f"{node.outputs[0]}_cols", (n * pixels, m * k), y.dtype)
    nodes.append(Node("MatMul", f"{node.name}/matmul", (flat, weights), (cols,), {}, "", 21))
    per_image = g.add_value(f"{node.outputs[0]}_cols3", (n, pixels, m * k), y.dtype)
    shape3 = g.add_const(f"{node.name}_cols_shape", np.array([n, pixels, m * k], dtype=np.int64))
    nodes.append(Node("Reshape", f"{node.name}/cols3", (cols, shape3), (per_image,), {}, "", 21))
    blocks = g.add_value(f"{node.outputs[0]}_blocks", (n, m * k, pixels), y.dtype)
    nodes.append(Node("Transpose", f"{node.name}/blocks", (per_image,), (blocks,), {"perm": [0, 2, 1]}, "", 21))
    bias = (node.inputs[2],) if len(node.inputs) > 2 and node.inputs[2] else ()
    attrs = {"full_shape": full, "kernel_shape": kernel_shape, "strides": strides, "dilations": dilations,
             "pads_begin": pads[:rank], "out_shape": list(out_shape)}
    nodes.append(Node("ConvTransposeScatter", f"{node.name}/scatter", (blocks, *bias), node.outputs, attrs,
                      LPUC_DOMAIN, 1))
    return nodes
