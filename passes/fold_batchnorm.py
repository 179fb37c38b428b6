"""Fold an inference BatchNormalization into the Conv before it (constant weights and statistics).

y = gamma * (conv(x, W) + b - mean) / sqrt(var + eps) + beta
  = conv(x, W * s) + (b - mean) * s + beta,      s = gamma / sqrt(var + eps)

One that follows no foldable Conv (DenseNet normalizes concatenations) becomes the per-channel
x * s + (beta - mean * s): two elementwise ops that fuse with their neighbours into one VXM map,
instead of a whole-tensor kernel.
"""

from __future__ import annotations

import numpy as np

from lpuc.ir.graph import Graph, Node
from lpuc.passes.builder import NodeBuilder, replace_nodes


def fold_batchnorm(graph: Graph, ctx=None) -> Graph:
    return replace_nodes(_fold_into_convs(graph), _scalable, _scale_shift)


def _scalable(bn: Node, g: Graph) -> bool:
    if bn.op != "BatchNormalization" or bn.domain or len([o for o in bn.outputs if o]) != 1:
        return False
    x = g.values[bn.inputs[0]]
    return (
        not bn.attr("training_mode", 0)
        and all(g.is_const(i) for i in bn.inputs[1:5])
        and x.shape is not None
        and len(x.shape) >= 2
        and x.dtype.kind == "f"
    )


def _scale_shift(b: NodeBuilder) -> None:
    bn = b.node
    scale, beta, mean = _statistics(bn, b.graph)
    x = bn.inputs[0]
    per_channel = (-1, *([1] * (len(b.shape(x)) - 2)))  # broadcasts over [N, C, *spatial] from C on
    dtype = b.dtype(x)
    scaled = b.binary("Mul", x, b.const("scale", scale.reshape(per_channel).astype(dtype)), "scale")
    shift = (beta - mean * scale).reshape(per_channel).astype(dtype)
    b.bind_output(b.binary("Add", scaled, b.const("shift", shift), "shift"), bn.outputs[0])


def _fold_into_convs(graph: Graph) -> Graph:
    producers, consumers = graph.producers(), graph.consumers()
    outputs = set(graph.outputs)
    bn_of: dict[str, Node] = {}  # conv name -> the BatchNormalization folded into it
    for bn in graph.nodes:
        conv = _foldable(bn, graph, producers, consumers, outputs)
        if conv is not None:
            bn_of[conv.name] = bn
    if not bn_of:
        return graph
    folded_bns = {bn.name for bn in bn_of.values()}
    out = graph.copy(nodes=[])
    for node in graph.nodes:
        if node.name in folded_bns:
            continue
        bn = bn_of.get(node.name)
        out.nodes.append(_fold(node, bn, out) if bn is not None else node)
    return out.prune_values()


def _foldable(bn: Node, g: Graph, producers, consumers, outputs) -> Node | None:
    if bn.op != "BatchNormalization" or bn.domain or len([o for o in bn.outputs if o]) != 1:
        return None
    if bn.attr("training_mode", 0) or not all(g.is_const(i) for i in bn.inputs[1:5]):
        return None
    conv = producers.get(bn.inputs[0])
    if conv is None or conv.op != "Conv" or conv.domain or bn.inputs[0] in outputs:
        return None
    if len(consumers.get(bn.inputs[0], [])) != 1 or not g.is_const(conv.inputs[1]):
        return None
    if len(conv.inputs) > 2 and conv.inputs[2] and not g.is_const(conv.inputs[2]):
        return None
    return conv


def _statistics(bn: Node, g: Graph) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(s, beta, mean) in float64, s = gamma / sqrt(var + eps)."""
    gamma, beta, mean, var = (g.values[i].const.astype(np.float64) for i in bn.inputs[1:5])
    scale = gamma / np.sqrt(var + float(bn.attr("epsilon", 1e-5)))
    return scale, beta, mean


def _fold(conv: Node, bn: Node, g: Graph) -> Node:
    scale, beta, mean = _statistics(bn, g)
    w = g.values[conv.inputs[1]]
    bias = g.values[conv.inputs[2]].const if len(conv.inputs) > 2 and conv.inputs[2] else np.zeros(w.shape[0])
    new_w = (w.const.astype(np.float64) * scale.reshape(-1, *([1] * (len(w.shape) - 1)))).astype(w.dtype)
    new_b = ((bias.astype(np.float64) - mean) * scale + beta).astype(w.dtype)
    w_name = g.add_const(f"{conv.inputs[1]}_bn", new_w)
    b_name = g.add_const(f"{conv.name}_bias_bn", new_b)
    return conv.with_(inputs=(conv.inputs[0], w_name, b_name), outputs=bn.outputs)
