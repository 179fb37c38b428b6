"""Well-formedness of the Graph IR, checked after every pass when verification is on."""

from __future__ import annotations

import numpy as np

from lpuc.ir.graph import Graph


class IRError(AssertionError):
    """A pass produced an ill-formed graph: a compiler bug, never a user error."""


def verify_graph(graph: Graph) -> None:
    problems: list[str] = []
    defined = set(graph.inputs) | {v.name for v in graph.values.values() if v.is_const}
    for name in graph.inputs:
        if name not in graph.values:
            problems.append(f"input %{name} has no value")
        elif graph.values[name].is_dynamic:
            problems.append(f"input %{name} has a dynamic shape")
    for node in graph.nodes:
        for i in node.inputs:
            if i and i not in defined:
                problems.append(f"{node.op} {node.name!r} reads %{i} before it is defined")
        for o in node.outputs:
            if not o:
                continue
            if o in defined:
                problems.append(f"%{o} is defined twice (second time by {node.name!r})")
            defined.add(o)
            v = graph.values.get(o)
            if v is None:
                problems.append(f"{node.name!r} output %{o} has no value")
            elif v.shape is not None and any(not isinstance(d, (int, np.integer)) or d < 0 for d in v.shape):
                problems.append(f"%{o} has a non-static shape {v.shape}")
    for o in graph.outputs:
        if o not in defined:
            problems.append(f"graph output %{o} is never defined")
    for v in graph.values.values():
        if v.is_const and tuple(v.const.shape) != tuple(v.shape):
            problems.append(f"constant %{v.name} data shape {v.const.shape} != declared {v.shape}")
    if problems:
        raise IRError(f"graph {graph.name}: " + "; ".join(problems[:5]))
