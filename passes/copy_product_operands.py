"""fp16 builds: a float32 value that products and other ops both read gets a copy for the products.

A value stored as float32 because some reader needs it whole (post-LN BERT: a LayerNorm's result is
also the next residual sum's term) is read by every MM of the products after it at 4 bytes a lane:
each MM books both ports of the tile's slice for its whole duration, so the MMs of a chain that read
the K chunks of one tile, and the chains on the other planes reading it, queue on those ports
(BERT-base fp16: the intermediate and output products waited that way about 2,000 cycles a layer
beside their weight loads). A Cast copy that only products read is stored as fp16
(lpuc.lowering.mxm_rounded_values: the MXM rounds its operands to fp16 anyway, so the results are
the same): one port, half the words. The copy is one VXM map per tile, beside the value's other
readers. `--disable-pass copy_product_operands` leaves products reading the value itself.
"""

from __future__ import annotations

import numpy as np

from lpuc.ir.graph import Graph, Node
from lpuc.passes.builder import EMITTED_OPSET

_FLOAT = 1  # onnx TensorProto.FLOAT
# Products whose activations (input 0) the copy serves.
_PRODUCTS = frozenset({"MatMul"})


def copy_product_operands(graph: Graph, ctx=None) -> Graph:
    if ctx is None or ctx.precision != "fp16":
        return graph
    consumers = graph.consumers()
    outputs = set(graph.outputs)
    # Only rows of two K chunks or more: then a chain's MMs read each tile back to back (and the
    # products are wide enough for several chains to read it at once). A narrower value's copy only
    # adds its map to the path (a post-LN encoder of width 64: 11,028 cycles -> 11,377; a 16-wide
    # LSTM's recurrent state: 11,137 -> 12,599).
    least_k = 2 * ctx.target.mxm_mode("fp16").k_tile
    copies: dict[str, str] = {}  # value -> its copy for the products
    out = graph.copy(nodes=[])
    for node in graph.nodes:
        out.nodes.append(node)
        for name in node.outputs:
            v = graph.values.get(name) if name else None
            if v is None or v.dtype != np.float32 or v.is_dynamic or v.is_const or name in outputs:
                continue
            if not v.shape or int(v.shape[-1]) < least_k:
                continue
            users = consumers.get(name, [])
            products = [u for u in users if _reads_as_activations(u, name)]
            if products and len(products) < len(users):
                copies[name] = out.add_value(f"{name}/for_products", v.shape, np.float32)
                out.nodes.append(_copy(name, copies[name]))
    if not copies:
        return graph
    out.nodes = [_reading_copies(n, copies) for n in out.nodes]
    return out


def _copy(name: str, copy: str) -> Node:
    """A float32 -> float32 Cast: a VXM map whose result lowering stores as fp16 (only products read it)."""
    return Node("Cast", f"{name}/copy", (name,), (copy,), {"to": _FLOAT}, opset=EMITTED_OPSET)


def _reading_copies(node: Node, copies: dict[str, str]) -> Node:
    name = node.inputs[0] if node.inputs else ""
    if name in copies and _reads_as_activations(node, name):
        return node.with_(inputs=(copies[name], *node.inputs[1:]))
    return node


def _reads_as_activations(node: Node, name: str) -> bool:
    """Whether `node` is a product reading `name` as its activations only (not as its weights too)."""
    return node.op in _PRODUCTS and not node.domain and node.inputs[0] == name and name not in node.inputs[1:]
