"""Two attention heads per Q @ K^T product: block-diagonal K^T, both heads' scores in one row.

After address_heads, Q @ K^T is an `lpuc.HeadMatMul` of H products [M, D] @ [D, N] (GPT-2, BERT:
D = 64, N = 128): each uses D of the MXM's weight rows and N of its columns, and installs weights of
its own. Heads h = 2j, 2j + 1 side by side make one product of twice the width:

    [Q_h | Q_h+1] @ [[K_h^T, 0], [0, K_h+1^T]] = [Q_h K_h^T | Q_h+1 K_h+1^T]   ([M, 2D] @ [2D, 2N])

Q's two heads are adjacent lanes already (a_lanes [offset, 2D]); the block-diagonal weights are
Transpose(K [B, 1, S, H*D] * masks [1, 2, 1, H*D]) viewed [B, H/2, 2D, 2N]: mask 0 keeps the lanes
of even heads (lane mod 2D < D), mask 1 the others; one map reading K's rows repeated (twice,
legalize_broadcast,
attr read_repeated) and one transpose of twice the rows, built from ops every stage already prices
(the zero blocks are loaded and multiplied like any weights; the MXM bound counts only the diagonal
blocks, lpuc.ir.model_work). The product installs half as many weight tiles and streams half as many
activation rows; its [B, H/2, M, 2N] scores keep both heads' rows in one vector, so the elementwise
maps between it and the softmax (scale, causal mask: their constant operands tiled twice along the
last axis) stream half as many vectors, the softmax becomes an `lpuc.SegmentedSoftmax` over runs of
N lanes (its trees serve both runs of a vector), and P @ V reads head h's probabilities at lanes (h
mod 2) * N of its pair's rows (HeadMatMul attr a_packed 2).

Applied when 2D fits the MXM's K tile, 2N a vector's lanes and N is a power of two (the segmented
trees' shifts stay inside a run), H is even, and the scores pass through elementwise ops only (each
other operand the same for every head, and a constant where it varies along the last axis: GPT-2's
causal mask, not BERT's computed padding mask) to a last-axis Softmax read only by a P @ V HeadMatMul.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from lpuc.ir.graph import LPUC_DOMAIN, Graph, Node
from lpuc.ir.model_work import ATTR as MODEL_BLOCKS
from lpuc.ir.model_work import block_diagonal, flat
from lpuc.kernels._common import normalize_axis
from lpuc.lowering.matmul import mxm_mode_for
from lpuc.ops import is_elementwise
from lpuc.passes.builder import EMITTED_OPSET

if TYPE_CHECKING:
    from lpuc.passes.pipeline import PassContext

PAIR = 2  # heads per product


def pair_heads(graph: Graph, ctx: PassContext) -> Graph:
    k_tile = ctx.target.mxm_mode(mxm_mode_for(np.float32, ctx.precision)).k_tile
    producers, consumers = graph.producers(), graph.consumers()
    plans = []
    for node in graph.nodes:
        plan = _plan(graph, producers, consumers, node, k_tile, ctx.target.lanes)
        if plan is not None:
            plans.append(plan)
    if not plans:
        return graph
    out = graph.copy()
    replaced: dict[str, list[Node]] = {}  # node name -> the nodes in its place
    for plan in plans:
        _rewrite(out, plan, replaced)
    nodes = [n for node in graph.nodes for n in replaced.get(node.name, [node])]
    return out.copy(nodes=nodes).prune_values()


def _plan(graph: Graph, producers, consumers, qk: Node, k_tile: int, lanes: int):
    """(Q @ K^T, K, its elementwise chain, Softmax, P @ V) when the heads of `qk` can pair."""
    if qk.op != "HeadMatMul" or qk.domain != LPUC_DOMAIN or qk.attr("merge", 0) or qk.attr("b_lanes"):
        return None
    a_lanes = [int(v) for v in qk.attr("a_lanes") or ()]
    heads = int(qk.attr("heads"))
    if not a_lanes or heads % PAIR or int(qk.attr("a_packed", 1)) != 1 or qk.attr(MODEL_BLOCKS):
        return None
    key = _transposed_key(graph, producers, qk.inputs[1], heads)
    if key is None:
        return None
    batch, h, m, n = graph.values[qk.outputs[0]].shape
    d = a_lanes[1]
    if PAIR * d > k_tile or PAIR * n > lanes or n & (n - 1) or graph.values[qk.inputs[1]].shape[-1] != n:
        return None
    chain, value = [], qk.outputs[0]
    while True:
        users = consumers.get(value, [])
        if value in graph.outputs or len(users) != 1:
            return None
        user = users[0]
        if user.op == "Softmax" and not user.domain:
            break
        if not is_elementwise(user.op, user.domain) or not _pairable_operands(graph, user, value, n):
            return None
        if tuple(graph.values[user.outputs[0]].shape) != (batch, h, m, n):
            return None
        chain.append(user)
        value = user.outputs[0]
    softmax = users[0]
    if normalize_axis(int(softmax.attr("axis", -1)), 4) != 3 or softmax.opset < 13:
        return None
    users = consumers.get(softmax.outputs[0], [])
    if softmax.outputs[0] in graph.outputs or len(users) != 1:
        return None
    pv = users[0]
    if (
        pv.op != "HeadMatMul"
        or pv.domain != LPUC_DOMAIN
        or pv.inputs[0] != softmax.outputs[0]
        or pv.attr("a_lanes")
        or int(pv.attr("heads")) != heads
        or int(pv.attr("a_packed", 1)) != 1
    ):
        return None
    return qk, key, chain, softmax, pv


def _transposed_key(graph: Graph, producers, value: str, heads: int) -> str | None:
    """K when `value` is Reshape(Transpose(K [B, S, H*D], [0, 2, 1]), [B, H, D, S]) (address_heads)."""
    r = producers.get(value)
    if r is None or r.op != "Reshape" or r.domain:
        return None
    t = producers.get(r.inputs[0])
    if t is None or t.op != "Transpose" or t.domain or list(t.attr("perm") or ()) != [0, 2, 1]:
        return None
    k = t.inputs[0]
    shape = graph.values[k].shape
    if len(shape) != 3 or shape[2] % heads or graph.touches_dynamic(t):
        return None
    return k


def _pairable_operands(graph: Graph, node: Node, chain_value: str, n: int) -> bool:
    """Whether every operand of `node` but the chain's value is the same for every head (no head
    axis), and a constant where it varies along the last axis (tiled for the pair, _tiled).

    A computed one (BERT's padding mask) is refused: tiled by a Concat (a scalar select through its
    condition) it measured BERT-base fp16 289,347 cycles against 269,051 unpaired. BERT projects K
    apart from Q and V, and the block-diagonal K^T (masking map, transpose of twice the rows) then
    sits on the path to the scores, where its K^T transpose alone did not."""
    for name in node.inputs:
        if not name or name == chain_value:
            continue
        shape = graph.values[name].shape
        if shape is None or len(shape) > 4:
            return False
        padded = (1,) * (4 - len(shape)) + tuple(shape)
        if padded[1] != 1 or padded[3] not in (1, n) or (padded[3] == n and not graph.is_const(name)):
            return False
    return True


def _rewrite(g: Graph, plan, replaced: dict[str, list[Node]]) -> None:
    qk, key, chain, softmax, pv = plan
    batch, heads, m, n = g.values[qk.outputs[0]].shape
    _, seq, width = g.values[key].shape
    d = width // heads
    dtype = g.values[key].dtype
    name = qk.name
    # Block-diagonal K^T: K's rows twice, lanes of even heads kept in the first S rows and of odd
    # heads in the next S (one map reading K's rows repeated), transposed, viewed by head pairs.
    nodes: list[Node] = []

    def add(op: str, tag: str, inputs: tuple[str, ...], shape: tuple[int, ...], attrs=None) -> str:
        result = g.add_value(f"{key}/{tag}", shape, dtype)
        nodes.append(Node(op, f"{name}/pair_{tag}", inputs, (result,), attrs or {}, opset=EMITTED_OPSET))
        return result

    def view(value: str, tag: str, shape: tuple[int, ...]) -> str:
        dims = g.add_const(f"{name}/pair_{tag}_shape", np.array(shape, np.int64))
        return add("Reshape", tag, (value, dims), shape)

    lane_head = (np.arange(width) // d) % PAIR
    masks = np.stack([lane_head == p for p in range(PAIR)]).astype(dtype).reshape(1, PAIR, 1, width)
    rows = view(key, "rows", (batch, 1, seq, width))
    step = {"op": "Mul", "domain": "", "attrs": {}, "args": ["i0", "i1"], "dtype": np.dtype(dtype).name}
    # (a fused map, to read K's rows repeated, not an SXM copy of them per head: legalize_broadcast)
    masking = {"expr": [{**step, "opset": EMITTED_OPSET}], "read_repeated": [0]}
    operands = (rows, g.add_const(f"{name}/pair_masks", masks))
    halves = g.add_value(f"{key}/halves", (batch, PAIR, seq, width), dtype)
    nodes.append(Node("Fused", f"{name}/pair_halves", operands, (halves,), masking, LPUC_DOMAIN, 1))
    stacked = view(halves, "stacked", (batch, PAIR * seq, width))
    flipped = add("Transpose", "transposed", (stacked,), (batch, width, PAIR * seq), {"perm": [0, 2, 1]})
    weights = view(flipped, "block_diagonal", (batch, heads // PAIR, PAIR * d, PAIR * seq))
    paired = (batch, heads // PAIR, m, PAIR * n)
    a_lanes = [int(v) for v in qk.attr("a_lanes")]
    scores = g.add_value(f"{qk.outputs[0]}/paired", paired, g.values[qk.outputs[0]].dtype)
    attrs = {
        **qk.attrs,
        "heads": heads // PAIR,
        "a_lanes": [a_lanes[0], PAIR * d],
        MODEL_BLOCKS: flat(block_diagonal(PAIR, d, n)),
    }
    nodes.append(qk.with_(inputs=(qk.inputs[0], weights), outputs=(scores,), attrs=attrs))
    replaced[qk.name] = nodes
    value = scores
    renamed = {qk.outputs[0]: scores}
    for node in chain:
        inputs = tuple(renamed[i] if i in renamed else _tiled(g, i, n) if i else i for i in node.inputs)
        result = g.add_value(f"{node.outputs[0]}/paired", paired, g.values[node.outputs[0]].dtype)
        renamed[node.outputs[0]] = result
        replaced[node.name] = [node.with_(inputs=inputs, outputs=(result,))]
        value = result
    probs = g.add_value(f"{softmax.outputs[0]}/paired", paired, g.values[softmax.outputs[0]].dtype)
    replaced[softmax.name] = [
        Node("SegmentedSoftmax", softmax.name, (value,), (probs,), {"segment": int(n)}, LPUC_DOMAIN, 1)
    ]
    replaced[pv.name] = [pv.with_(inputs=(probs, *pv.inputs[1:]), attrs={**pv.attrs, "a_packed": PAIR})]
    for old in (qk.outputs[0], *(c.outputs[0] for c in chain), softmax.outputs[0]):
        g.values.pop(old, None)


def _tiled(g: Graph, name: str, n: int) -> str:
    """An operand of the scores' elementwise chain for a pair of heads: a constant with the last axis
    N tiled twice (one copy per head), anything else as it is."""
    v = g.values[name]
    if not v.shape or v.shape[-1] != n or n == 1:
        return name
    return g.add_const(f"{name}/pair_tiled", np.concatenate([v.const] * PAIR, axis=-1))
