"""A float Div by a constant whose every element is a power of two becomes a Mul by its reciprocal.

Attention scales its scores by 1/sqrt(head_dim) (GPT-2 and BERT-base: / 8.0). On the VXM a Div costs
two ALU ops per element and a Mul one (lpuc.ops.ELEMENTWISE); fused into Q@K^T's epilogue the Div
made each of the 12 heads' MMs hold one more ALU for its whole duration, next to the softmaxes that
need them. Dividing by 2**k and multiplying by 2**-k round the same exact quotient, so the rewrite
is exact (both are scalings by a power of two, whose reciprocal is representable unless it would
overflow, which the check below refuses).
"""

from __future__ import annotations

import numpy as np

from lpuc.ir.graph import Graph, Node


def multiply_by_reciprocals(graph: Graph, ctx: object = None) -> Graph:
    out = graph.copy(nodes=[])
    for node in graph.nodes:
        reciprocal = _exact_reciprocal(node, graph)
        if reciprocal is not None:
            divisor = node.inputs[1]
            name = out.add_const(f"{divisor}_reciprocal", reciprocal)
            node = node.with_(op="Mul", inputs=(node.inputs[0], name))
        out.nodes.append(node)
    return out.prune_values()


def _exact_reciprocal(node: Node, graph: Graph) -> np.ndarray | None:
    """1 / divisor, if `node` is a float Div by a constant of powers of two whose reciprocals are
    finite in its dtype (then x * (1 / c) == x / c for every x); else None."""
    if node.domain or node.op != "Div" or len(node.inputs) != 2 or not graph.is_const(node.inputs[1]):
        return None
    divisor = np.asarray(graph.values[node.inputs[1]].const)
    if divisor.dtype.kind != "f" or graph.values[node.inputs[0]].dtype != divisor.dtype:
        return None
    if divisor.size == 0 or not np.isfinite(divisor).all() or (divisor == 0).any():
        return None
    mantissa, _ = np.frexp(divisor)
    if not (np.abs(mantissa) == 0.5).all():
        return None
    with np.errstate(over="ignore"):
        reciprocal = (np.ones_like(divisor) / divisor).astype(divisor.dtype)
    # A huge power of two's reciprocal may be subnormal (inexact) in its dtype: keep the Div.
    if not np.isfinite(reciprocal).all() or (np.abs(reciprocal) < np.finfo(divisor.dtype).tiny).any():
        return None
    return reciprocal
