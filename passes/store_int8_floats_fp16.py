"""int8 builds: float values that pass only between VXM maps (a residual block's sum) stored as fp16.

Between int8 layers some values stay float: ResNet's block outputs are the residual sum, which the
next block's quantize map reads and its residual map adds. As float32 they take 4 bytes a lane: a
4-word row goes through one slice's two banks in 2 cycles, so the MMs whose fused maps read or
write them stream at half rate and hold their VXM ALUs and stream ids twice as long, and they
take 4 stream ids per operand. As fp16, half of each.

The rounding is explicit: the producing map converts its result to fp16 (one more ALU op) and each
reading map converts it back to float32 (one more ALU op) before its float32 arithmetic, so every
evaluator (lpuc.ir.evaluate, the runtime) computes the same values and the cost model charges the
conversions. fp16 keeps 11 significant bits, an int8 layer 8; values beyond fp16's range (65504)
would overflow to infinity: the pass is a lowering choice that `--disable-pass
store_int8_floats_fp16` turns off.

Only float32 results of an lpuc.Fused map that are not graph outputs and that every reader reads
as an lpuc.Fused map operand are narrowed (a kernel such as a pooling would then compute in fp16).
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

from lpuc.ir.graph import LPUC_DOMAIN, Graph, Node, Value


def store_int8_floats_fp16(graph: Graph, ctx=None) -> Graph:
    if ctx is None or ctx.precision != "int8":
        return graph
    consumers = graph.consumers()
    outputs = set(graph.outputs)
    narrowed = {
        out
        for node in graph.nodes
        if _is_map(node)
        for out in node.outputs[:1]
        if out not in outputs
        and graph.values[out].dtype == np.float32
        and not graph.values[out].is_dynamic
        and consumers.get(out)
        and all(_is_map(c) for c in consumers[out])
    }
    if not narrowed:
        return graph
    out = graph.copy(nodes=[])
    for name in sorted(narrowed):
        v = graph.values[name]
        out.values[name] = Value(v.name, v.shape, np.dtype(np.float16))
    for node in graph.nodes:
        if not _is_map(node):
            out.nodes.append(node)
            continue
        steps = _widened_inputs(node, narrowed)
        if node.outputs[0] in narrowed:
            steps.append(_cast(f"s{len(steps) - 1}", TensorProto.FLOAT16, "float16"))
        out.nodes.append(_with_expr(node, steps))
    return out


def _is_map(node: Node) -> bool:
    return node.domain == LPUC_DOMAIN and node.op == "Fused" and len(node.outputs) == 1


def _widened_inputs(node: Node, narrowed: set[str]) -> list[dict]:
    """The node's steps, preceded by a float32 conversion of each fp16-stored input it reads (its
    uses then read the conversion; later step numbers shift by the steps put in front)."""
    steps = node.attrs["expr"]
    inputs = [k for k, name in enumerate(node.inputs) if name in narrowed]
    if not inputs:
        return [dict(s) for s in steps]
    front = [_cast(f"i{k}", TensorProto.FLOAT, "float32") for k in inputs]
    renamed = {f"i{k}": f"s{j}" for j, k in enumerate(inputs)}
    shift = len(front)

    def arg(a: str) -> str:
        if a in renamed:
            return renamed[a]
        return f"s{int(a[1:]) + shift}" if a.startswith("s") else a

    return front + [{**s, "args": [arg(a) for a in s["args"]]} for s in steps]


def _cast(arg: str, to: int, dtype: str) -> dict:
    return {"op": "Cast", "domain": "", "attrs": {"to": int(to)}, "args": [arg], "dtype": dtype, "opset": 13}


def _with_expr(node: Node, steps: list[dict]) -> Node:
    return node.with_(attrs={**node.attrs, "expr": steps})
