"""Make every elementwise operand one the VXM can stream: whole tile, one broadcast row, or a scalar.

Any other broadcast (e.g. [R, 1] against [R, C], or [S, C] against [B, S, C]) becomes an explicit
Expand, which lowers to an SXM distribute; constant operands are expanded at compile time.

A computed value repeated over leading dims (BERT's [1, 1, S, S] attention mask against the
[1, H, S, S] scores) can also be read as it is, each head's map reading the mask's own rows
("repeat"); it is expanded all the same (strategy `expanded_broadcasts`: each head's maps then read
a copy of their own, which measured faster), and `read_repeated` takes such Expands out again when
SRAM is tight (the fit ladder) or the strategy is disabled. A fused map's operands listed in its
attr `read_repeated` are always read repeated (passes/pair_heads: K's rows once per head of a pair).
"""

from __future__ import annotations

import numpy as np

from lpuc.ir.graph import Graph, Node
from lpuc.ops import is_elementwise


def operand_mode(shape: tuple[int, ...], out_shape: tuple[int, ...]) -> str | None:
    """ "tile", "row", "scalar" or "repeat" if the VXM can read this operand for `out_shape`, else None.

    "repeat": the operand is `out_shape`'s trailing dims (two or more) behind ones, so in the [rows,
    cols] views the result's row r reads the operand's row r % (operand rows)."""
    if tuple(shape) == tuple(out_shape):
        return "tile"
    if int(np.prod(shape, dtype=np.int64)) == 1:
        return "scalar"
    if out_shape and shape and shape[-1] == out_shape[-1] and all(d == 1 for d in shape[:-1]):
        return "row"
    if repeated_rows(shape, out_shape) is not None:
        return "repeat"
    return None


def repeated_rows(shape: tuple[int, ...], out_shape: tuple[int, ...]) -> int | None:
    """The operand's view rows if it is `out_shape`'s trailing dims (two or more) behind ones."""
    shape, out_shape = tuple(shape), tuple(out_shape)
    if len(shape) > len(out_shape) or len(shape) < 2:
        return None
    padded = (1,) * (len(out_shape) - len(shape)) + shape
    for j in range(len(out_shape) - 1):
        if all(d == 1 for d in padded[:j]) and padded[j:] == out_shape[j:]:
            rows = int(np.prod(padded[:-1], dtype=np.int64))
            return rows if 0 < rows < int(np.prod(out_shape[:-1], dtype=np.int64)) else None
    return None


def legalize_broadcast(graph: Graph, ctx=None) -> Graph:
    out = _legalized(graph)
    return read_repeated(out) if ctx is not None and "expanded_broadcasts" in ctx.disabled else out


def _legalized(graph: Graph) -> Graph:
    out = graph.copy(nodes=[])
    # One Expand per (value, shape): BERT's attention mask feeds all 12 layers, and 12 live copies
    # of it took 22 MiB of SRAM.
    expanded_to: dict[tuple[str, tuple[int, ...]], str] = {}
    for node in graph.nodes:
        if not _is_map(node) or graph.touches_dynamic(node):
            out.nodes.append(node)
            continue
        out_shape = graph.values[node.outputs[0]].shape
        new_inputs = []
        for name in node.inputs:
            mode = operand_mode(out.values[name].shape, out_shape) if name else None
            if (
                not name
                or mode in ("tile", "row", "scalar")
                or (mode == "repeat" and _asks_repeated(node, name))
            ):
                new_inputs.append(name)
                continue
            v = out.values[name]
            if v.is_const:
                expanded = np.broadcast_to(v.const, out_shape)
                new_inputs.append(out.add_const(f"{name}_bcast", np.ascontiguousarray(expanded)))
                continue
            key = (name, tuple(out_shape))
            if key not in expanded_to:
                shape_const = out.add_const(f"{name}_bcast_shape", np.array(out_shape, dtype=np.int64))
                target = out.add_value(f"{name}_bcast", out_shape, v.dtype)
                expand = Node("Expand", f"{node.name}/broadcast_{name}", (name, shape_const), (target,))
                out.nodes.append(expand)
                expanded_to[key] = target
            new_inputs.append(expanded_to[key])
        out.nodes.append(node.with_(inputs=tuple(new_inputs)))
    return out.prune_values()


def read_repeated(graph: Graph) -> Graph:
    """`graph` without the Expands of computed values that all their readers, maps, can read
    repeated: the readers read the value itself. For programs that nearly fill SRAM (the fit
    ladder): BERT-base's mask expanded over 12 heads holds 1.9 MiB of SRAM all program long."""
    users = graph.consumers()
    source: dict[str, str] = {}
    for node in graph.nodes:
        if node.op != "Expand" or node.domain or node.outputs[0] in graph.outputs:
            continue
        value, readers = graph.values[node.inputs[0]], users.get(node.outputs[0], [])
        if value.is_const or not readers:
            continue
        if all(_reads_repeated(graph, reader, value.shape) for reader in readers):
            source[node.outputs[0]] = node.inputs[0]
    if not source:
        return graph
    out = graph.copy(nodes=[])
    for node in graph.nodes:
        if not (node.op == "Expand" and not node.domain and node.outputs[0] in source):
            out.nodes.append(node.with_(inputs=tuple(source.get(i, i) for i in node.inputs)))
    return out.prune_values()


def _asks_repeated(node: Node, name: str) -> bool:
    """Whether fused map `node` reads operand `name` repeated by its own choice (attr read_repeated)."""
    listed = node.attr("read_repeated") or () if node.domain == "lpuc" and node.op == "Fused" else ()
    return any(node.inputs[int(k)] == name for k in listed)


def _reads_repeated(graph: Graph, reader: Node, shape: tuple[int, ...]) -> bool:
    if not _is_map(reader) or graph.touches_dynamic(reader):
        return False
    return operand_mode(shape, graph.values[reader.outputs[0]].shape) == "repeat"


def _is_map(node: Node) -> bool:
    return is_elementwise(node.op, node.domain) or (node.domain == "lpuc" and node.op == "Fused")
