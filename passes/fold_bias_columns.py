"""int8 builds: a product's bias moves into its accumulator, so its epilogue reads one constant less.

After fold_requantize an int8 convolution's epilogue is Cast(acc) * S + B [-> Max] -> SaturatingCast
with S and B one float32 per output channel. Fused into the MM (lpuc/lowering/epilogue.py) each of
S and B streams to the VXM for the MM's whole duration: 4 stream ids each, and B takes one of the
map's chained ALUs. Here B joins the sum the MXM computes instead:

    acc' = A' @ W' = acc + beta,  beta = rint(B / S)  (B in accumulator units)

A' is A with a few constant columns appended and W' is W with one row per column: the columns hold
127 (and a last one 1), the rows beta's digits (beta = 127 * sum(h_j) + l, |h_j|, |l| <= 127, all
int8). The epilogue becomes Cast(acc') * S [-> Max] -> SaturatingCast.

Only where A is made by an Im2Col read by this product alone: the Im2Col writes the constant columns
as it writes its padding (lpuc/kernels/lowered.py, attribute const_columns), and only where they fit
in the lanes the last K tile leaves free, so that the Im2Col streams as many vectors and the product
as many K chunks as before (a packed Im2Col, pack_rows p, appends them to each of its p rows).

Numerics: acc + beta is exact in int32; beta differs from B / S by at most half an accumulator unit,
i.e. by at most S / 2 of the result's last place. Products with some |S| > 1/2 are left alone, so the
change stays below a quarter of the int8 result's rounding step.
"""

from __future__ import annotations

import math

import numpy as np

from lpuc.ir.graph import LPUC_DOMAIN, Graph, Node
from lpuc.passes.eliminate_dead_code import eliminate_dead_code

DIGIT = 127  # the value of each constant column but the last (int8's largest symmetric magnitude)
MAX_SCALE = 0.5  # rint(B / S) moves the result by at most S / 2 of its last place
MAX_BETA = 1 << 22  # keep acc' well inside float32's exact integers after the Cast (2^24)


def fold_bias_columns(graph: Graph, ctx: object = None) -> Graph:
    if getattr(ctx, "precision", "") != "int8":
        return graph
    lanes = ctx.target.lanes
    producers, consumers = graph.producers(), graph.consumers()
    outputs = set(graph.outputs)

    def only_reader(value: str, op: str) -> Node | None:
        readers = consumers.get(value, [])
        ok = len(readers) == 1 and readers[0].op == op and not readers[0].domain and value not in outputs
        return readers[0] if ok else None

    plans = {}
    for node in graph.nodes:
        plan = _plan(node, graph, producers, only_reader, lanes)
        if plan is not None:
            plans[node.name] = plan
    if not plans:
        return graph
    rewritten: dict[str, Node] = {}  # node name -> its replacement
    dropped: set[str] = set()
    out = graph.copy()
    for name, (im2col, mul, add, weights, columns) in plans.items():
        product = next(n for n in graph.nodes if n.name == name)
        old = graph.values[im2col.outputs[0]]
        cols = out.add_value(f"{im2col.outputs[0]}/bias_columns", (old.shape[0], weights.shape[0]), old.dtype)
        w = out.add_const(f"{product.inputs[1]}/bias_rows", weights)
        rewritten[im2col.name] = im2col.with_(
            outputs=(cols,), attrs={**im2col.attrs, "const_columns": [int(v) for v in columns]}
        )
        rewritten[product.name] = product.with_(inputs=(cols, w))
        # The multiply writes what the bias Add wrote; the Add goes.
        rewritten[mul.name] = mul.with_(outputs=add.outputs)
        dropped.add(add.name)
    out.nodes = [rewritten.get(n.name, n) for n in graph.nodes if n.name not in dropped]
    return eliminate_dead_code(out.prune_values())


def _plan(node: Node, graph: Graph, producers, only_reader, lanes: int):
    """(Im2Col, Mul, Add, W', constant column values) for a product whose bias can fold, else None."""
    if node.op != "MatMulInteger" or node.domain or len(node.inputs) != 2:
        return None
    a, w_name = node.inputs
    im2col = producers.get(a)
    made_by_im2col = im2col is not None and im2col.op == "Im2Col" and im2col.domain == LPUC_DOMAIN
    if not made_by_im2col or im2col.attr("const_columns"):
        return None
    if only_reader(a, "MatMulInteger") is None or not graph.is_const(w_name):
        return None
    w = np.asarray(graph.values[w_name].const)
    av = graph.values[a]
    if w.dtype != np.int8 or w.ndim != 2 or av.shape is None or tuple(av.shape[1:]) != (w.shape[0],):
        return None
    cast = only_reader(node.outputs[0], "Cast")
    mul = cast and only_reader(cast.outputs[0], "Mul")
    add = mul and only_reader(mul.outputs[0], "Add")
    if add is None or mul.inputs[0] != cast.outputs[0] or add.inputs[0] != mul.outputs[0]:
        return None
    if not (graph.is_const(mul.inputs[1]) and graph.is_const(add.inputs[1])):
        return None
    n_cols = w.shape[1]
    scale, offset = (_per_column(graph, v, n_cols) for v in (mul.inputs[1], add.inputs[1]))
    if scale is None or offset is None or not np.all(np.isfinite(offset)):
        return None
    if not np.all(np.isfinite(scale)) or np.any(scale == 0) or np.max(np.abs(scale)) > MAX_SCALE:
        return None
    beta = np.rint(offset / scale)
    if np.max(np.abs(beta)) >= MAX_BETA:
        return None
    digits = _digits(beta.astype(np.int64))
    pack = int(im2col.attr("pack_rows", 1))
    k = w.shape[0] // pack
    extra = len(digits)
    if k * pack != w.shape[0] or math.ceil(pack * (k + extra) / lanes) != math.ceil(pack * k / lanes):
        return None  # the columns would take another K tile
    values = [DIGIT] * (extra - 1) + [1]
    return im2col, mul, add, _with_bias_rows(w, digits, pack), values


def _per_column(graph: Graph, name: str, n_cols: int) -> np.ndarray | None:
    """A constant broadcast over rows as one float64 per column, or None (it varies by row)."""
    c = np.asarray(graph.values[name].const, dtype=np.float64)
    if c.ndim > 1 and math.prod(c.shape[:-1]) != 1:
        return None
    try:
        return np.broadcast_to(c.reshape(-1), (n_cols,)).copy()
    except ValueError:
        return None


def _digits(beta: np.ndarray) -> list[np.ndarray]:
    """beta as int8 rows [h_0, ..., h_{c-1}, l] with beta = 127 * sum(h_j) + l."""
    high = np.rint(beta / DIGIT).astype(np.int64)
    low = beta - DIGIT * high  # in [-63, 63]
    rows = []
    rest = high
    while np.any(rest):
        h = np.clip(rest, -DIGIT, DIGIT)
        rows.append(h)
        rest = rest - h
    rows.append(low)
    return [r.astype(np.int8) for r in rows]


def _with_bias_rows(w: np.ndarray, digits: list[np.ndarray], pack: int) -> np.ndarray:
    """W [p K, p N] (block diagonal when p > 1) with each group's K rows followed by the digit rows
    of that group's N columns."""
    k, n = w.shape[0] // pack, w.shape[1] // pack
    extra = len(digits)
    out = np.zeros((pack * (k + extra), w.shape[1]), np.int8)
    for j in range(pack):
        top = j * (k + extra)
        out[top : top + k] = w[j * k : (j + 1) * k]
        for i, row in enumerate(digits):
            out[top + k + i, j * n : (j + 1) * n] = row[j * n : (j + 1) * n]
    return out
