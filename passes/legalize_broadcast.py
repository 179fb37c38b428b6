"""Make every elementwise operand one the VXM can stream: whole tile, one broadcast row, or a scalar.

Any other broadcast (e.g. [R, 1] against [R, C], or [S, C] against [B, S, C]) becomes an explicit
Expand, which lowers to an SXM distribute; constant operands are expanded at compile time.
"""

from __future__ import annotations

import numpy as np

from lpuc.ir.graph import Graph, Node
from lpuc.ops import is_elementwise


def operand_mode(shape: tuple[int, ...], out_shape: tuple[int, ...]) -> str | None:
    """ "tile", "row" or "scalar" if the VXM can read this operand for `out_shape`, else None."""
    if tuple(shape) == tuple(out_shape):
        return "tile"
    if int(np.prod(shape, dtype=np.int64)) == 1:
        return "scalar"
    if out_shape and shape and shape[-1] == out_shape[-1] and all(d == 1 for d in shape[:-1]):
        return "row"
    return None


def legalize_broadcast(graph: Graph, ctx=None) -> Graph:
    out = graph.copy(nodes=[])
    # One Expand per (value, shape): BERT's attention mask feeds all 12 layers, and 12 live copies
    # of it took 22 MiB of SRAM.
    expanded_to: dict[tuple[str, tuple[int, ...]], str] = {}
    for node in graph.nodes:
        elementwise = is_elementwise(node.op, node.domain) or (node.domain == "lpuc" and node.op == "Fused")
        if not elementwise or graph.touches_dynamic(node):
            out.nodes.append(node)
            continue
        out_shape = graph.values[node.outputs[0]].shape
        new_inputs = []
        for name in node.inputs:
            if not name or operand_mode(out.values[name].shape, out_shape) is not None:
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
