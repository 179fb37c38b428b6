"""Graph IR: operators on whole tensors with static shapes and dtypes.

A `Graph` is a list of `Node`s in topological order over named `Value`s. Every value has a numpy
dtype and a static shape, except values whose shape depends on data (NonZero, Unique, ...): those
are *dynamic* (`shape is None`), live on the host and are only read by host ops. Constants carry
their data (read-only arrays). Passes treat graphs as values: they build a new `Graph` (sharing
unchanged nodes and constant arrays) instead of mutating the one they were given.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

LPUC_DOMAIN = "lpuc"  # ops the passes introduce (fused and lowered forms)


@dataclass(frozen=True)
class Value:
    name: str
    shape: tuple[int, ...] | None  # None: dynamic (data-dependent), host-resident
    dtype: np.dtype
    const: np.ndarray | None = field(default=None, compare=False, repr=False)

    @property
    def is_const(self) -> bool:
        return self.const is not None

    @property
    def is_dynamic(self) -> bool:
        return self.shape is None

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.size * np.dtype(self.dtype).itemsize


@dataclass(frozen=True)
class Node:
    op: str
    name: str
    inputs: tuple[str, ...]  # "" marks a missing optional input
    outputs: tuple[str, ...]
    attrs: Mapping[str, Any] = field(default_factory=dict)
    domain: str = ""
    opset: int = 0  # version of `domain` the source model imports

    def attr(self, key: str, default: Any = None) -> Any:
        return self.attrs.get(key, default)

    def text_attr(self, key: str, default: str) -> str:
        """A string attribute as str (ONNX stores them as bytes)."""
        value = self.attrs.get(key, default)
        return value.decode() if isinstance(value, bytes) else value

    def with_(self, **changes: Any) -> Node:
        return replace(self, **changes)


def constant_value(name: str, array: np.ndarray) -> Value:
    array = np.asarray(array)
    if array.flags.writeable:
        array = array.copy()
        array.flags.writeable = False
    return Value(name, tuple(int(d) for d in array.shape), array.dtype, array)


@dataclass
class Graph:
    name: str
    nodes: list[Node]
    values: dict[str, Value]
    inputs: list[str]
    outputs: list[str]
    opsets: dict[str, int] = field(default_factory=dict)

    # -- queries -------------------------------------------------------------------------------
    def value(self, name: str) -> Value:
        return self.values[name]

    def producers(self) -> dict[str, Node]:
        return {out: n for n in self.nodes for out in n.outputs if out}

    def consumers(self) -> dict[str, list[Node]]:
        users: dict[str, list[Node]] = {}
        for n in self.nodes:
            for name in dict.fromkeys(i for i in n.inputs if i):
                users.setdefault(name, []).append(n)
        return users

    def constants(self) -> Iterator[Value]:
        return (v for v in self.values.values() if v.is_const)

    def is_const(self, name: str) -> bool:
        return bool(name) and self.values[name].is_const

    def touches_dynamic(self, node: Node) -> bool:
        """Whether the node reads or writes a dynamic value (it must then run on the host)."""
        return any(n and self.values[n].is_dynamic for n in node.inputs + node.outputs)

    # -- building new graphs ----------------------------------------------------------------------
    def copy(self, nodes: Iterable[Node] | None = None) -> Graph:
        return Graph(
            self.name,
            list(self.nodes if nodes is None else nodes),
            dict(self.values),
            list(self.inputs),
            list(self.outputs),
            dict(self.opsets),
        )

    def unique_name(self, base: str) -> str:
        if base not in self.values:
            return base
        i = 1
        while f"{base}_{i}" in self.values:
            i += 1
        return f"{base}_{i}"

    def add_value(self, hint: str, shape: tuple[int, ...], dtype: np.dtype) -> str:
        name = self.unique_name(hint)
        self.values[name] = Value(name, tuple(int(d) for d in shape), np.dtype(dtype))
        return name

    def add_const(self, hint: str, array: np.ndarray) -> str:
        name = self.unique_name(hint)
        self.values[name] = constant_value(name, array)
        return name

    def prune_values(self) -> Graph:
        """Drop values no node, input or output mentions."""
        used = set(self.inputs) | set(self.outputs)
        for n in self.nodes:
            used.update(n.inputs)
            used.update(n.outputs)
        self.values = {k: v for k, v in self.values.items() if k in used}
        return self


def graph_summary(graph: Graph) -> dict[str, int]:
    counts: dict[str, int] = {}
    for n in graph.nodes:
        key = f"{n.domain}.{n.op}" if n.domain else n.op
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))
