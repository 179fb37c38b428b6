"""Two attention heads per Q @ K^T product: block-diagonal K^T, both heads' scores in one row.

After address_heads, Q @ K^T is an `lpuc.HeadMatMul` of H products [M, D] @ [D, N] (GPT-2, BERT:
D = 64, N = 128): each uses D of the MXM's weight rows and N of its columns, and installs weights of
its own. Heads h = 2j, 2j + 1 side by side make one product of twice the width:

    [Q_h | Q_h+1] @ [[K_h^T, 0], [0, K_h+1^T]] = [Q_h K_h^T | Q_h+1 K_h+1^T]   ([M, 2D] @ [2D, 2N])

Q's two heads are adjacent lanes already (a_lanes [offset, 2D]); the block-diagonal weights are
Transpose(Concat(K * even, K * odd)) viewed [B, H/2, 2D, 2N], where `even` keeps lanes of even heads
(lane mod 2D < D) and `odd` the others: two masking maps and one transpose of twice the rows, built
from ops every stage already prices (the zero blocks are loaded and multiplied like any weights; the
MXM bound counts only the diagonal blocks, lpuc.ir.model_work). The product installs half as many
weight tiles and streams half as many activation rows; its [B, H/2, M, 2N] scores keep both heads'
rows in one vector, so the elementwise maps between it and the softmax (scale, causal mask: their
constant operands tiled twice along the last axis) stream half as many vectors, the softmax becomes
an `lpuc.SegmentedSoftmax` over runs of N lanes (its trees serve both runs of a vector), and P @ V
reads head h's probabilities at lanes (h mod 2) * N of its pair's rows (HeadMatMul attr a_packed 2).

Applied when 2D fits the MXM's K tile, 2N a vector's lanes and N is a power of two (the segmented
trees' shifts stay inside a run), H is even, and the scores pass through elementwise ops only (each
other operand one value per head pair: no per-head operand) to a last-axis Softmax read only by a
P @ V HeadMatMul.
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
    tiled: dict[str, str] = {}  # operand -> its last axis tiled for a pair (one for every layer)
    for plan in plans:
        _rewrite(out, plan, replaced, tiled)
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
    axis); one that varies along the last axis is tiled for the pair (_tiled)."""
    for name in node.inputs:
        if not name or name == chain_value:
            continue
        shape = graph.values[name].shape
        if shape is None or len(shape) > 4:
            return False
        padded = (1,) * (4 - len(shape)) + tuple(shape)
        if padded[1] != 1 or padded[3] not in (1, n):
            return False
    return True


def _rewrite(g: Graph, plan, replaced: dict[str, list[Node]], tiled: dict[str, str]) -> None:
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
    halves = add("Mul", "halves", (rows, g.add_const(f"{name}/pair_masks", masks)), (batch, PAIR, seq, width))
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
        tiles: list[Node] = []
        inputs = tuple(
            renamed[i] if i in renamed else _tiled(g, i, n, tiled, tiles) if i else i for i in node.inputs
        )
        result = g.add_value(f"{node.outputs[0]}/paired", paired, g.values[node.outputs[0]].dtype)
        renamed[node.outputs[0]] = result
        replaced[node.name] = [*tiles, node.with_(inputs=inputs, outputs=(result,))]
        value = result
    probs = g.add_value(f"{softmax.outputs[0]}/paired", paired, g.values[softmax.outputs[0]].dtype)
    replaced[softmax.name] = [
        Node("SegmentedSoftmax", softmax.name, (value,), (probs,), {"segment": int(n)}, LPUC_DOMAIN, 1)
    ]
    replaced[pv.name] = [pv.with_(inputs=(probs, *pv.inputs[1:]), attrs={**pv.attrs, "a_packed": PAIR})]
    for old in (qk.outputs[0], *(c.outputs[0] for c in chain), softmax.outputs[0]):
        g.values.pop(old, None)


def _tiled(g: Graph, name: str, n: int, tiled: dict[str, str], nodes: list[Node]) -> str:
    """An operand of the scores' elementwise chain for a pair of heads: its last axis N tiled twice
    (one copy per head: a constant's at compile time, a computed one's by a Concat added to `nodes`,
    once for all the layers reading it), anything else as it is. A select between scalar constants
    (BERT's attention mask) is tiled through: the same select of its tiled condition, so that each
    map still reads the 1-byte condition (passes/inline_mask_selects)."""
    v = g.values[name]
    if not v.shape or v.shape[-1] != n or n == 1:
        return name
    if name in tiled:
        return tiled[name]
    shape = (*v.shape[:-1], PAIR * n)
    select = g.producers().get(name)
    if v.is_const:
        tiled[name] = g.add_const(f"{name}/pair_tiled", np.concatenate([v.const] * PAIR, axis=-1))
    elif _scalar_select(g, select) and g.values[select.inputs[0]].shape == v.shape:
        condition = _tiled(g, select.inputs[0], n, tiled, nodes)
        tiled[name] = g.add_value(f"{name}/pair_tiled", shape, v.dtype)
        nodes.append(
            select.with_(
                name=f"{select.name}/pair_tiled",
                inputs=(condition, *select.inputs[1:]),
                outputs=(tiled[name],),
            )
        )
    else:
        tiled[name] = g.add_value(f"{name}/pair_tiled", shape, v.dtype)
        nodes.append(
            Node(
                "Concat",
                f"{name}/pair_tile",
                (name,) * PAIR,
                (tiled[name],),
                {"axis": -1},
                opset=EMITTED_OPSET,
            )
        )
    return tiled[name]


def _scalar_select(g: Graph, node: Node | None) -> bool:
    """Whether `node` is Where(condition, a, b) with constant scalars a and b."""
    if node is None or node.op != "Where" or node.domain or len(node.inputs) != 3:
        return False
    return all(g.is_const(i) and g.values[i].const.size == 1 for i in node.inputs[1:])
