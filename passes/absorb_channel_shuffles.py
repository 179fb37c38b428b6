"""Channel shuffles absorbed into the constant weights around them (ShuffleNet).

A channel shuffle (Reshape [N, C, *S] -> [N, g, C/g, *S], Transpose of the split dims, Reshape back)
moves whole channels: u[:, c] = v[:, p[c]]. Followed by per-channel ops (a depthwise Conv, a scale or
shift by per-channel constants, ReLU-like ops) and then a Conv with constant weights, it need not move
any data: each per-channel op gets its constants reordered (channel j of the unshuffled value takes
the constants of the channel it lands on), and the Conv reads its input channels in the unshuffled
order (its weight columns reordered). A grouped Conv there becomes one with block-diagonal weights
over all channels, as lower_conv builds for it anyway. What the three nodes cost (whole-tensor SXM
copies, and an NCHW round trip that keeps the depthwise Conv off the channels-last path) is gone.
"""

from __future__ import annotations

import numpy as np

from lpuc.ir.graph import Graph, Node
from lpuc.ops import is_elementwise


def absorb_channel_shuffles(graph: Graph, ctx: object = None) -> Graph:
    consumers = graph.consumers()
    producers = graph.producers()
    outputs = set(graph.outputs)
    removed: set[str] = set()
    replaced: dict[str, Node] = {}
    g = graph.copy()
    for node in graph.nodes:
        found = _shuffle(node, graph, producers, consumers, outputs)
        if found is None:
            continue
        source, order, nodes = found
        if any(n.name in removed or n.name in replaced for n in nodes):
            continue
        rewritten = _absorb(g, nodes[-1].outputs[0], source, order, consumers, outputs)
        if rewritten is None or any(n.name in replaced for n in rewritten):
            continue
        removed.update(n.name for n in nodes)
        replaced.update({n.name: n for n in rewritten})
    if not removed:
        return graph
    g.nodes = [replaced.get(n.name, n) for n in graph.nodes if n.name not in removed]
    return g.prune_values()


def _only_user(name: str, consumers: dict[str, list[Node]], outputs: set[str]) -> Node | None:
    users = consumers.get(name, [])
    return users[0] if len(users) == 1 and name not in outputs else None


def _shuffle(
    node: Node, graph: Graph, producers, consumers, outputs
) -> tuple[str, np.ndarray, list[Node]] | None:
    """(the shuffled value, p with u[:, c] = v[:, p[c]], the three nodes) if `node` ends a channel
    shuffle Reshape -> Transpose -> Reshape of an [N, C, *S] value."""
    if node.op != "Reshape" or node.domain:
        return None
    transpose = producers.get(node.inputs[0])
    if transpose is None or transpose.op != "Transpose" or transpose.domain:
        return None
    split = producers.get(transpose.inputs[0])
    if split is None or split.op != "Reshape" or split.domain:
        return None
    if _only_user(split.outputs[0], consumers, outputs) is None:
        return None
    if _only_user(transpose.outputs[0], consumers, outputs) is None:
        return None
    v = split.inputs[0]
    shape, mid = graph.values[v].shape, graph.values[split.outputs[0]].shape
    if shape is None or mid is None or len(shape) < 3 or graph.values[node.outputs[0]].shape != shape:
        return None
    parts = len(mid) - len(shape) + 1  # dim 1 split into `parts` dims
    if parts < 2 or tuple(mid[:1]) != tuple(shape[:1]) or tuple(mid[1 + parts :]) != tuple(shape[2:]):
        return None
    perm = [int(p) for p in transpose.attr("perm") or reversed(range(len(mid)))]
    kept = [i for i in range(len(mid)) if not 1 <= i < 1 + parts]
    if [perm[i] for i in kept] != kept:
        return None  # the transpose moves more than the split channel dims
    channels = int(shape[1])
    index = np.arange(channels).reshape([int(d) for d in mid[1 : 1 + parts]])
    order = np.transpose(index, [p - 1 for p in perm[1 : 1 + parts]]).reshape(-1)
    return v, order, [split, transpose, node]


def _absorb(g: Graph, u: str, v: str, order: np.ndarray, consumers, outputs) -> list[Node] | None:
    """The nodes from u's reader up to and including the Conv that absorbs the shuffle, rewritten to
    read v unshuffled; None if the chain does not end in such a Conv."""
    inverse = np.argsort(order)
    channels = len(order)
    chain: list[Node] = []
    value, reads = u, v
    while True:
        user = _only_user(value, consumers, outputs)
        if user is None:
            return None
        if (
            user.op == "Conv"
            and not user.domain
            and user.inputs[0] == value
            and _dense_weights(g, user, channels)
        ):
            w = np.asarray(g.values[user.inputs[1]].const)
            if int(user.attr("group", 1)) == channels and w.shape[:2] == (channels, 1):  # depthwise
                chain.append(_depthwise(g, user, reads, w, inverse))
                value, reads = user.outputs[0], user.outputs[0]
                continue
            dense = _dense(w, int(user.attr("group", 1)))[:, inverse]
            name = g.add_const(f"{user.inputs[1]}_unshuffled", np.ascontiguousarray(dense))
            attrs = {**user.attrs, "group": 1}
            chain.append(user.with_(inputs=(reads, name, *user.inputs[2:]), attrs=attrs))
            return chain
        if not user.domain and is_elementwise(user.op, user.domain) and len(user.outputs) == 1:
            inputs = _per_channel_inputs(g, user, value, reads, inverse)
            if inputs is None:
                return None
            chain.append(user.with_(inputs=inputs))
            value, reads = user.outputs[0], user.outputs[0]
            continue
        return None


def _dense_weights(g: Graph, conv: Node, channels: int) -> bool:
    """A Conv whose constant weights read all `channels` input channels (group 1, grouped, depthwise)."""
    w = g.values[conv.inputs[1]]
    if not w.is_const or w.shape is None or len(w.shape) < 3:
        return False
    if len(conv.inputs) > 2 and conv.inputs[2] and not g.values[conv.inputs[2]].is_const:
        return False
    group = int(conv.attr("group", 1))
    return int(w.shape[1]) * group == channels and int(w.shape[0]) % group == 0


def _dense(w: np.ndarray, group: int) -> np.ndarray:
    """Grouped weights [M, C / group, *k] as block-diagonal ones over all C input channels."""
    if group == 1:
        return w
    m, cg = w.shape[0], w.shape[1]
    dense = np.zeros((m, cg * group, *w.shape[2:]), w.dtype)
    for i in range(group):
        rows = slice(i * m // group, (i + 1) * m // group)
        dense[rows, i * cg : (i + 1) * cg] = w[rows]
    return dense


def _depthwise(g: Graph, conv: Node, reads: str, w: np.ndarray, inverse: np.ndarray) -> Node:
    """A depthwise Conv on the unshuffled channels: channel j takes the weights (and bias) of the
    channel it lands on."""
    inputs = [reads, g.add_const(f"{conv.inputs[1]}_unshuffled", np.ascontiguousarray(w[inverse]))]
    if len(conv.inputs) > 2 and conv.inputs[2]:
        bias = np.asarray(g.values[conv.inputs[2]].const)
        inputs.append(g.add_const(f"{conv.inputs[2]}_unshuffled", np.ascontiguousarray(bias[inverse])))
    return conv.with_(inputs=tuple(inputs))


def _per_channel_inputs(
    g: Graph, node: Node, value: str, reads: str, inverse: np.ndarray
) -> tuple[str, ...] | None:
    """The inputs of an elementwise op on the unshuffled channels: the chain's value, and constants
    that are scalars or per channel ([C, 1, ...] from dim 1 on) reordered; None for anything else."""
    rank = len(g.values[value].shape)
    inputs = []
    for name in node.inputs:
        if name == value:
            inputs.append(reads)
            continue
        const = g.values[name] if name else None
        if const is None or not const.is_const:
            return None
        data = np.asarray(const.const)
        if data.size == 1:
            inputs.append(name)
            continue
        full = data.reshape((1,) * (rank - data.ndim) + data.shape)
        if full.shape[1] != len(inverse) or any(d != 1 for i, d in enumerate(full.shape) if i != 1):
            return None
        inputs.append(g.add_const(f"{name}_unshuffled", np.ascontiguousarray(full[:, inverse])))
    return tuple(inputs)
