"""int8 builds: a residual that is also quantized for a product passes on in its int8 form.

quantize_int8 quantizes the float input x of an int8 product with one VXM map,
q = Cast int8(Clip(Round(x * 1/s))). In a residual network x (a block's output) has one more reader:
the next block's residual Add. Then x is written to SRAM in float, and the quantize map runs apart
from the map that computes x (which lowering fuses into its product as an epilogue): one more VXM
pass per block on the path from one block's products to the next. With this pass the Add reads
q * s instead (the int8 value dequantized, one more multiply in the Add's map): x's only reader is
its quantize map, which fuse_elementwise joins to the map that computes x, and the block's epilogue
writes q directly.

Only where x comes from an elementwise op (a block's ReLU), which the quantize map can join: x made
by a kernel (a post-norm transformer's LayerNorm, BERT's) would gain nothing and lose precision
(BERT-base int8: 239,199 cycles and cosine 0.99872 with it, 232,918 and 0.99957 without).

Numerics: the residual carries x quantized to int8 with x's own calibrated scale (what int8
deployments of ResNet do: the block output is quantized once, for both readers), an error the size
of the one the next product's input already has. Disable the pass (--disable-pass
quantize_residuals) to keep residuals in float.
"""

from __future__ import annotations

import numpy as np

from lpuc.ir.graph import Graph, Node
from lpuc.ops import is_elementwise
from lpuc.passes.builder import NodeBuilder

_INT8 = 3  # onnx TensorProto.INT8


def quantize_residuals(graph: Graph, ctx=None) -> Graph:
    if getattr(ctx, "precision", "") != "int8":
        return graph  # only --precision int8 chooses what to quantize (quantize_int8's maps)
    consumers, producers = graph.consumers(), graph.producers()
    dequantized: dict[str, dict[str, tuple[str, float]]] = {}  # Add name -> {x: (q, s)}
    for node in graph.nodes:
        found = _quantize_of(node, graph, producers)
        if found is None:
            continue
        x, scale = found
        readers = [c for c in consumers.get(x, []) if not _is_quantize_mul(c, x, graph)]
        made_by_map = x in producers and is_elementwise(producers[x].op, producers[x].domain)
        if (
            made_by_map
            and readers
            and x not in graph.outputs
            and all(_residual_add(c, x, graph) for c in readers)
        ):
            for add in readers:
                dequantized.setdefault(add.name, {})[x] = (node.outputs[0], scale)
    if not dequantized:
        return graph
    out = graph.copy(nodes=[])
    for node in graph.nodes:
        if node.name not in dequantized:
            out.nodes.append(node)
            continue
        b = NodeBuilder(out, node)
        swap = {}
        for x, (q, scale) in dequantized[node.name].items():
            dtype = graph.values[x].dtype
            swap[x] = b.binary(
                "Mul", b.cast(q, dtype, "residual_dequant"), b.scalar(scale, dtype), "residual_scale"
            )
        out.nodes.extend(b.nodes)
        out.nodes.append(node.with_(inputs=tuple(swap.get(i, i) for i in node.inputs)))
    return out.prune_values()


def _quantize_of(node: Node, graph: Graph, producers: dict[str, Node]) -> tuple[str, float] | None:
    """(x, s) when `node` is the last step of quantize_int8's map q = Cast int8(Clip(Round(x * 1/s)))."""
    if node.op != "Cast" or node.domain or int(node.attr("to", 0)) != _INT8:
        return None
    chain = []
    value = node.inputs[0]
    for op in ("Clip", "Round", "Mul"):
        p = producers.get(value)
        if p is None or p.op != op or p.domain:
            return None
        chain.append(p)
        value = p.inputs[0]
    mul = chain[-1]
    inv = graph.values[mul.inputs[1]]
    if not inv.is_const or np.size(inv.const) != 1 or graph.values[mul.inputs[0]].dtype.kind != "f":
        return None
    inv_scale = float(np.asarray(inv.const).reshape(()))
    return (mul.inputs[0], 1.0 / inv_scale) if inv_scale > 0 else None


def _is_quantize_mul(node: Node, x: str, graph: Graph) -> bool:
    return node.op == "Mul" and not node.domain and node.inputs[0] == x and graph.is_const(node.inputs[1])


def _residual_add(node: Node, x: str, graph: Graph) -> bool:
    """A float Add (or Sum) of x and another runtime value of x's shape (a residual connection)."""
    if node.op not in ("Add", "Sum") or node.domain or len(node.inputs) != 2 or x not in node.inputs:
        return False
    other = node.inputs[1] if node.inputs[0] == x else node.inputs[0]
    same = graph.values[node.outputs[0]].shape == graph.values[x].shape
    return other != x and not graph.is_const(other) and same
