"""int8 builds: the float32 constants of int8 maps and epilogues stored as fp16.

A map streams each operand one byte per stream id (lpuc/cost.py stream_needs), for the whole map:
a float32 scale or bias takes 4 stream ids of each map that reads it, even a scalar read once. The
maps around an int8 product (the quantize map of its input, the requantizing epilogue of its int32
result) are limited by those stream ids, not by the MXM: issue 9's int8 GEMM quantize maps held 4
stream ids for the fp32 input, 4 for the scale and 1 for the int8 result; ResNet-50's epilogues 4
for each per-channel scale and offset. As fp16 they take 2.

The rounding is explicit, as in store_int8_floats_fp16: each reading map converts the constant to
float32 (one more ALU op, charged) before its float32 arithmetic. Only maps whose result is int8
or that read an int32 product are changed, and only constants whose every nonzero value lies in
fp16's normal range: there fp16 keeps 11 significant bits, a relative error of at most 2^-11 on a
scale (0.06 of a level at int8's largest, 127), well below the half level an int8 value rounds
by and the per-tensor activation scale's own error. Values int8 maps commonly hold (integers up to
2048: zero points, clip bounds) are exact. `--disable-pass store_int8_constants_fp16` keeps them
float32.
"""

from __future__ import annotations

import numpy as np

from lpuc.ir.graph import Graph, Node
from lpuc.passes.store_int8_floats_fp16 import FP16_MAX, _is_map, _widened_inputs, _with_expr

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
        out.nodes.append(_with_expr(renamed, _widened_inputs(renamed, set(narrowed.values()))))
    return out.prune_values() if narrowed else graph


def _int8_map(node: Node, graph: Graph) -> bool:
    """A map whose result is int8 (a quantize map) or that reads an int32 value (an int8 product's
    epilogue): its result's error is int8's."""
    if not _is_map(node):
        return False
    dtypes = [graph.values[n].dtype for n in node.inputs if n]
    return graph.values[node.outputs[0]].dtype == np.int8 and np.dtype(np.int32) not in dtypes


def _narrowable(graph: Graph, name: str) -> bool:
    """A float32 constant whose nonzero values are all normal fp16 numbers."""
    value = graph.values[name]
    if not value.is_const or value.dtype != np.float32 or value.size != 1:
        return False
    magnitude = np.abs(np.asarray(value.const, dtype=np.float64))
    nonzero = magnitude[magnitude != 0]
    return bool(
        np.all(np.isfinite(magnitude))
        and (nonzero.size == 0 or (nonzero.min() >= _FP16_SMALLEST_NORMAL and nonzero.max() <= FP16_MAX))
    )
