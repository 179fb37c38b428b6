"""Fuse decomposed GELU into one `Gelu` op (opset 20).

    erf   x * 0.5 * (1 + Erf(x / sqrt(2)))                     (x * 0.7071.. for the division)
    tanh  x * 0.5 * (1 + Tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))   (x^3: Pow(x, 3) or x * x * x)

The outer product may be associated and commuted any way (x * 0.5 may also be x / 2), and
constants match within a relative 1e-3. The rule is anchored at the Erf / Tanh; a Tanh whose input
is not sqrt(2/pi) * (...) is not a candidate. Intermediates read outside the pattern, or dtypes
other than float32 / float16, refuse the fusion; `match_gelus` returns the reasons.

Gelu is an elementwise op (one VXM map of 10 ALU ops, fused further by fuse_elementwise) whose
kernel reads no opset, so it is emitted as an ONNX node at the passes' opset whatever the model's.
"""

from __future__ import annotations

import math

from lpuc.ir.graph import Graph, Node
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

RULE = "gelu"
_SQRT_HALF = math.sqrt(0.5)
_SQRT_2_OVER_PI = math.sqrt(2 / math.pi)
_CUBIC = 0.044715


def fuse_gelu(graph: Graph, ctx=None) -> Graph:
    return apply_fusions(graph, match_gelus(graph)[0])


def match_gelus(graph: Graph) -> tuple[list[Fusion], list[Refusal]]:
    """The GELU fusions in `graph` and the candidates refused, with reasons."""
    return find_fusions(graph, RULE, _match)


def _match(view: View, node: Node) -> Fusion | None:
    if node.domain or node.op not in ("Erf", "Tanh"):
        return None
    inner = _erf_argument(view, node) if node.op == "Erf" else _tanh_argument(view, node)
    if inner is None:
        return None
    x, covered = inner
    view.check_float(x)
    one_plus = view.consumer(node.outputs[0], "Add", what=f"Add(1, {node.op})")
    if not view.is_scalar(other_operand(one_plus, node.outputs[0]), 1.0):
        raise Refused(f"Add '{one_plus.name}' does not add 1 to the {node.op}")
    covered += [node, one_plus]
    root, products = _outer_product(view, one_plus.outputs[0], x)
    covered += products
    view.check_private(covered, root)
    view.check_result(root, x)
    order = {n.name: k for k, n in enumerate(view.graph.nodes)}
    names = tuple(sorted({n.name for n in covered}, key=order.__getitem__))
    approximate = "none" if node.op == "Erf" else "tanh"
    return Fusion(RULE, names, root, "Gelu", (x,), {"approximate": approximate}, EMITTED_OPSET)


def _erf_argument(view: View, erf: Node) -> tuple[str, list[Node]] | None:
    """(x, [scaling node]) when the Erf reads x / sqrt(2) or x * sqrt(1/2), else None."""
    scaled = view.producer(erf.inputs[0], "Div", "Mul")
    if scaled is None:
        return None
    if scaled.op == "Div" and view.is_scalar(scaled.inputs[1], math.sqrt(2)):
        return scaled.inputs[0], [scaled]
    for k in (0, 1):
        if scaled.op == "Mul" and view.is_scalar(scaled.inputs[1 - k], _SQRT_HALF):
            return scaled.inputs[k], [scaled]
    return None


def _tanh_argument(view: View, tanh: Node) -> tuple[str, list[Node]] | None:
    """(x, nodes) when the Tanh reads sqrt(2/pi) * (x + 0.044715 * x^3), else None."""
    scaled = view.producer(tanh.inputs[0], "Mul")
    if scaled is None or not any(view.is_scalar(i, _SQRT_2_OVER_PI) for i in scaled.inputs):
        return None
    k = 0 if view.is_scalar(scaled.inputs[1], _SQRT_2_OVER_PI) else 1
    add = view.producer(scaled.inputs[k], "Add")
    if add is None:
        raise Refused(f"Mul '{scaled.name}' does not scale x + 0.044715 * x^3")
    for j in (0, 1):
        x, term = add.inputs[j], add.inputs[1 - j]
        cubic = view.producer(term, "Mul")
        if cubic is None or not any(view.is_scalar(i, _CUBIC) for i in cubic.inputs):
            continue
        cube = cubic.inputs[0] if view.is_scalar(cubic.inputs[1], _CUBIC) else cubic.inputs[1]
        cube_nodes = _cube_of(view, cube, x)
        if cube_nodes is not None:
            return x, [scaled, add, cubic, *cube_nodes]
    raise Refused(f"Add '{add.name}' is not x + 0.044715 * x^3")


def _cube_of(view: View, value: str, x: str) -> list[Node] | None:
    """The nodes computing `value` = x^3 (Pow(x, 3), x * (x * x) or (x * x) * x), else None."""
    pow_ = view.producer(value, "Pow")
    if pow_ is not None:
        return [pow_] if pow_.inputs[0] == x and view.scalar(pow_.inputs[1]) == 3.0 else None
    mul = view.producer(value, "Mul")
    if mul is None or x not in mul.inputs:
        return None
    square = view.producer(other_operand(mul, x), "Mul")
    if square is None or square.inputs != (x, x):
        return None
    return [square, mul]


def _outer_product(view: View, p: str, x: str) -> tuple[Node, list[Node]]:
    """The Mul nodes of x * 0.5 * p in any association: (the last one, all of them)."""
    found: list[str] = []
    nodes: list[Node] = []
    value = p
    while len(found) < 2:
        step = view.consumer(value, "Mul", "Div", what="the product x * 0.5 * (1 + ...)")
        other = other_operand(step, value)
        if step.op == "Div":  # (...) / 2 is the half
            if step.inputs[0] != value or not view.is_scalar(other, 2.0):
                raise Refused(f"Div '{step.name}' is not a division by 2")
            found.append("half")
        else:
            found += _factors(view, other, x, nodes)
        nodes.append(step)
        value = step.outputs[0]
    if sorted(found) != ["half", "x"]:
        raise Refused(f"'{p}' is multiplied by {' and '.join(sorted(found))}, not by x and 0.5")
    return nodes[-1], nodes


def _factors(view: View, value: str, x: str, nodes: list[Node]) -> list[str]:
    """Which of x and 0.5 `value` is: itself, or x * 0.5 / x / 2 computed just for this product
    (whose node joins `nodes`)."""
    if value == x:
        return ["x"]
    if view.is_scalar(value, 0.5):
        return ["half"]
    node = view.producer(value, "Mul", "Div")
    if node is not None and x in node.inputs:
        other = other_operand(node, x)
        half = view.is_scalar(other, 0.5) if node.op == "Mul" else view.is_scalar(other, 2.0)
        if half and (node.op == "Mul" or node.inputs[0] == x):
            nodes.append(node)
            return ["x", "half"]
    raise Refused(f"factor '{value}' of the product is neither x nor 0.5")
