"""int8 builds: the scalar float32 constants of quantize maps stored as fp16.

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
"""

from __future__ import annotations

import numpy as np

from lpuc.ir.graph import Graph, Node
from lpuc.passes.store_int8_floats_fp16 import FP16_MAX, is_map, widened_inputs, with_expr

# The smallest normal fp16 magnitude: below it fp16 loses significant bits.
_FP16_SMALLEST_NORMAL = float(np.finfo(np.float16).tiny)


def store_int8_constants_fp16(graph: Graph, ctx=None) -> Graph:
    if ctx is None or ctx.precision != "int8":
        return graph
    narrowed: dict[str, str] = {}  # float32 constant -> its fp16 copy (shared by all its readers)
    out = graph.copy(nodes=[])
    for node in graph.nodes:
        int8_map = _int8_map(node, graph)
        wide = [n for n in dict.fromkeys(node.inputs) if n and int8_map and _narrowable(graph, n)]
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


def _narrowable(graph: Graph, name: str) -> bool:
    """A float32 scalar constant that is zero or a normal fp16 number in magnitude."""
    value = graph.values[name]
    if not value.is_const or value.dtype != np.float32 or value.size != 1:
        return False
    magnitude = np.abs(np.asarray(value.const, dtype=np.float64))
    nonzero = magnitude[magnitude != 0]
    return bool(
        np.all(np.isfinite(magnitude))
        and (nonzero.size == 0 or (nonzero.min() >= _FP16_SMALLEST_NORMAL and nonzero.max() <= FP16_MAX))
    )
