"""int8 builds: a product's bias moves into its accumulator, so its epilogue reads one constant less.

After fold_requantize an int8 convolution's epilogue is Cast(acc) * S + B [-> Relu] -> SaturatingCast
with S and B one float32 per output channel. Fused into the MM (lpuc/lowering/epilogue.py) each of
S and B streams to the VXM for the MM's whole duration: 4 stream ids each, and B takes one of the
map's chained ALUs. Here B joins the sum the MXM computes instead:

    acc' = A' @ W' = acc + beta,  beta = rint(B / S)  (B in accumulator units)

A' is A with a few constant columns appended and W' is W with one row per column: the columns hold
127 (and a last one 1), the rows beta's digits (beta = 127 * sum(h_j) + l, |h_j|, |l| <= 127, all
int8). The epilogue becomes Cast(acc') * S [-> Relu] -> SaturatingCast.

Where the constant columns come from, in two rounds:
- A made by an Im2Col read by this product alone: the Im2Col writes the constant columns as it
  writes its padding (lpuc/kernels/lowered.py, attribute const_columns; a packed Im2Col, pack_rows
  p, appends them to each of its p rows). ResNet's 3x3 convolutions.
- A written by another product's requantize map (Cast, Mul [, Add] [, Relu or Max], SaturatingCast
  [, a Reshape keeping the [rows, cols] view]) that only this product reads: that product gets
  output channels of the constant values (zero weight columns and a scale of 1, the value as their
  offset; or, its own bias folded in the first round, the value in its weight row of ones).
  ResNet's 1x1 conv3, which reads conv2's result.
Only where the columns fit in the lanes the last K tile leaves free (and the extra channels in the
other product's last N tile), so that the Im2Col streams as many vectors and each product as many K
chunks and planes as before. A product reading a value others read too (ResNet's conv1: the block
output is also the next residual) keeps its Add, as do those whose beta needs more columns.

Numerics: acc + beta is exact in int32; beta differs from B / S by at most half an accumulator unit,
i.e. by at most S / 2 of the result's last place. Products with some |S| > 1/2 are left alone, so the
change stays below a quarter of the int8 result's rounding step.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import NamedTuple

import numpy as np

from lpuc.ir.graph import LPUC_DOMAIN, Graph, Node
from lpuc.passes.eliminate_dead_code import eliminate_dead_code

_INT8 = 3  # onnx TensorProto.INT8
DIGIT = 127  # the value of each constant column but the last (int8's largest symmetric magnitude)
MAX_SCALE = 0.5  # rint(B / S) moves the result by at most S / 2 of its last place
MAX_BETA = 1 << 22  # keep acc' well inside float32's exact integers after the Cast (2^24)


def fold_bias_columns(graph: Graph, ctx: object = None) -> Graph:
    if getattr(ctx, "precision", "") != "int8":
        return graph
    lanes = ctx.target.lanes
    # Products reading an Im2Col first: a product whose bias folded this way has a column of ones
    # that the second round's producers use to write constant channels without their own Add.
    graph = _fold(graph, lanes, _im2col_source)
    return _fold(graph, lanes, _channel_source)


class _Rewrite:
    """The graph being rewritten: replaced nodes, dropped nodes, values with new shapes."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.out = graph.copy()
        self.nodes: dict[str, Node] = {}  # node name -> its replacement
        self.dropped: set[str] = set()

    def node(self, n: Node) -> Node:
        return self.nodes.get(n.name, n)

    def replace(self, n: Node, **changes) -> None:
        self.nodes[n.name] = self.node(n).with_(**changes)

    def widen(self, value: str, cols: int) -> None:
        """`value` ([rows, cols] view) now has `cols` columns."""
        v = self.out.values[value]
        self.out.values[value] = replace(v, shape=(*v.shape[:-1], cols))

    def const(self, hint: str, array: np.ndarray) -> str:
        return self.out.add_const(hint, array)

    def result(self) -> Graph:
        self.out.nodes = [self.node(n) for n in self.graph.nodes if n.name not in self.dropped]
        return eliminate_dead_code(self.out.prune_values())


def _fold(graph: Graph, lanes: int, find_source) -> Graph:
    """Fold the bias of every product whose input `find_source` can give constant columns."""
    producers, consumers = graph.producers(), graph.consumers()
    outputs = set(graph.outputs)

    def only_reader(value: str, op: str) -> Node | None:
        readers = consumers.get(value, [])
        ok = len(readers) == 1 and readers[0].op == op and value not in outputs
        return readers[0] if ok and readers[0].domain in ("", LPUC_DOMAIN) else None

    rw = _Rewrite(graph)
    touched: set[str] = set()  # products whose weights this round changes (at most once each)
    for node in graph.nodes:
        bias = _bias(node, graph, only_reader)
        if bias is None or node.name in touched:
            continue
        mul, add, beta = bias
        source = find_source(node, graph, producers, only_reader)
        if source is None or source.products & touched:
            continue
        w = np.asarray(graph.values[node.inputs[1]].const)
        digits = _digits(beta)
        pack = source.pack
        k = w.shape[0] // pack
        if k * pack != w.shape[0] or math.ceil(pack * (k + len(digits)) / lanes) != math.ceil(
            pack * k / lanes
        ):
            continue  # the columns would take another K tile
        values = [DIGIT] * (len(digits) - 1) + [1]
        a = source.apply(rw, values)
        weights = rw.const(f"{node.inputs[1]}/bias_rows", _with_bias_rows(w, digits, pack))
        rw.replace(node, inputs=(a, weights))
        # The multiply writes what the bias Add wrote; the Add goes.
        rw.replace(mul, outputs=add.outputs)
        rw.dropped.add(add.name)
        touched |= source.products | {node.name}
    return rw.result() if touched else graph


def _bias(node: Node, graph: Graph, only_reader) -> tuple[Node, Node, np.ndarray] | None:
    """(Mul, Add, beta) for a product MatMulInteger(A, W const int8) -> Cast -> Mul(S) -> Add(B) with
    S, B constant per column, every |S| <= MAX_SCALE: beta = rint(B / S) as int64; else None."""
    if (
        node.op != "MatMulInteger"
        or node.domain
        or len(node.inputs) != 2
        or not graph.is_const(node.inputs[1])
    ):
        return None
    w = np.asarray(graph.values[node.inputs[1]].const)
    av = graph.values[node.inputs[0]]
    if w.dtype != np.int8 or w.ndim != 2 or av.shape is None or tuple(av.shape[1:]) != (w.shape[0],):
        return None
    chain = _requantize_chain(node, graph, only_reader)
    if chain is None or chain.add is None:
        return None
    scale, offset = chain.scale, chain.offset
    if np.max(np.abs(scale)) > MAX_SCALE or not np.all(np.isfinite(offset)):
        return None
    beta = np.rint(offset / scale)
    if np.max(np.abs(beta)) >= MAX_BETA:
        return None
    return chain.mul, chain.add, beta.astype(np.int64)


class _Chain(NamedTuple):
    """A product's result through Cast -> Mul(S) [-> Add(B)]: the nodes and their constants."""

    cast: Node
    mul: Node
    add: Node | None
    scale: np.ndarray  # per column, float64
    offset: np.ndarray | None


def _requantize_chain(node: Node, graph: Graph, only_reader) -> _Chain | None:
    n_cols = graph.values[node.outputs[0]].shape[-1]
    cast = only_reader(node.outputs[0], "Cast")
    mul = cast and only_reader(cast.outputs[0], "Mul")
    if mul is None or mul.inputs[0] != cast.outputs[0] or not graph.is_const(mul.inputs[1]):
        return None
    scale = _per_column(graph, mul.inputs[1], n_cols)
    if scale is None or not np.all(np.isfinite(scale)) or np.any(scale == 0):
        return None
    add = only_reader(mul.outputs[0], "Add")
    if add is None or add.inputs[0] != mul.outputs[0] or not graph.is_const(add.inputs[1]):
        return _Chain(cast, mul, None, scale, None)
    offset = _per_column(graph, add.inputs[1], n_cols)
    return None if offset is None else _Chain(cast, mul, add, scale, offset)


class _Im2ColSource(NamedTuple):
    """A product's input made by an Im2Col that only it reads."""

    im2col: Node
    pack: int
    products: frozenset = frozenset()

    def apply(self, rw: _Rewrite, values: list[int]) -> str:
        a = self.im2col.outputs[0]
        rw.widen(a, self.pack * (rw.out.values[a].shape[-1] // self.pack + len(values)))
        rw.replace(self.im2col, attrs={**self.im2col.attrs, "const_columns": [int(v) for v in values]})
        return a


def _im2col_source(node: Node, graph: Graph, producers, only_reader) -> _Im2ColSource | None:
    a = node.inputs[0]
    im2col = producers.get(a)
    made_by_im2col = im2col is not None and im2col.op == "Im2Col" and im2col.domain == LPUC_DOMAIN
    if not made_by_im2col or im2col.attr("const_columns") or only_reader(a, "MatMulInteger") is None:
        return None
    return _Im2ColSource(im2col, int(im2col.attr("pack_rows", 1)))


class _ChannelSource(NamedTuple):
    """A product's input written by another product's requantize map (Cast, Mul [, Add] [, Max],
    SaturatingCast [, a Reshape that keeps the [rows, cols] view]) that only it reads. That product
    gets output channels of constant values: weight columns of zeros and a scale of 1, with the
    value as their offset, or (its own bias folded into its sum) its weight row of ones' column
    holding the value."""

    producer: Node
    chain: _Chain
    steps: tuple[Node, ...]  # the Max (if any), the SaturatingCast, the Reshape (if any)
    products: frozenset
    pack: int = 1

    def apply(self, rw: _Rewrite, values: list[int]) -> str:
        q, chain, graph = self.producer, self.chain, rw.graph
        w = np.asarray(graph.values[q.inputs[1]].const)
        n, extra = w.shape[1], len(values)
        columns = np.zeros((w.shape[0], extra), np.int8)
        scale = np.concatenate([chain.scale, np.ones(extra)]).astype(graph.values[chain.mul.inputs[1]].dtype)
        if chain.add is None:
            columns[-1] = values  # the last row multiplies the Im2Col's column of ones
        else:
            b = np.concatenate([chain.offset, values]).astype(graph.values[chain.add.inputs[1]].dtype)
            rw.replace(
                chain.add, inputs=(chain.add.inputs[0], rw.const(f"{chain.add.inputs[1]}/channels", b))
            )
        rw.replace(
            q, inputs=(q.inputs[0], rw.const(f"{q.inputs[1]}/channels", np.concatenate([w, columns], 1)))
        )
        rw.replace(
            chain.mul, inputs=(chain.mul.inputs[0], rw.const(f"{chain.mul.inputs[1]}/channels", scale))
        )
        for node in (q, chain.cast, chain.mul, chain.add, *self.steps):
            if node is not None:
                rw.widen(node.outputs[0], n + extra)
        reshape = self.steps[-1]
        if reshape.op == "Reshape":
            shape = (*graph.values[reshape.outputs[0]].shape[:-1], n + extra)
            rw.replace(
                reshape,
                inputs=(
                    reshape.inputs[0],
                    rw.const(f"{reshape.inputs[1]}/channels", np.array(shape, np.int64)),
                ),
            )
        return reshape.outputs[0]


def _channel_source(node: Node, graph: Graph, producers, only_reader) -> _ChannelSource | None:
    a = node.inputs[0]
    steps = []  # from the product back: the Reshape, the SaturatingCast, the Max
    p = producers.get(a)
    reader = "MatMulInteger"
    if p is not None and p.op == "Reshape" and not p.domain:
        rows = graph.values[p.inputs[0]].shape
        if rows is None or len(rows) != 2 or tuple(graph.values[a].shape) != tuple(rows):
            return None
        if only_reader(a, reader) is None:
            return None
        steps.append(p)
        a, p, reader = p.inputs[0], producers.get(p.inputs[0]), "Reshape"
    saturating = p is not None and p.op == "SaturatingCast" and p.domain == LPUC_DOMAIN
    if not saturating or int(p.attr("to", 0)) != _INT8 or only_reader(a, reader) is None:
        return None
    steps.append(p)
    x, p = p.inputs[0], producers.get(p.inputs[0])
    if p is not None and p.op == "Relu" and not p.domain:  # (the constant channels hold 1 and 127)
        if only_reader(x, "SaturatingCast") is None:
            return None
        steps.append(p)
        x, p = p.inputs[0], producers.get(p.inputs[0])
    elif p is not None and p.op == "Max" and not p.domain and graph.is_const(p.inputs[1]):
        low = np.asarray(graph.values[p.inputs[1]].const)
        if low.size != 1 or float(low.reshape(())) > 1 or only_reader(x, "SaturatingCast") is None:
            return None  # (the constant channels hold 1 and 127)
        steps.append(p)
        x, p = p.inputs[0], producers.get(p.inputs[0])
    if p is None or p.op not in ("Add", "Mul") or p.domain or only_reader(x, steps[-1].op) is None:
        return None
    mul = producers.get(p.inputs[0]) if p.op == "Add" else p
    cast = mul and producers.get(mul.inputs[0])
    q = cast and producers.get(cast.inputs[0])
    if (
        q is None
        or q.op != "MatMulInteger"
        or q.domain
        or len(q.inputs) != 2
        or not graph.is_const(q.inputs[1])
    ):
        return None
    chain = _requantize_chain(q, graph, only_reader)
    if chain is None or chain.mul is not mul or (chain.add or chain.mul).outputs[0] != x:
        return None
    if chain.add is None and not _ends_in_ones(q, graph, producers):
        return None
    if np.asarray(graph.values[q.inputs[1]].const).dtype != np.int8:
        return None
    return _ChannelSource(q, chain, tuple(reversed(steps)), frozenset({q.name}))


def _ends_in_ones(q: Node, graph: Graph, producers) -> bool:
    """Whether q's input is an unpacked Im2Col whose last constant column is 1 (fold_bias_columns')."""
    im2col = producers.get(q.inputs[0])
    ok = im2col is not None and im2col.op == "Im2Col" and im2col.domain == LPUC_DOMAIN
    return ok and int(im2col.attr("pack_rows", 1)) == 1 and list(im2col.attr("const_columns") or [0])[-1] == 1


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
