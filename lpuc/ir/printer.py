"""Text form of the Graph IR, for `--dump-ir`, tests and diffs.

graph mlp(%x: f32[8,64]) -> (%y)
  %h: f32[8,128] = MatMul(%x, %w0)                     # /fc1/MatMul
const %w0: f32[64,128]
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from lpuc.ir.graph import Graph, Node, Value

_SHORT = {"float32": "f32", "float16": "f16", "bfloat16": "bf16", "float64": "f64", "bool": "i1"}


def dtype_str(dtype: np.dtype) -> str:
    name = np.dtype(dtype).name
    return _SHORT.get(name, name.replace("uint", "u").replace("int", "i"))


def type_str(v: Value) -> str:
    if v.shape is None:
        return f"{dtype_str(v.dtype)}[?]"
    return f"{dtype_str(v.dtype)}[{','.join(str(d) for d in v.shape)}]"


def _attr_str(value: Any) -> str:
    if isinstance(value, np.ndarray):
        if value.size <= 8:
            return f"tensor<{dtype_str(value.dtype)}>{value.tolist()}"
        return f"tensor<{dtype_str(value.dtype)}{list(value.shape)}>"
    if hasattr(value, "node"):  # onnx.GraphProto
        return f"graph<{len(value.node)} nodes>"
    if isinstance(value, (list, tuple)) and value and hasattr(value[0], "node"):
        return f"graphs<{len(value)}>"
    try:
        return json.dumps(value, sort_keys=True)
    except TypeError:
        return type(value).__name__


def node_str(node: Node, graph: Graph) -> str:
    outs = ", ".join(f"%{o}: {type_str(graph.values[o])}" if o else "_" for o in node.outputs)
    args = ", ".join(f"%{i}" if i else "_" for i in node.inputs)
    op = f"{node.domain}.{node.op}" if node.domain else node.op
    attrs = ""
    if node.attrs:
        attrs = " {" + ", ".join(f"{k}={_attr_str(v)}" for k, v in sorted(node.attrs.items())) + "}"
    return f"  {outs} = {op}({args}){attrs}  # {node.name}"


def print_graph(graph: Graph) -> str:
    ins = ", ".join(f"%{i}: {type_str(graph.values[i])}" for i in graph.inputs)
    outs = ", ".join(f"%{o}" for o in graph.outputs)
    lines = [f"graph {graph.name}({ins}) -> ({outs})"]
    lines += [node_str(n, graph) for n in graph.nodes]
    for v in sorted((v for v in graph.values.values() if v.is_const), key=lambda v: v.name):
        lines.append(f"const %{v.name}: {type_str(v)}")
    return "\n".join(lines) + "\n"
