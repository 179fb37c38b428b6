"""Fuse decomposed LayerNorm and RMSNorm over the last axis into one row-wise kernel.

Exporters often write the norms as small ops; each ReduceMean then is a whole-tensor VXM kernel of
its own. The rules (anchored at the variance's ReduceMean, any operand order of Add / Mul):

    LayerNorm  d = x - ReduceMean(x);  var = ReduceMean(d*d or d^2)
               y = d / Sqrt(var + eps)  or  d * Reciprocal(Sqrt(var + eps))  [or d * (1 / Sqrt(..))]
               [y * gamma] [+ beta]     -> LayerNormalization(x, gamma or 1, beta, axis=-1, epsilon)
    RMSNorm    ms = ReduceMean(x*x or x^2);  y = x / Sqrt(ms + eps) (or the reciprocal forms)
               [y * gamma]              -> RMSNormalization(x, gamma or 1, axis=-1, epsilon)

Every ReduceMean reduces only the last axis with keepdims=1 (axes as attribute before opset 18, as
input after). The centered value may be computed twice (torch's `x - x.mean()` next to `x.var()`):
both copies must read the same x. gamma and beta are constants of one value per last-axis element
(or a scalar); a non-constant one is left as its own op. Intermediates read outside the pattern, or
dtypes other than float32 / float16, refuse the fusion; `match_norms` returns the reasons.
"""

from __future__ import annotations

import numpy as np

from lpuc.ir.graph import Graph, Node
from lpuc.kernels.reduce import reduction_axes
from lpuc.kernels.registry import KernelContext
from lpuc.passes.builder import EMITTED_OPSET
from lpuc.passes.pattern import (
    Fusion,
    Refusal,
    Refused,
    View,
    apply_fusions,
    find_fusions,
    other_operand,
)

RULE = "norm"
RMS_OPSET = 23  # RMSNormalization first appears in opset 23


def fuse_layernorm(graph: Graph, ctx=None) -> Graph:
    return apply_fusions(graph, match_norms(graph)[0])


def match_norms(graph: Graph) -> tuple[list[Fusion], list[Refusal]]:
    """The LayerNorm / RMSNorm fusions in `graph` and the candidates refused, with reasons."""
    return find_fusions(graph, RULE, _match)


def _match(view: View, var: Node) -> Fusion | None:
    if var.op != "ReduceMean" or var.domain:
        return None
    square = view.producer(var.inputs[0], "Pow", "Mul")
    centered = _squared(view, square) if square is not None else None
    if centered is None:
        return None  # not a mean of squares: not a norm
    covered = [var, square]
    view.check_float(var.inputs[0])
    _check_last_axis(view, var)
    add = view.consumer(var.outputs[0], "Add", what="Add(variance, epsilon)")
    eps = view.scalar(other_operand(add, var.outputs[0]))
    if eps is None or not eps >= 0:
        raise Refused(f"Add '{add.name}' does not add a constant scalar epsilon >= 0")
    sqrt = view.consumer(add.outputs[0], "Sqrt", what="Sqrt")
    covered += [add, sqrt]
    normalize, numerator, inverse = _normalize(view, sqrt)
    covered += [inverse, normalize] if inverse is not None else [normalize]

    mean = _centering_mean(view, centered)
    if mean is not None:  # LayerNorm: the numerator is the same centered x
        x = mean.inputs[0]
        covered += [view.producers[centered], mean]
        if numerator != centered:
            covered += _twin_centering(view, numerator, x)
        op, opset = "LayerNormalization", max(EMITTED_OPSET, 17)
    else:
        if numerator != centered:
            raise Refused(f"the numerator '{numerator}' is not the squared value '{centered}'")
        x, op, opset = centered, "RMSNormalization", RMS_OPSET
    view.check_float(x)
    shape, dtype = view.graph.values[x].shape, view.graph.values[x].dtype
    root, inputs = normalize, [x, np.ones(shape[-1], dtype)]
    scale = _affine_step(view, root, "Mul", shape, "scale")
    if scale is not None:
        root, inputs[1] = scale
        covered.append(root)
    shift = _affine_step(view, root, "Add", shape, "shift") if op == "LayerNormalization" else None
    if shift is not None:
        root, bias = shift
        inputs.append(bias)
        covered.append(root)
    view.check_private(covered, root)
    view.check_result(root, x)
    order = {n.name: k for k, n in enumerate(view.graph.nodes)}
    names = tuple(sorted({n.name for n in covered}, key=order.__getitem__))
    attrs = {"axis": -1, "epsilon": float(eps)}
    return Fusion(RULE, names, root, op, tuple(inputs), attrs, opset)


def _squared(view: View, node: Node) -> str | None:
    """v for Mul(v, v) or Pow(v, 2), else None."""
    if node.op == "Mul" and node.inputs[0] == node.inputs[1]:
        return node.inputs[0]
    if node.op == "Pow" and view.scalar(node.inputs[1]) == 2.0:
        return node.inputs[0]
    return None


def _check_last_axis(view: View, reduce: Node) -> None:
    """Refuse unless `reduce` is a ReduceMean over only the last axis, keeping it."""
    rank = len(view.graph.values[reduce.inputs[0]].shape)
    axes_input = reduce.inputs[1] if len(reduce.inputs) > 1 and reduce.inputs[1] else ""
    if axes_input and not view.graph.is_const(axes_input):
        raise Refused(f"ReduceMean '{reduce.name}' has computed axes")
    ctx = KernelContext(reduce.op, reduce.attrs, reduce.opset)
    try:
        axes = reduction_axes(ctx, rank, view.graph.values[axes_input].const if axes_input else None)
    except ValueError as e:
        raise Refused(str(e)) from None
    if rank == 0 or axes != (rank - 1,):
        raise Refused(f"ReduceMean '{reduce.name}' reduces axes {list(axes)}, not only the last axis")
    if view.graph.values[reduce.inputs[0]].shape[-1] == 0:
        raise Refused(f"ReduceMean '{reduce.name}' reduces an empty axis")
    if not reduce.attr("keepdims", 1):
        raise Refused(f"ReduceMean '{reduce.name}' drops the reduced axis (keepdims=0)")


def _normalize(view: View, sqrt: Node) -> tuple[Node, str, Node | None]:
    """The node dividing by the root, its numerator, and the reciprocal node if there is one."""
    s = sqrt.outputs[0]
    for node in view.consumers.get(s, []):
        if node.op == "Div" and not node.domain and node.inputs[1] == s and node.inputs[0] != s:
            if view.scalar(node.inputs[0]) == 1.0:  # 1 / Sqrt: a reciprocal
                mul = view.consumer(node.outputs[0], "Mul", what="Mul(x, 1 / Sqrt)")
                return mul, other_operand(mul, node.outputs[0]), node
            return node, node.inputs[0], None
        if node.op == "Reciprocal" and not node.domain:
            mul = view.consumer(node.outputs[0], "Mul", what="Mul(x, Reciprocal)")
            return mul, other_operand(mul, node.outputs[0]), node
    raise Refused(f"'{s}' is not a divisor (Div, or Mul by Reciprocal)")


def _centering_mean(view: View, centered: str) -> Node | None:
    """The ReduceMean m when `centered` is Sub(x, m) with m = ReduceMean(x) (checked: last axis)."""
    sub = view.producer(centered, "Sub")
    mean = view.producer(sub.inputs[1], "ReduceMean") if sub is not None else None
    if mean is None or mean.inputs[0] != sub.inputs[0]:
        return None
    _check_last_axis(view, mean)
    return mean


def _twin_centering(view: View, numerator: str, x: str) -> list[Node]:
    """The Sub and ReduceMean of a second copy of x - mean(x) (what torch exports for x.var)."""
    mean = _centering_mean(view, numerator)
    if mean is None or mean.inputs[0] != x:
        raise Refused(f"the numerator '{numerator}' is not the centered input x - mean(x)")
    return [view.producers[numerator], mean]


def _affine_step(
    view: View, prev: Node, op: str, shape: tuple[int, ...], what: str
) -> tuple[Node, np.ndarray] | None:
    """The node applying a constant per-column scale (Mul) or shift (Add) to `prev`'s output, and
    that constant as a vector; None when there is none. A node that applies something else is kept
    as it is, and noted as a refusal (the norm is still fused)."""
    out = prev.outputs[0]
    users = view.consumers.get(out, [])
    if out in view.outputs or len(users) != 1 or users[0].op != op or users[0].domain:
        return None
    node = users[0]
    operand = other_operand(node, out)
    if not view.graph.is_const(operand):
        view.note(node, f"{what} '{operand}' is not a constant: {op} '{node.name}' kept")
        return None
    const = view.graph.values[operand].const
    per_column = const.ndim <= len(shape) and all(d == 1 for d in const.shape[:-1])
    if not per_column or (const.ndim and const.shape[-1] not in (1, shape[-1])):
        view.note(
            node, f"{what} '{operand}' of shape {list(const.shape)} is not one value per last-axis element"
        )
        return None
    return node, np.broadcast_to(const.reshape(-1), (shape[-1],)).astype(const.dtype)
