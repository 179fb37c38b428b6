"""int8 builds: the scalar float32 constants of quantize maps stored as fp16; fp16 builds: those of
a product's map that fp16 holds exactly.

A map streams each operand one byte per stream id (lpuc/cost.py stream_needs), for the whole map:
a float32 scalar takes 4 stream ids of each map that reads it, read once but held throughout (the
target file and design documents describe no way for the VXM to keep an operand, so that rule
stays). Issue 9's int8 GEMM quantizes its fp32 input in 104 maps, each holding 4 stream ids for
the input, 4 for its 1/scale and 1 for the int8 result. As fp16 the scale takes 2 (GEMM
[2304x4096]x[4096x320]: stream-cycles 627k -> 437k with the K-split change).

The rounding is explicit, as in store_int8_floats_fp16: the map converts the constant to float32
(one more ALU op, charged) before its float32 arithmetic. fp16 keeps 11 significant bits for a
value in its normal range: a relative error of at most 2^-11 on the scale (0.06 of a level at
int8's largest, 127), well below the half level the quantized value rounds by. Values outside that
range stay float32.

Only maps with an int8 result and no int32 operand (a float value's quantization, not an epilogue)
and only scalars: an epilogue's per-channel requantization scales and offsets, narrowed too, hold
two more ALUs each for their conversions, and ResNet-50 int8, whose epilogues are ALU-bound, went
from 95,011 to 112,123 cycles (its stream waits fell, its VXM unit waits tripled); narrowing also
the scalars of epilogues: 100,829. `--disable-pass store_int8_constants_fp16` keeps them float32.
One epilogue is narrowed: a bare dequantization, Cast(int32 product) * per-channel scale to a float
result (a MatMul with no bias: issue 9's GEMM). It holds two ALUs; the conversion makes it three,
and its streams go from 13 to 11 (activation 1, int32 relay 4, scale 4 -> 2, result 4). Four of
them end a wave of the GEMM's chains together, beside the next wave's quantize maps (7 stream ids
each): [2304x4096]x[4096x320] 8,963 -> 8,841 cycles, [2304x2048]x[2048x320] 6,024 -> 5,899,
[1536x4096]x[4096x320] 7,506 -> 7,290; ResNet-50 int8 has none (83,081 either way). The same
fp16 bound applies to each channel's scale (_narrowable).

fp16 builds narrow the scalars of a map of a MatMul's result (an epilogue to be) only where fp16
holds them exactly (no rounding: 1/8, -inf), again one ALU op each for the conversion. GPT-2's
Q@K^T epilogue, (scores * 1/8) masked to -inf, held 19 stream ids for each MM, 8 of them for its two
scalars, and so ran two MMs at a time beside the softmaxes' streams: with 15, GPT-2 2L fp16
46,938 -> 46,421 cycles, 12L 260,734 -> 258,844. A map fuse_softmax would take as a softmax's
prologue keeps them: there the conversions are recomputed in each of the softmax's three passes
(the golden "gpt": 4,645 -> 4,746 cycles).
"""

from __future__ import annotations

import numpy as np

from lpuc.ir.graph import Graph, Node
from lpuc.passes.fuse_softmax import match_softmaxes
from lpuc.passes.store_int8_floats_fp16 import FP16_MAX, is_map, widened_inputs, with_expr

# The smallest normal fp16 magnitude: below it fp16 loses significant bits.
_FP16_SMALLEST_NORMAL = float(np.finfo(np.float16).tiny)


def store_int8_constants_fp16(graph: Graph, ctx=None) -> Graph:
    if ctx is None or ctx.precision not in ("int8", "fp16"):
        return graph
    exact = ctx.precision == "fp16"  # narrow only what fp16 holds exactly
    producers = graph.producers()
    prologues = {f.nodes[0] for f in match_softmaxes(graph, ctx.target)[0]} if exact else set()
    narrowed: dict[str, str] = {}  # float32 constant -> its fp16 copy (shared by all its readers)
    out = graph.copy(nodes=[])
    for node in graph.nodes:
        narrows = _product_map(node, producers, prologues) if exact else _int8_map(node, graph)
        per_channel = not exact and _bare_dequantization(node, graph)
        wide = [
            n
            for n in dict.fromkeys(node.inputs)
            if n and (narrows or per_channel) and _narrowable(graph, n, exact, per_channel)
        ]
        if not wide:
            out.nodes.append(node)
            continue
        for name in wide:
            if name not in narrowed:
                narrowed[name] = out.add_const(f"{name}/fp16", graph.values[name].const.astype(np.float16))
        renamed = node.with_(inputs=tuple(narrowed.get(n, n) for n in node.inputs))
        out.nodes.append(with_expr(renamed, widened_inputs(renamed, set(narrowed.values()))))
    return out.prune_values() if narrowed else graph


def _int8_map(node: Node, graph: Graph) -> bool:
    """A map whose result is int8 (its error is int8's) that reads no int32 value (not an epilogue
    of an int8 product)."""
    if not is_map(node):
        return False
    dtypes = [graph.values[n].dtype for n in node.inputs if n]
    return graph.values[node.outputs[0]].dtype == np.int8 and np.dtype(np.int32) not in dtypes


def _bare_dequantization(node: Node, graph: Graph) -> bool:
    """A map computing Cast(int32 product) * scale to a float result, nothing more (an int8 MatMul's
    epilogue when it has no bias)."""
    if not is_map(node) or not node.inputs or graph.values[node.outputs[0]].dtype.kind != "f":
        return False
    ops = [step["op"] for step in node.attrs.get("expr", [])]
    return ops == ["Cast", "Mul"] and graph.values[node.inputs[0]].dtype == np.int32


def _product_map(node: Node, producers: dict[str, Node], prologues: set[str]) -> bool:
    """A map of a MatMul's result (its first operand), not a softmax's prologue to be."""
    if not is_map(node) or not node.inputs or node.inputs[0] not in producers or node.name in prologues:
        return False
    return producers[node.inputs[0]].op in ("MatMul", "HeadMatMul")


def _narrowable(graph: Graph, name: str, exact: bool = False, per_channel: bool = False) -> bool:
    """A float32 scalar constant (`per_channel`: or a row of them) that is zero or a normal fp16
    number in magnitude (`exact`: that fp16 holds without rounding)."""
    value = graph.values[name]
    if not value.is_const or value.dtype != np.float32 or (value.size != 1 and not per_channel):
        return False
    if exact:
        c = np.asarray(value.const, dtype=np.float32)
        return bool(np.array_equal(c.astype(np.float16).astype(np.float32), c))
    magnitude = np.abs(np.asarray(value.const, dtype=np.float64))
    nonzero = magnitude[magnitude != 0]
    return bool(
        np.all(np.isfinite(magnitude))
        and (nonzero.size == 0 or (nonzero.min() >= _FP16_SMALLEST_NORMAL and nonzero.max() <= FP16_MAX))
    )
