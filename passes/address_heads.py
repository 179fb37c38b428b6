"""Attention heads as addressing instead of data movement.

Exporters split heads with X [B, S, H*D] -> Reshape [B, S, H, D] -> Transpose [B, H, S, D] and merge
them back with the inverse. In tsp-v1's [rows, lanes] layout each of those is a whole-tensor SXM pass
(the Reshape narrows the lanes from H*D to D, the Transpose reorders rows), yet head h of X is only
lanes [h*D, (h+1)*D) of X's rows: a window the MXM can stream from or write to directly. So:

- a MatMul operand Transpose(Reshape(X, [B, S, H, D]), [0, 2, 1, 3]) (Q as activations, V as weights)
  is read from X's lanes, and when X is an output of a last-axis Split of P (the fused QKV
  projection), from P's lanes at X's offset;
- a MatMul result read only by Transpose([0, 2, 1, 3]) and then Reshape([B, S, H*N]) is written
  into the lanes of that merged result. A weight's lanes are the plane's columns and so the result's
  lanes: weights are read by heads only into a merged result, from an offset on a tile boundary
  (head h's weights then sit where its result goes); an activation's lanes meet the plane's rows,
  which the weight load places freely, so activations are read from any offset;
  such a MatMul becomes `lpuc.HeadMatMul`: attributes heads, a_lanes / b_lanes ([offset, width] of an
  operand read by heads, [] for an operand read as it is) and merge (1: result merged);
- K^T, Transpose(Reshape(K, [B, S, H, D]), [0, 2, 3, 1]), becomes Reshape(Transpose(K, [0, 2, 1]),
  [B, H, D, S]): one SXM transpose instead of a Reshape and a Transpose, and that Reshape keeps the
  [rows, lanes] view (head h's weights are rows [h*D, (h+1)*D)), so it costs nothing.
  When K is an output of the Split of a fused QKV projection X @ W [+ b] (constants W, b), K's
  columns of W and b become a projection of their own, so that the transpose reads K alone and the
  Split of the rest is addressing too; V (read by heads as weights) gets a projection of its own as
  well, so that its lanes start on a tile boundary. The MXM tiles each projection's columns apart
  (on GPT-2 shapes one more column chunk than the fused projection: 3 + 3 + 3 against 8).
The Reshapes, Transposes and Splits left unread are removed by eliminate_dead_code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from lpuc.ir.graph import LPUC_DOMAIN, Graph, Node
from lpuc.kernels._common import normalize_axis
from lpuc.passes.builder import EMITTED_OPSET

if TYPE_CHECKING:
    from lpuc.passes.pipeline import PassContext

SPLIT_HEADS = (0, 2, 1, 3)  # [B, S, H, D] -> [B, H, S, D], and back
SPLIT_HEADS_TRANSPOSED = (0, 2, 3, 1)  # [B, S, H, D] -> [B, H, D, S]


@dataclass(frozen=True)
class Heads:
    """A [B, H, S, D] operand that is lanes [offset, offset + H*D) of the rows of `source` [B, S, *]."""

    source: str
    heads: int
    offset: int
    width: int


def address_heads(graph: Graph, ctx: PassContext) -> Graph:
    lanes = ctx.target.lanes
    # V's columns join Q's projection when that saves column chunks and still gives every plane one.
    tiling = (ctx.target.mxm_mode(ctx.precision).n_tile, ctx.target.num_mxm)
    graph = _project_keys_apart(graph, tiling if "values_with_queries" not in ctx.disabled else None)
    producers, consumers = graph.producers(), graph.consumers()
    outputs = set(graph.outputs)
    out = graph.copy(nodes=[])
    merged: set[str] = set()  # Transpose / Reshape nodes a HeadMatMul's merged result replaces
    changed = False
    for node in graph.nodes:
        if node.name in merged:
            continue
        if node.op != "MatMul" or node.domain or not _four_d(graph, node):
            out.nodes.append(node)
            continue
        inputs = list(node.inputs[:2])
        k_t = _transposed_heads(graph, producers, inputs[1])
        if k_t is not None:
            inputs[1] = _transpose_rows(out, node, k_t)
            changed = True
        a = _heads_operand(graph, producers, inputs[0])
        b = _heads_operand(graph, producers, inputs[1]) if k_t is None else None
        merge = _merged_result(graph, consumers, outputs, node)
        # Weights by heads only into a merged result, from a tile boundary (see the module docstring).
        if b is None or merge is None or b.offset % lanes:
            b = merge = None
        heads = graph.values[node.outputs[0]].shape[1]
        if (a is None and b is None and merge is None) or any(h and h.heads != heads for h in (a, b)):
            out.nodes.append(node.with_(inputs=tuple(inputs)))
            continue
        attrs = {
            "heads": int(heads),
            "a_lanes": [a.offset, a.width] if a else [],
            "b_lanes": [b.offset, b.width] if b else [],
            "merge": int(merge is not None),
        }
        changed = True
        sources = (a.source if a else inputs[0], b.source if b else inputs[1])
        result = node.outputs[0]
        if merge is not None:
            merged.update(n.name for n in merge)
            result = merge[-1].outputs[0]
        out.nodes.append(Node("HeadMatMul", node.name, sources, (result,), attrs, LPUC_DOMAIN, 1))
    return out.prune_values() if changed else graph


def _four_d(graph: Graph, node: Node) -> bool:
    shapes = [graph.values[v].shape for v in (*node.inputs[:2], node.outputs[0])]
    if graph.touches_dynamic(node) or any(len(s) != 4 for s in shapes):
        return False
    return shapes[0][:2] == shapes[1][:2] == shapes[2][:2]  # no broadcast batch dims


def _split_heads(graph: Graph, producers: dict[str, Node], value: str, perm: tuple[int, ...]):
    """(Reshape node, X, H, D) when `value` is Transpose(Reshape(X [B, S, H*D], [B, S, H, D]), perm)."""
    t = producers.get(value)
    if t is None or t.op != "Transpose" or t.domain or tuple(t.attr("perm") or ()) != perm:
        return None
    r = producers.get(t.inputs[0])
    if r is None or r.op != "Reshape" or r.domain or graph.touches_dynamic(r):
        return None
    x = r.inputs[0]
    xs, rs = graph.values[x].shape, graph.values[r.outputs[0]].shape
    if len(xs) != 3 or len(rs) != 4 or tuple(rs[:2]) != tuple(xs[:2]) or rs[2] * rs[3] != xs[2]:
        return None
    return r, x, int(rs[2]), int(rs[3])


def _heads_operand(graph: Graph, producers: dict[str, Node], value: str) -> Heads | None:
    found = _split_heads(graph, producers, value, SPLIT_HEADS)
    if found is None:
        return None
    _, x, heads, width = found
    split = producers.get(x)
    if split is not None and split.op == "Split" and not split.domain and not graph.touches_dynamic(split):
        rank = len(graph.values[split.inputs[0]].shape)
        if normalize_axis(int(split.attr("axis", 0)), rank) == rank - 1:
            k = split.outputs.index(x)
            offset = sum(int(graph.values[o].shape[-1]) for o in split.outputs[:k])
            return Heads(split.inputs[0], heads, offset, width)
    return Heads(x, heads, 0, width)


def _transposed_heads(graph: Graph, producers: dict[str, Node], value: str) -> tuple[str, int, int] | None:
    """(K, H, D) when `value` is K^T split into heads: Transpose(Reshape(K, [B, S, H, D]), [0, 2, 3, 1])."""
    found = _split_heads(graph, producers, value, SPLIT_HEADS_TRANSPOSED)
    return None if found is None else found[1:]


def _transpose_rows(out: Graph, matmul: Node, k_t: tuple[str, int, int]) -> str:
    """Reshape(Transpose(K, [0, 2, 1]), [B, H, D, S]) added to `out`; its name."""
    k, heads, width = k_t
    batch, seq, lanes = out.values[k].shape
    dtype = out.values[k].dtype
    flipped = out.add_value(f"{k}/transposed", (batch, lanes, seq), dtype)
    name = f"{matmul.name}/kt"
    out.nodes.append(
        Node("Transpose", f"{name}/transpose", (k,), (flipped,), {"perm": [0, 2, 1]}, opset=EMITTED_OPSET)
    )
    shape = out.add_const(f"{name}/shape", np.array([batch, heads, width, seq], dtype=np.int64))
    heads_first = out.add_value(f"{k}/heads_transposed", (batch, heads, width, seq), dtype)
    out.nodes.append(Node("Reshape", f"{name}/heads", (flipped, shape), (heads_first,), opset=EMITTED_OPSET))
    return heads_first


def _merged_result(
    graph: Graph, consumers: dict[str, list[Node]], outputs: set[str], matmul: Node
) -> tuple[Node, Node] | None:
    """(Transpose, Reshape) when the MatMul's [B, H, M, N] result is only merged to [B, M, H*N]."""
    value = matmul.outputs[0]
    users = consumers.get(value, [])
    if value in outputs or len(users) != 1:
        return None
    t = users[0]
    if t.op != "Transpose" or t.domain or tuple(t.attr("perm") or ()) != SPLIT_HEADS:
        return None
    users = consumers.get(t.outputs[0], [])
    if t.outputs[0] in outputs or len(users) != 1 or users[0].op != "Reshape" or users[0].domain:
        return None
    r = users[0]
    batch, heads, rows, width = graph.values[value].shape
    if tuple(graph.values[r.outputs[0]].shape) != (batch, rows, heads * width):
        return None
    return t, r


def _project_keys_apart(graph: Graph, tiling: tuple[int, int] | None = None) -> Graph:
    """`graph` with each K that is split into heads as K^T, and that is a last-axis Split output of
    a constant projection X @ W [+ b] read only by that Split, computed by a projection of its own
    (W's and b's columns of K); the Split then splits the projection of the other columns, with V's
    columns first where `tiling` says so (see _split_projection)."""
    producers, consumers = graph.producers(), graph.consumers()
    rewrites: dict[str, tuple[Node, ...]] = {}  # Split node name -> the nodes replacing it
    for node in graph.nodes:
        if node.op != "MatMul" or node.domain or not _four_d(graph, node):
            continue
        k_t = _transposed_heads(graph, producers, node.inputs[1])
        split = producers.get(k_t[0]) if k_t else None
        if split is None or split.name in rewrites or split.op != "Split" or split.domain:
            continue
        projection = _constant_projection(graph, producers, consumers, split)
        if projection is not None:
            apart = [o for o in split.outputs if o != k_t[0] and _feeds_weight_heads(graph, consumers, o)]
            rewrites[split.name] = _split_projection(graph, split, k_t[0], apart, *projection, tiling)
    if not rewrites:
        return graph
    out = graph.copy(nodes=[])
    for node in graph.nodes:
        out.nodes.extend(rewrites.get(node.name, (node,)))
    return out  # the old projection is dead: eliminate_dead_code drops it


def _constant_projection(
    graph: Graph, producers: dict[str, Node], consumers: dict[str, list[Node]], split: Node
) -> tuple[str, np.ndarray, np.ndarray | None] | None:
    """(X, W, b) when the Split splits the last axis of X @ W [+ b] (W 2-D, b one row; constants)
    and nothing else reads the projection; else None."""
    p = split.inputs[0]
    shape = graph.values[p].shape
    if len(split.outputs) < 2 or graph.touches_dynamic(split) or len(shape) != 3 or p in graph.outputs:
        return None
    if normalize_axis(int(split.attr("axis", 0)), 3) != 2 or len(consumers.get(p, [])) != 1:
        return None
    bias = None
    node = producers.get(p)
    if node is not None and node.op == "Add" and not node.domain:
        k = next((k for k in (0, 1) if graph.is_const(node.inputs[k])), None)
        if k is None:
            return None
        bias = graph.values[node.inputs[k]].const
        if (
            bias.size != shape[-1]
            or bias.shape[-1] != shape[-1]
            or len(consumers.get(node.inputs[1 - k], [])) != 1
        ):
            return None
        bias = bias.reshape(-1)
        node = producers.get(node.inputs[1 - k])
    if node is None or node.op != "MatMul" or node.domain or not graph.is_const(node.inputs[1]):
        return None
    weights = graph.values[node.inputs[1]].const
    if weights.ndim != 2 or graph.values[node.outputs[0]].shape != shape:
        return None
    return node.inputs[0], weights, bias


def _feeds_weight_heads(graph: Graph, consumers: dict[str, list[Node]], value: str) -> bool:
    """Whether `value` is split into heads (Reshape, Transpose [0, 2, 1, 3]) as a MatMul's weights."""
    for r in consumers.get(value, []):
        for t in consumers.get(r.outputs[0], []) if r.op == "Reshape" else []:
            if t.op == "Transpose" and tuple(t.attr("perm") or ()) == SPLIT_HEADS:
                if any(
                    m.op == "MatMul" and m.inputs[1] == t.outputs[0] for m in consumers.get(t.outputs[0], [])
                ):
                    return True
    return False


def _split_projection(
    graph: Graph,
    split: Node,
    key: str,
    apart: list[str],
    x: str,
    weights: np.ndarray,
    bias: np.ndarray | None,
    tiling: tuple[int, int] | None = None,
) -> tuple[Node, ...]:
    """Nodes computing `key` = X @ W[:, K's columns] [+ b], each output in `apart` (V, read as weights
    by heads: its lanes must start on a tile boundary) likewise, and the Split's other outputs from X @
    the other columns [+ b].

    With `tiling` (the MXM's column tile, its planes) the first of `apart` is not projected alone but
    leads the other columns' projection (lane 0 is a tile boundary) when the MXM then tiles fewer
    column chunks and still at least one per plane (GPT-2 shapes: 768 + 768 columns in 5 chunks of
    320, apart 3 + 3). Fewer chunks than planes: the products apart run side by side, sooner (a
    64-wide toy GPT: 4,724 cycles apart, 4,815 together).
    """
    widths = {o: int(graph.values[o].shape[-1]) for o in split.outputs}
    starts = dict(zip(split.outputs, np.cumsum([0] + [widths[o] for o in split.outputs[:-1]])))
    batch, seq, _ = graph.values[key].shape
    dtype = graph.values[key].dtype
    nodes: list[Node] = []

    def project(columns: np.ndarray, tag: str, result: str | None) -> str:
        width = len(columns)
        name = f"{split.name}/{tag}"
        w = graph.add_const(f"{name}/weights", _columns_of(weights, columns))
        product = (
            result
            if bias is None and result
            else graph.add_value(f"{name}/product", (batch, seq, width), dtype)
        )
        nodes.append(Node("MatMul", f"{name}/matmul", (x, w), (product,), opset=EMITTED_OPSET))
        if bias is None:
            return product
        b = graph.add_const(f"{name}/bias", _columns_of(bias, columns))
        biased = result or graph.add_value(f"{name}/projection", (batch, seq, width), dtype)
        nodes.append(Node("Add", f"{name}/bias_add", (product, b), (biased,), opset=EMITTED_OPSET))
        return biased

    def columns(value: str) -> np.ndarray:
        return np.arange(starts[value], starts[value] + widths[value])

    # K first (its transpose comes before Q @ K^T), then the rest (Q), then V (needed last).
    project(columns(key), "keys", key)
    others = [o for o in split.outputs if o != key and o not in apart]
    if others and apart and tiling and _fewer_chunks([widths[apart[0]], *map(widths.get, others)], *tiling):
        others, apart = [apart[0], *others], apart[1:]
    if others:
        rest_columns = np.concatenate([columns(o) for o in others])
        rest = project(rest_columns, "rest", others[0] if len(others) == 1 else None)
        if len(others) > 1:  # the rest is split as before
            widths_left = np.array([widths[o] for o in others], np.int64)
            sizes = graph.add_const(f"{split.name}/rest_sizes", widths_left)
            nodes.append(
                Node(
                    "Split",
                    f"{split.name}/rest",
                    (rest, sizes),
                    tuple(others),
                    {"axis": -1},
                    opset=EMITTED_OPSET,
                )
            )
    for k, value in enumerate(apart, start=1):
        project(columns(value), f"apart{k}", value)
    return tuple(nodes)


def _columns_of(a: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """a[..., columns], contiguous and read-only (the graph keeps it without a copy of its own),
    copied run by run of consecutive columns: copying slices is many times faster than gathering
    columns by index (the same values; GPT-2 12L's 24 projections of K and of Q + V, apart from
    reading the weights: 0.17 s -> 0.01 s)."""
    breaks = np.flatnonzero(np.diff(columns) != 1) + 1
    runs = [(int(r[0]), int(r[-1]) + 1) for r in np.split(columns, breaks) if len(r)]
    if not runs or len(runs) > 8:  # (scattered columns: one gather)
        out = np.ascontiguousarray(a[..., columns])
    else:
        out = np.ascontiguousarray(np.concatenate([a[..., lo:hi] for lo, hi in runs], axis=-1))
    if out.base is None:  # our own copy (not a view of `a`)
        out.flags.writeable = False
    return out


def _fewer_chunks(widths: list[int], n_tile: int, planes: int) -> bool:
    """Whether products of these widths, projected together, take fewer column chunks than apart
    (V's and Q's apart: V's and the rest's), and at least one per plane."""
    together = -(-sum(widths) // n_tile)
    apart = -(-widths[0] // n_tile) + -(-sum(widths[1:]) // n_tile)
    return planes <= together < apart
