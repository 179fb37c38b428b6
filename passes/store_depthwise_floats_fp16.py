"""int8 builds: the float values a depthwise convolution reads and writes stored as fp16.

A MobileNet block's depthwise conv (lpuc.DepthwiseConv, on the VXM) stays float between two int8
1x1 convs: the expand conv's epilogue map writes its float result, the depthwise conv reads it and
writes a float result that the project conv's quantize map reads. As float32 each is 4 bytes a
lane: the epilogue's MM streams at half rate (2 cycles a row) and holds its VXM ALUs twice as long,
and so does the depthwise conv's stream. As fp16, half of each, as in an fp16 build.

The rounding is explicit, as in store_int8_floats_fp16: the producing map converts its result to
fp16 (one more ALU op); the depthwise conv reads fp16 and accumulates in float32 (lpuc.kernels'
accumulation_dtype, the fp16 build's rule), writing fp16; each map reading an fp16 value converts
it back to float32 (one more ALU op). Reshapes between them carry the dtype. A group of values
(the epilogue's result, its reshapes, the conv's result and its reshapes) is narrowed only if
every reader is a map or a depthwise conv's input, none is a graph output, and FP16_HEADROOM times
the largest magnitude calibration saw of each stays within fp16's range (measured by evaluating
the graph on the calibration inputs, only when such a group exists).
`--disable-pass store_depthwise_floats_fp16` keeps them float32.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

from lpuc import calibration as calib
from lpuc.ir.graph import LPUC_DOMAIN, Graph, Node, Value
from lpuc.passes.quantize_int8 import activation_ranges
from lpuc.passes.store_int8_floats_fp16 import FP16_HEADROOM, FP16_MAX, cast_step, is_map, widened_inputs


def store_depthwise_floats_fp16(graph: Graph, ctx=None) -> Graph:
    if ctx is None or ctx.precision != "int8":
        return graph
    producers, consumers = graph.producers(), graph.consumers()
    outputs = set(graph.outputs)
    groups: list[set[str]] = []
    claimed: set[str] = set()
    for node in graph.nodes:
        if not _is_depthwise(node) or node.inputs[0] in claimed:
            continue
        root = _through_reshapes_up(node.inputs[0], producers)
        group = _group(root, producers, consumers, outputs, graph)
        if group is not None and not group & claimed:
            groups.append(group)
            claimed |= group
    if not groups:
        return graph
    # Reshapes carry values unchanged: the peaks of the values maps and depthwise convs compute.
    computed = sorted(v for v in claimed if producers[v].op != "Reshape" or producers[v].domain)
    peaks = activation_ranges(graph, computed, ctx.calibration or calib.Calibration())
    narrowed: set[str] = set()
    for group in groups:
        if all(0 < peaks[v] * FP16_HEADROOM <= FP16_MAX for v in group if v in peaks):
            narrowed |= group
    if not narrowed:
        return graph
    out = graph.copy(nodes=[])
    for name in sorted(narrowed):
        v = graph.values[name]
        out.values[name] = Value(v.name, v.shape, np.dtype(np.float16))
    for node in graph.nodes:
        if not is_map(node):
            out.nodes.append(node)
            continue
        steps = widened_inputs(node, narrowed)
        if node.outputs[0] in narrowed:
            steps.append(cast_step(f"s{len(steps) - 1}", TensorProto.FLOAT16, "float16"))
        out.nodes.append(node.with_(attrs={**node.attrs, "expr": steps}))
    return out


def _is_depthwise(node: Node) -> bool:
    return node.domain == LPUC_DOMAIN and node.op == "DepthwiseConv"


def _is_reshape(node: Node) -> bool:
    return node.op == "Reshape" and not node.domain


def _through_reshapes_up(name: str, producers: dict[str, Node]) -> str:
    """The value a chain of Reshapes ending in `name` starts from."""
    while name in producers and _is_reshape(producers[name]):
        name = producers[name].inputs[0]
    return name


def _group(
    root: str, producers: dict[str, Node], consumers: dict[str, list[Node]], outputs: set[str], graph: Graph
) -> set[str] | None:
    """The values to store as fp16 with `root` (a map's float32 result a depthwise conv reads, maybe
    through Reshapes): it, its reshapes, the depthwise convs reading them and their results' reshapes.
    None if any of them is read by anything but a map, a Reshape or a depthwise conv's input, is a
    graph output, or is not float32, or if `root` is not a map's result."""
    if root not in producers or not is_map(producers[root]):
        return None
    group: set[str] = set()
    pending = [root]
    while pending:
        name = pending.pop()
        if name in group:
            continue
        if name in outputs or graph.values[name].dtype != np.float32 or graph.values[name].is_dynamic:
            return None
        group.add(name)
        for reader in consumers.get(name, []):
            if _is_reshape(reader) and reader.inputs[0] == name:
                pending.append(reader.outputs[0])
            elif _is_depthwise(reader) and reader.inputs[0] == name and name not in reader.inputs[1:]:
                pending.append(reader.outputs[0])
            elif not is_map(reader):
                return None
    return group
