"""Einsum -> Transpose / Reshape / Gather / ReduceSum / MatMul / Mul: contractions run on the MXM.

The equation gets one label per axis; ellipsis axes are labelled "...0", "...1", ... right-aligned
across operands, so they broadcast like numpy. Each operand is then normalized:

1. repeated labels (diagonals, traces) are taken exactly: the repeated axes are moved last and
   flattened, and a Gather picks the diagonal elements (pure data movement, so an inf or NaN off
   the diagonal cannot leak into the result the way a multiply-by-identity would);
2. size-1 axes whose label is larger in another operand (broadcast) are reshaped away;
3. labels that neither the output nor another operand needs are summed out (ReduceSum).

Operands are contracted left to right, two at a time. Shared labels still needed later are batch
dims, shared labels needed nowhere else are contracted, the rest are rows (left operand) or columns
(right operand). With contracted labels the pair is one MatMul A[batch, rows, K] @ B[batch, K, cols]
(batch dims first, contracted dims last on A and first on B); without, a broadcasting Mul. A final
ReduceSum and Transpose give the output's label order. No Einsum is left for the host, except one
with an empty operand, which is left untouched.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from lpuc.errors import UnsupportedError
from lpuc.ir.graph import Graph, Node
from lpuc.passes.builder import NodeBuilder, replace_nodes

ELLIPSIS = "..."

Labels = tuple[str, ...]


@dataclass(frozen=True)
class Term:
    """An operand in flight: a value and the label of each of its axes."""

    value: str
    labels: Labels


def lower_einsum(graph: Graph, ctx: object = None) -> Graph:
    return replace_nodes(graph, _lowerable, _lower)


def _lowerable(node: Node, graph: Graph) -> bool:
    if node.op != "Einsum" or node.domain:
        return False
    # MatMul with K = 0 and empty reductions are not lowered: such an Einsum stays on the host.
    return all(graph.values[v].size for v in (*node.inputs, *node.outputs) if v)


def parse_equation(equation: str, ranks: Sequence[int]) -> tuple[list[Labels], Labels]:
    """The labels of every operand's axes and of the output's (implicit output: numpy's rule)."""
    text = "".join(equation.split())
    lhs, arrow, rhs = text.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ranks):
        raise ValueError(f"equation {equation!r} names {len(terms)} operands, the node has {len(ranks)}")
    letters = [len(t.replace(ELLIPSIS, "")) for t in terms]
    ellipsis_rank = max((r - n for t, r, n in zip(terms, ranks, letters) if ELLIPSIS in t), default=0)
    inputs = [
        _term_labels(t, r - n if ELLIPSIS in t else 0, ellipsis_rank)
        for t, r, n in zip(terms, ranks, letters)
    ]
    for term, labels, rank in zip(terms, inputs, ranks):
        if len(labels) != rank:
            raise ValueError(f"term {term!r} of equation {equation!r} does not fit an operand of rank {rank}")
    if arrow:
        output = _term_labels(rhs, ellipsis_rank, ellipsis_rank)
        unknown = set(output) - {x for labels in inputs for x in labels}
        if unknown or len(set(output)) != len(output):
            raise ValueError(f"output of equation {equation!r} repeats a label or names one no operand has")
        return inputs, output
    counts = Counter(label for labels in inputs for label in labels if not label.startswith(ELLIPSIS))
    once = sorted(label for label, n in counts.items() if n == 1)
    return inputs, _ellipsis_labels(ellipsis_rank, ellipsis_rank) + tuple(once)


def _term_labels(term: str, own_rank: int, ellipsis_rank: int) -> Labels:
    head, found, tail = term.partition(ELLIPSIS)
    if head + tail and not (head + tail).isalpha():
        raise ValueError(f"term {term!r} has characters other than letters and one '...'")
    middle = _ellipsis_labels(own_rank, ellipsis_rank) if found else ()
    return tuple(head) + middle + tuple(tail)


def _ellipsis_labels(own_rank: int, ellipsis_rank: int) -> Labels:
    # Right-aligned: an operand with fewer ellipsis axes shares the trailing ones (numpy broadcasting).
    return tuple(f"{ELLIPSIS}{ellipsis_rank - own_rank + j}" for j in range(own_rank))


def label_sizes(terms: Sequence[Labels], shapes: Sequence[tuple[int, ...]]) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for labels, shape in zip(terms, shapes):
        for label, dim in zip(labels, shape):
            known = sizes.get(label, 1)
            if dim != 1 and known not in (1, dim):
                raise ValueError(f"label {label!r} has sizes {known} and {dim}")
            sizes[label] = max(known, dim)
    return sizes


def _lower(b: NodeBuilder) -> None:
    node = b.node
    shapes = [b.shape(v) for v in node.inputs]
    try:
        labels, output = parse_equation(str(node.attr("equation", "")), [len(s) for s in shapes])
        sizes = label_sizes(labels, shapes)
    except ValueError as e:
        raise UnsupportedError(f"Einsum node '{node.name}': {e}") from None
    order = output + tuple(dict.fromkeys(x for ls in labels for x in ls if x not in output))
    terms = [_normalize(b, Term(v, ls), sizes) for v, ls in zip(node.inputs, labels)]
    while len(terms) > 1:
        needed = set(output).union(*(t.labels for t in terms[2:]))
        terms = [_contract_pair(b, terms[0], terms[1], needed, order, sizes), *terms[2:]]
    result = _permute(b, _sum_out(b, terms[0], set(output)), output)
    b.bind_output(result.value, node.outputs[0])


def _normalize(b: NodeBuilder, term: Term, sizes: Mapping[str, int]) -> Term:
    while True:
        repeated = next((x for x in dict.fromkeys(term.labels) if term.labels.count(x) > 1), None)
        if repeated is None:
            return _drop_broadcast_axes(b, term, sizes)
        term = _take_diagonal(b, term, repeated)


def _take_diagonal(b: NodeBuilder, term: Term, label: str) -> Term:
    """The elements whose `label` axes all have the same index, as one axis placed last."""
    shape = b.shape(term.value)
    axes = [i for i, x in enumerate(term.labels) if x == label]
    others = [i for i, x in enumerate(term.labels) if x != label]
    n = shape[axes[0]]
    if any(shape[a] != n for a in axes):
        raise UnsupportedError(
            f"Einsum node '{b.node.name}': label {label!r} repeats over axes of unequal sizes "
            f"{[shape[a] for a in axes]}"
        )
    moved = b.transpose(term.value, others + axes, "diagonal_transpose")
    flat = b.reshape(moved, [shape[i] for i in others] + [n ** len(axes)], "diagonal_flatten")
    # In the flattened axis, element (i, i, ..., i) sits at i * (1 + n + n^2 + ...).
    stride = sum(n**j for j in range(len(axes)))
    diagonal = b.gather(flat, np.arange(n) * stride, axis=len(others), tag="diagonal")
    return Term(diagonal, tuple(term.labels[i] for i in others) + (label,))


def _drop_broadcast_axes(b: NodeBuilder, term: Term, sizes: Mapping[str, int]) -> Term:
    shape = b.shape(term.value)
    keep = [i for i, x in enumerate(term.labels) if shape[i] == sizes[x]]
    if len(keep) == len(shape):
        return term
    value = b.reshape(term.value, [shape[i] for i in keep], "drop_broadcast_axes")
    return Term(value, tuple(term.labels[i] for i in keep))


def _sum_out(b: NodeBuilder, term: Term, keep: set[str]) -> Term:
    axes = [i for i, x in enumerate(term.labels) if x not in keep]
    value = b.reduce("ReduceSum", term.value, axes, keepdims=False, tag="sum")
    return Term(value, tuple(x for x in term.labels if x in keep))


def _permute(b: NodeBuilder, term: Term, labels: Sequence[str]) -> Term:
    return Term(b.transpose(term.value, [term.labels.index(x) for x in labels]), tuple(labels))


def _contract_pair(
    b: NodeBuilder, a: Term, c: Term, needed: set[str], order: Labels, sizes: Mapping[str, int]
) -> Term:
    a = _sum_out(b, a, needed | set(c.labels))
    c = _sum_out(b, c, needed | set(a.labels))
    contracted = [x for x in a.labels if x in c.labels and x not in needed]
    if not contracted:
        return _multiply(b, a, c, order)
    rows = [x for x in a.labels if x not in c.labels]
    shared = [x for x in a.labels if x in c.labels and x in needed]
    batch = shared + _broadcast_batch(a, c, contracted, rows, order)
    batch.sort(key=order.index)
    cols = [x for x in c.labels if x not in a.labels and x not in batch]
    lhs = _as_matrix(b, a, batch, rows, contracted, sizes)
    rhs = _as_matrix(b, c, batch, contracted, cols, sizes)
    product = b.matmul(lhs, rhs)
    labels = (*batch, *rows, *cols)
    return Term(b.reshape(product, [sizes[x] for x in labels], "unflatten"), labels)


def _broadcast_batch(a: Term, c: Term, contracted: list[str], rows: list[str], order: Labels) -> list[str]:
    """Labels of `c` alone that MatMul can broadcast over as batch dims instead of columns.

    They lead `c` (before its contracted axes) and the output (before every row label), so
    each batch slice of `c` is a weight matrix of its own and neither operand needs transposing.
    """
    first_contracted = min(c.labels.index(x) for x in contracted)
    first_row = min((order.index(x) for x in rows), default=len(order))
    return [x for x in c.labels[:first_contracted] if x not in a.labels and order.index(x) < first_row]


def _as_matrix(
    b: NodeBuilder, term: Term, batch: list[str], rows: list[str], cols: list[str], sizes: Mapping[str, int]
) -> str:
    """term as [batch..., prod(rows), prod(cols)]; batch labels it lacks become size-1 dims."""
    present = [x for x in batch if x in term.labels]
    moved = _permute(b, term, present + rows + cols)
    shape = [sizes[x] if x in term.labels else 1 for x in batch]
    shape += [_size(rows, sizes), _size(cols, sizes)]
    return b.reshape(moved.value, shape, "as_matrix")


def _size(labels: Sequence[str], sizes: Mapping[str, int]) -> int:
    return int(np.prod([sizes[x] for x in labels], dtype=np.int64))


def _multiply(b: NodeBuilder, a: Term, c: Term, order: Labels) -> Term:
    """No label to contract: an elementwise product, broadcasting labels either operand lacks."""
    labels = tuple(sorted(set(a.labels) | set(c.labels), key=order.index))
    lhs, rhs = (_aligned(b, t, labels) for t in (a, c))
    return Term(b.binary("Mul", lhs, rhs, "multiply"), labels)


def _aligned(b: NodeBuilder, term: Term, labels: Labels) -> str:
    """term with its axes in the order of `labels` and size-1 axes for the labels it lacks."""
    moved = _permute(b, term, [x for x in labels if x in term.labels])
    shape = iter(b.shape(moved.value))
    return b.reshape(moved.value, [next(shape) if x in term.labels else 1 for x in labels], "align")
