"""Shared machinery of the fusion passes that replace a matched subgraph by one operator.

A rule starts at an anchor node and walks producer / consumer links. It returns a `Fusion` (the nodes
it replaces and the node that takes their place), None when the anchor is not a candidate at all, or
raises `Refused` with a one-line reason once the anchor looked like the pattern but something
disagrees; `find_fusions` collects those reasons as `Refusal`s for tests and debugging.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lpuc.ir.graph import Graph, Node

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float16))


class Refused(Exception):
    """A candidate the rule will not fuse; the message is the reason."""


@dataclass(frozen=True)
class Refusal:
    rule: str
    anchor: str  # name of the node the rule started from
    reason: str


@dataclass(frozen=True)
class Fusion:
    rule: str
    nodes: tuple[str, ...]  # names of the nodes replaced
    root: Node  # the last of them: the new node takes its place and its output
    op: str
    inputs: tuple[str | np.ndarray, ...]  # value names, or constants the rewrite adds
    attrs: dict[str, Any] = field(default_factory=dict)
    opset: int = 0
    domain: str = ""  # "lpuc" for lpuc's own ops


class View:
    """Producer / consumer lookups over one graph, with the refusals rules need."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.producers = graph.producers()
        self.consumers = graph.consumers()
        self.outputs = set(graph.outputs)
        self.notes: list[tuple[Node, str]] = []  # partial refusals of the rule being tried

    def note(self, node: Node, reason: str) -> None:
        """Record that `node` was left out of a fusion that still happens, and why."""
        self.notes.append((node, reason))

    def producer(self, value: str, *ops: str) -> Node | None:
        """The ONNX-domain node of one of `ops` writing `value`, else None."""
        node = self.producers.get(value)
        return node if node is not None and _is(node, ops) else None

    def consumer(self, value: str, *ops: str, what: str) -> Node:
        """The first ONNX-domain node of one of `ops` reading `value` (others are caught by
        `check_private`); refuses naming `what` was expected."""
        for node in self.consumers.get(value, []):
            if _is(node, ops):
                return node
        raise Refused(f"'{value}' is not followed by {what}")

    def scalar(self, value: str) -> float | None:
        """A one-element constant as a float, else None."""
        v = self.graph.values.get(value)
        if v is None or not v.is_const or v.const.size != 1:
            return None
        return float(v.const.reshape(-1)[0])

    def is_scalar(self, value: str, want: float, rel_tol: float = 1e-3) -> bool:
        got = self.scalar(value)
        return got is not None and math.isclose(got, want, rel_tol=rel_tol)

    def check_private(self, nodes: Iterable[Node], root: Node) -> None:
        """Refuse when a value the fusion removes is a graph output or read outside the fusion."""
        inside = {n.name for n in nodes}
        for node in nodes:
            if node is root:
                continue
            for out in node.outputs:
                if out in self.outputs:
                    raise Refused(f"intermediate '{out}' is a graph output")
                for user in self.consumers.get(out, []):
                    if user.name not in inside:
                        raise Refused(f"intermediate '{out}' is also read by {user.op} '{user.name}'")

    def check_result(self, root: Node, x: str) -> None:
        """Refuse when the pattern's result is not shaped and typed like its input x (a broadcast
        constant may widen it; the fused op would not)."""
        out, src = self.graph.values[root.outputs[0]], self.graph.values[x]
        if (out.shape, out.dtype) != (src.shape, src.dtype):
            raise Refused(f"the result '{out.name}' {out.shape} is not shaped like '{x}' {src.shape}")

    def check_float(self, value: str) -> None:
        """Refuse unless `value` is a float32 / float16 tensor of static shape."""
        v = self.graph.values[value]
        if v.dtype not in FLOAT_DTYPES:
            raise Refused(f"'{value}' is {v.dtype}: only float32 and float16 are fused")
        if v.is_dynamic:
            raise Refused(f"'{value}' has a data-dependent shape")


def _is(node: Node, ops: tuple[str, ...]) -> bool:
    """Whether `node` is an ONNX op of `ops`; a two-operand Sum counts as an Add (ONNX's own
    function bodies, e.g. Gelu's, write Sum)."""
    if node.domain:
        return False
    return node.op in ops or (node.op == "Sum" and "Add" in ops and len(node.inputs) == 2)


def other_operand(node: Node, value: str) -> str:
    """The operand of a binary node that is not `value` (the first one when both are)."""
    return node.inputs[1] if node.inputs[0] == value else node.inputs[0]


Rule = Callable[[View, Node], "Fusion | None"]


def find_fusions(graph: Graph, rule_name: str, rule: Rule) -> tuple[list[Fusion], list[Refusal]]:
    """Apply `rule` at every node; fusions that overlap an earlier one are dropped."""
    view = View(graph)
    fusions: list[Fusion] = []
    refusals: list[Refusal] = []
    taken: set[str] = set()
    for node in graph.nodes:
        view.notes = []
        try:
            fusion = rule(view, node)
        except Refused as e:
            refusals.append(Refusal(rule_name, node.name, str(e)))
            continue
        if fusion is None or taken.intersection(fusion.nodes):
            continue
        taken.update(fusion.nodes)
        fusions.append(fusion)
        refusals += [Refusal(rule_name, n.name, reason) for n, reason in view.notes]
    # A refusal at a node another fusion took over is not a missed fusion.
    refusals = [r for r in refusals if r.anchor not in taken]
    return fusions, refusals


def apply_fusions(graph: Graph, fusions: list[Fusion]) -> Graph:
    """`graph` with each fusion's nodes replaced by its one node, at its root's position."""
    if not fusions:
        return graph
    out = graph.copy(nodes=[])
    removed = {name for f in fusions for name in f.nodes}
    by_root = {f.root.name: f for f in fusions}
    for node in graph.nodes:
        fusion = by_root.get(node.name)
        if fusion is not None:
            out.nodes.append(_build(out, fusion))
        elif node.name not in removed:
            out.nodes.append(node)
    return out.prune_values()


def _build(graph: Graph, f: Fusion) -> Node:
    name = f"{f.root.name}/{f.op}"
    inputs = []
    for k, operand in enumerate(f.inputs):
        if isinstance(operand, np.ndarray):
            operand = graph.add_const(f"{name}/input{k}", operand)
        inputs.append(operand)
    return Node(f.op, name, tuple(inputs), (f.root.outputs[0],), dict(f.attrs), f.domain, f.opset)
