"""NodeBuilder: what rewrite passes use to build the nodes that replace one node.

Every value and node it makes is named `<replaced node>/<scope>/<tag>` (`_1`, `_2`, ... on repeats),
so compiling a model twice names everything the same. Outputs get their shape and dtype when they
are made; an op whose inputs are all constants is evaluated at once with the runtime's kernels and
becomes a constant instead of a node. `bind_output` gives a value the replaced node's output name.

`replace_nodes` runs a rewrite over a graph: one builder per node it rewrites.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import DTypeLike
from onnx import helper

from lpuc.ir.graph import LPUC_DOMAIN, Graph, Node
from lpuc.passes.fold_constants import try_fold

# Opset of the ONNX nodes the passes emit: ReduceSum/ReduceMax take their axes and Slice/Unsqueeze/
# Clip their bounds as inputs; Softmax works along one axis.
EMITTED_OPSET = 21
# Opset of the lpuc-domain nodes they emit (Im2Col, ConvTransposeScatter).
LPUC_OPSET = 1


class NodeBuilder:
    """Builds the nodes that replace `node` in `graph` (new values are added to `graph`).

    `scope` (e.g. "d0/t3") is put between the node's name and each tag; passes set it as they go.
    """

    def __init__(self, graph: Graph, node: Node):
        self.graph = graph
        self.node = node
        self.nodes: list[Node] = []
        self.scope = ""
        self._taken: dict[str, int] = {}
        self._renamable: set[str] = set()  # values made here that may still take an output's name
        self._scalars: dict[tuple[float, str], str] = {}

    # -- values --------------------------------------------------------------------------------
    def shape(self, name: str) -> tuple[int, ...]:
        return self.graph.values[name].shape

    def dtype(self, name: str) -> np.dtype:
        return self.graph.values[name].dtype

    def const(self, tag: str, array: np.ndarray) -> str:
        return self.graph.add_const(self._name(tag), np.asarray(array))

    def ints(self, tag: str, values: Sequence[int]) -> str:
        return self.const(tag, np.array(list(values), np.int64))

    def scalar(self, value: float, dtype: DTypeLike) -> str:
        """A 0-d constant, one per value and dtype for the whole node (outside any scope)."""
        key = (float(value), np.dtype(dtype).str)
        if key not in self._scalars:
            scope, self.scope = self.scope, ""
            self._scalars[key] = self.const("scalar", np.array(value, dtype))
            self.scope = scope
        return self._scalars[key]

    # -- nodes ---------------------------------------------------------------------------------
    def emit(
        self,
        op: str,
        inputs: Sequence[str],
        shape: Sequence[int],
        dtype: DTypeLike,
        tag: str = "",
        *,
        domain: str = "",
        **attrs: Any,
    ) -> str:
        """The output of `op` on `inputs` (a constant when they all are); tag defaults to the op."""
        return self._emit(op, inputs, [shape], dtype, tag, domain, attrs)[0]

    def bind_output(self, value: str, target: str) -> None:
        """Make `value` appear under the replaced node's output name `target`."""
        if value not in self._renamable:  # an input, a constant, or already bound to another output
            self.nodes.append(
                Node("Identity", self._name("output"), (value,), (target,), {}, "", EMITTED_OPSET)
            )
            return
        self._renamable.discard(value)
        self.nodes = [
            n.with_(
                inputs=tuple(target if i == value else i for i in n.inputs),
                outputs=tuple(target if o == value else o for o in n.outputs),
            )
            for n in self.nodes
        ]

    def _emit(
        self,
        op: str,
        inputs: Sequence[str],
        shapes: Sequence[Sequence[int]],
        dtype: DTypeLike,
        tag: str,
        domain: str,
        attrs: dict[str, Any],
    ) -> list[str]:
        name = self._name(tag or op.lower())
        outputs = tuple(name if len(shapes) == 1 else f"{name}_{k}" for k in range(len(shapes)))
        opset = LPUC_OPSET if domain == LPUC_DOMAIN else EMITTED_OPSET
        node = Node(op, name, tuple(inputs), outputs, attrs, domain, opset)
        if all(self.graph.is_const(i) for i in inputs if i):
            folded = try_fold(node, self.graph.values, self.graph.opsets)
            if folded is not None:
                return [self.graph.add_const(o, array) for o, array in zip(outputs, folded)]
        values = [self.graph.add_value(o, tuple(s), dtype) for o, s in zip(outputs, shapes)]
        self._renamable.update(values)
        self.nodes.append(node.with_(outputs=tuple(values)))
        return values

    def _name(self, tag: str) -> str:
        base = "/".join(p for p in (self.node.name, self.scope, tag) if p)
        count = self._taken.get(base, 0)
        self._taken[base] = count + 1
        return base if count == 0 else f"{base}_{count}"

    # -- shorthands: the output's shape and dtype follow from the inputs --------------------------
    def unary(self, op: str, x: str, tag: str = "", **attrs: Any) -> str:
        return self.emit(op, [x], self.shape(x), self.dtype(x), tag, **attrs)

    def binary(self, op: str, a: str, b: str, tag: str = "", dtype: DTypeLike | None = None) -> str:
        """`op` broadcasting a and b; the result has a's dtype unless `dtype` says otherwise."""
        shape = np.broadcast_shapes(self.shape(a), self.shape(b))
        return self.emit(op, [a, b], shape, self.dtype(a) if dtype is None else dtype, tag)

    def scaled(self, x: str, factor: float, tag: str) -> str:
        """x * factor (x itself when the factor is 1)."""
        if factor == 1.0:
            return x
        return self.binary("Mul", x, self.const(f"{tag}_factor", np.array(factor, self.dtype(x))), tag)

    def add(self, a: str, b: str, tag: str = "") -> str:
        # x + 0 is x: a zero initial state folds its recurrent term away.
        shape = np.broadcast_shapes(self.shape(a), self.shape(b))
        if self._is_zero(b) and self.shape(a) == shape:
            return a
        if self._is_zero(a) and self.shape(b) == shape:
            return b
        return self.binary("Add", a, b, tag)

    def where(self, cond: str, a: str, b: str, tag: str = "") -> str:
        shape = np.broadcast_shapes(self.shape(cond), self.shape(a), self.shape(b))
        return self.emit("Where", [cond, a, b], shape, self.dtype(a), tag)

    def cast(self, x: str, dtype: DTypeLike, tag: str = "cast") -> str:
        if self.dtype(x) == np.dtype(dtype):
            return x
        to = int(helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))
        return self.emit("Cast", [x], self.shape(x), dtype, tag, to=to)

    def matmul(self, a: str, b: str, tag: str = "matmul") -> str:
        sa, sb = self.shape(a), self.shape(b)
        batch = np.broadcast_shapes(sa[:-2], sb[:-2])
        return self.emit("MatMul", [a, b], (*batch, sa[-2], sb[-1]), self.dtype(a), tag)

    def reduce(self, op: str, x: str, axes: Sequence[int], keepdims: bool, tag: str) -> str:
        if not axes:
            return x
        rank = len(self.shape(x))
        axes = sorted(a % rank for a in axes)
        shape = [1 if a in axes else d for a, d in enumerate(self.shape(x)) if keepdims or a not in axes]
        return self.emit(
            op, [x, self.ints(f"{tag}_axes", axes)], shape, self.dtype(x), tag, keepdims=int(keepdims)
        )

    # -- data movement -------------------------------------------------------------------------
    def reshape(self, x: str, shape: Sequence[int], tag: str = "reshape") -> str:
        if tuple(shape) == self.shape(x):
            return x
        return self.emit("Reshape", [x, self.ints(f"{tag}_shape", shape)], shape, self.dtype(x), tag)

    def transpose(self, x: str, perm: Sequence[int], tag: str = "transpose") -> str:
        if list(perm) == list(range(len(perm))):
            return x
        shape = [self.shape(x)[p] for p in perm]
        return self.emit("Transpose", [x], shape, self.dtype(x), tag, perm=[int(p) for p in perm])

    def concat(self, xs: Sequence[str], axis: int, tag: str = "concat") -> str:
        if len(xs) == 1:
            return xs[0]
        shape = list(self.shape(xs[0]))
        shape[axis] = sum(self.shape(x)[axis] for x in xs)
        return self.emit("Concat", xs, shape, self.dtype(xs[0]), tag, axis=axis)

    def split(self, x: str, axis: int, sizes: Sequence[int], tag: str) -> list[str]:
        """x cut along `axis` into pieces of `sizes`: one pass over x, however many pieces."""
        if len(sizes) == 1:
            return [x]
        shape = self.shape(x)
        shapes = [(*shape[:axis], size, *shape[axis + 1 :]) for size in sizes]
        inputs = [x, self.ints(f"{tag}_sizes", sizes)]
        return self._emit("Split", inputs, shapes, self.dtype(x), tag, "", {"axis": axis})

    def slice(
        self,
        x: str,
        starts: Sequence[int],
        ends: Sequence[int],
        axes: Sequence[int],
        tag: str,
        steps: Sequence[int] | None = None,
    ) -> str:
        """x[starts:ends:steps] along `axes` (the steps input only where `steps` is given)."""
        shape = list(self.shape(x))
        for start, end, axis, stride in zip(starts, ends, axes, steps or [1] * len(axes)):
            shape[axis] = len(range(shape[axis])[start:end:stride])
        bounds = {"starts": starts, "ends": ends, "axes": axes, "steps": steps}
        inputs = [x] + [self.ints(f"{tag}_{key}", v) for key, v in bounds.items() if v is not None]
        return self.emit("Slice", inputs, shape, self.dtype(x), tag)

    def gather(self, x: str, indices: str | np.ndarray, axis: int, tag: str = "gather") -> str:
        """x indexed along `axis` by a value or by constant indices."""
        idx = indices if isinstance(indices, str) else self.const(f"{tag}_indices", indices.astype(np.int64))
        shape = self.shape(x)
        axis %= len(shape)
        out_shape = (*shape[:axis], *self.shape(idx), *shape[axis + 1 :])
        return self.emit("Gather", [x, idx], out_shape, self.dtype(x), tag, axis=axis)

    def _is_zero(self, name: str) -> bool:
        v = self.graph.values[name]
        return v.is_const and not np.any(v.const)


def replace_nodes(
    graph: Graph, applies: Callable[[Node, Graph], bool], build: Callable[[NodeBuilder], None]
) -> Graph:
    """`graph` with every node `applies` to replaced by what `build` emits for it (nothing: dropped)."""
    out = graph.copy(nodes=[])
    for node in graph.nodes:
        if not applies(node, graph):
            out.nodes.append(node)
            continue
        b = NodeBuilder(out, node)
        build(b)
        out.nodes.extend(b.nodes)
    return out.prune_values()
