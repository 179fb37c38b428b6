"""Fold an inference BatchNormalization into the Conv before it (constant weights and statistics).

y = gamma * (conv(x, W) + b - mean) / sqrt(var + eps) + beta
  = conv(x, W * s) + (b - mean) * s + beta,      s = gamma / sqrt(var + eps)
"""

from __future__ import annotations

import numpy as np

from lpuc.ir.graph import Graph, Node


def fold_batchnorm(graph: Graph, ctx=None) -> Graph:
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


def _fold(conv: Node, bn: Node, g: Graph) -> Node:
    gamma, beta, mean, var = (g.values[i].const.astype(np.float64) for i in bn.inputs[1:5])
    scale = gamma / np.sqrt(var + float(bn.attr("epsilon", 1e-5)))
    w = g.values[conv.inputs[1]]
    bias = g.values[conv.inputs[2]].const if len(conv.inputs) > 2 and conv.inputs[2] else np.zeros(w.shape[0])
    new_w = (w.const.astype(np.float64) * scale.reshape(-1, *([1] * (len(w.shape) - 1)))).astype(w.dtype)
    new_b = ((bias.astype(np.float64) - mean) * scale + beta).astype(w.dtype)
    w_name = g.add_const(f"{conv.inputs[1]}_bn", new_w)
    b_name = g.add_const(f"{conv.name}_bias_bn", new_b)
    return conv.with_(inputs=(conv.inputs[0], w_name, b_name), outputs=bn.outputs)
