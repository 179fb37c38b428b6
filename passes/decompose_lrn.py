"""LRN as a 1x1 convolution plus elementwise ops, so the MXM sums the squares and the rest fuses into
VXM maps, instead of one whole-tensor VXM kernel that walks the channel window (AlexNet, ZFNet and
GoogLeNet normalize across channels).

    y = x * (bias + alpha / size * band(x^2)) ^ -beta

band is the [C x C] matrix with ones where an input channel lies in an output channel's window
(floor((size-1)/2) channels before it, ceil((size-1)/2) after): a 1x1 convolution, which becomes a
matmul with channels on the lanes. The squares are scaled by alpha / size before it, so an fp16 MXM
operand does not overflow where x exceeds 256; the band's ones are exact in every precision.
"""

from __future__ import annotations

import numpy as np

from lpuc.ir.graph import Graph, Node
from lpuc.passes.builder import NodeBuilder, replace_nodes


def decompose_lrn(graph: Graph, ctx=None) -> Graph:
    return replace_nodes(graph, _applies, _decompose)


def _applies(node: Node, g: Graph) -> bool:
    if node.op != "LRN" or node.domain:
        return False
    x = g.values[node.inputs[0]]
    return x.shape is not None and len(x.shape) == 4 and x.dtype.kind == "f" and node.attr("size", 0) >= 1


def _decompose(b: NodeBuilder) -> None:
    node = b.node
    x = node.inputs[0]
    shape, dtype = b.shape(x), b.dtype(x)
    channels = shape[1]
    size = node.attr("size")
    alpha, beta, bias = node.attr("alpha", 1e-4), node.attr("beta", 0.75), node.attr("bias", 1.0)
    before = (size - 1) // 2
    c = np.arange(channels)
    in_window = (c[None, :] >= c[:, None] - before) & (c[None, :] <= c[:, None] + size - 1 - before)
    band = in_window.astype(dtype).reshape(channels, channels, 1, 1)  # [out, in, 1, 1]
    squares = b.binary("Mul", b.binary("Mul", x, x, "square"), b.scalar(alpha / size, dtype), "scaled")
    inputs = [squares, b.const("band", band), b.const("bias", np.full(channels, bias, dtype))]
    sums = b.emit("Conv", inputs, shape, dtype, "window_sum", kernel_shape=[1, 1])
    factor = b.binary("Pow", sums, b.scalar(-beta, dtype), "power")
    b.bind_output(b.binary("Mul", x, factor, "normalized"), node.outputs[0])
