"""A product's scaling by a power of two moves into the constant weights that make one of its operands.

Attention scales its scores Q @ K^T by 1/sqrt(head_dim) (BERT-base: * 0.125). Fused into Q @ K^T's
epilogue the scale is one more ALU op per element in every head's map and one more scalar operand
(a stream and its replicas on some slice). When Q is itself a product of the layer's input and
constant weights (plus a constant bias), scaling those weights and that bias by the same constant
gives Q already scaled: the scale costs nothing at run time.

    scores = MatMul(Layout(Add(MatMul(x, W), b)), K); y = Mul(scores, c)
 -> scores = MatMul(Layout(Add(MatMul(x, W * c), b * c)), K)

Layout ops (Reshape, Transpose, ...) only move elements. Each value on the chain must have no other
reader (else the rewrite would change what it reads). Only a power-of-two c (or a Div by one) moves:
scaling by 2**k changes only exponents, so W * c and b * c are exact (unless they underflow to
subnormals, which the check below refuses) and every sum of products is the exact scaled value of
the original's, rounded alike; int8 builds quantize the scaled weights with a scaled scale.

The check is made in the constant's own dtype. An fp16 build stores fp32 weights as fp16 afterwards,
and a scaled weight below fp16's smallest normal (2**-14) then keeps an absolute precision of 2**-24
rather than 11 significant bits. That error is below the fp16 rounding of any product the weight
enters, so the fold is not refused for it (refusing would forgo the fold on most real models).
"""

from __future__ import annotations

import numpy as np

from lpuc.ir.graph import Graph, Node

# Ops that only move or relabel elements: a scaling commutes with them.
_LAYOUT = frozenset({"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity"})


def fold_score_scale(graph: Graph, ctx: object = None) -> Graph:
    producers, readers = graph.producers(), graph.consumers()
    outputs = set(graph.outputs)
    replaced: dict[str, Node] = {}  # a node's first output -> the node rewritten (names may repeat)
    dropped: set[str] = set()  # first outputs of the scaling nodes folded away
    out = graph.copy()
    for node in graph.nodes:
        found = _power_of_two_scale(node, graph)
        if found is None:
            continue
        scores, factor = found
        product = producers.get(scores)
        if product is None or product.domain or product.op != "MatMul" or product.outputs[0] in replaced:
            continue
        if scores in outputs or len(readers.get(scores, [])) != 1:
            continue
        if graph.values[node.outputs[0]].dtype != graph.values[scores].dtype:
            continue
        for operand in dict.fromkeys(product.inputs):
            if product.inputs.count(operand) != 1:
                continue  # Q @ Q^T: scaling Q would scale the product twice
            chain = _weighted_chain(operand, graph, producers, readers, outputs)
            if chain is None or any(link.outputs[0] in replaced for link, _ in chain):
                continue
            scaled = _scaled_constants(chain, graph, factor)
            if scaled is None:
                continue
            for (link, index), array in zip(chain, scaled):
                if index is not None:
                    name = out.add_const(f"{link.inputs[index]}_scaled", array)
                    link = link.with_(
                        inputs=tuple(name if k == index else i for k, i in enumerate(link.inputs))
                    )
                replaced[link.outputs[0]] = link
            # The product writes the scaled result's name; the scaling node goes.
            replaced[product.outputs[0]] = product.with_(outputs=(node.outputs[0],))
            dropped.add(node.outputs[0])
            break
    if not dropped:
        return graph
    kept = [n for n in graph.nodes if not (n.outputs and n.outputs[0] in dropped)]
    out.nodes = [replaced.get(n.outputs[0], n) if n.outputs else n for n in kept]
    return out.prune_values()


def _power_of_two_scale(node: Node, graph: Graph) -> tuple[str, float] | None:
    """(x, f) if `node` is a float Mul or Div of a computed x by a constant scalar, a power of two,
    so that its result is x * f; else None."""
    if node.domain or node.op not in ("Mul", "Div") or len(node.inputs) != 2 or not all(node.inputs):
        return None
    x, c = node.inputs
    if node.op == "Mul" and graph.is_const(x):
        x, c = c, x
    if not graph.is_const(c) or graph.is_const(x) or graph.values[x].is_dynamic:
        return None
    const = np.asarray(graph.values[c].const)
    if const.size != 1 or const.dtype.kind != "f" or const.dtype != graph.values[x].dtype:
        return None
    if tuple(np.broadcast_shapes(graph.values[x].shape, const.shape)) != graph.values[x].shape:
        return None  # the constant would add dims to the result
    value = float(const.reshape(()))
    if not np.isfinite(value) or value == 0.0 or abs(np.frexp(value)[0]) != 0.5:
        return None
    return x, (1.0 / value if node.op == "Div" else value)


def _weighted_chain(
    value: str, graph: Graph, producers: dict[str, Node], readers: dict[str, list[Node]], outputs: set[str]
) -> list[tuple[Node, int | None]] | None:
    """The nodes from a MatMul by constant weights (and an Add of a constant bias after it) through
    layout ops to `value`, each with the index of the constant input to scale (None: a layout op);
    None if `value` is not made that way or some value on the way has another reader."""
    chain: list[tuple[Node, int | None]] = []
    biased = False
    while True:
        node = producers.get(value)
        if node is None or node.domain or value in outputs or len(readers.get(value, [])) != 1:
            return None
        if node.op in _LAYOUT and node.inputs and not graph.is_const(node.inputs[0]):
            chain.append((node, None))
            value = node.inputs[0]
            continue
        consts = [k for k, i in enumerate(node.inputs) if graph.is_const(i)]
        if len(node.inputs) != 2 or len(consts) != 1:
            return None
        if node.op == "Add" and not biased:
            biased = True
            chain.append((node, consts[0]))
            value = node.inputs[1 - consts[0]]
            continue
        if node.op == "MatMul":
            chain.append((node, consts[0]))
            return chain
        return None


def _scaled_constants(chain: list[tuple[Node, int | None]], graph: Graph, factor: float) -> list | None:
    """Each link's constant times `factor` (None for layout ops), or None if some product is not
    exact in the constant's dtype (overflow, or a nonzero element that would become subnormal)."""
    scaled: list[np.ndarray | None] = []
    for node, index in chain:
        if index is None:
            scaled.append(None)
            continue
        const = np.asarray(graph.values[node.inputs[index]].const)
        if const.dtype.kind != "f":
            return None
        with np.errstate(over="ignore", under="ignore"):
            array = (const * const.dtype.type(factor)).astype(const.dtype)
        tiny = np.finfo(const.dtype).tiny
        if not np.isfinite(array).all() or ((array != 0) & (np.abs(array) < tiny)).any():
            return None
        if ((const != 0) & (array == 0)).any():
            return None
        scaled.append(array)
    return scaled
