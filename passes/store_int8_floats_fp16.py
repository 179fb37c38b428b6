"""int8 builds: float values that pass only between VXM maps (a residual block's sum) stored as fp16.

Between int8 layers some values stay float: ResNet's block outputs are the residual sum, which the
next block's quantize map reads and its residual map adds. As float32 they take 4 bytes a lane: a
4-word row goes through one slice's two banks in 2 cycles, so the MMs whose fused maps read or
write them stream at half rate and hold their VXM ALUs and stream ids twice as long, and they
take 4 stream ids per operand. As fp16, half of each.

The rounding is explicit: the producing map converts its result to fp16 (one more ALU op) and each
reading map converts it back to float32 (one more ALU op) before its float32 arithmetic, so every
evaluator (lpuc.ir.evaluate, the runtime) computes the same values and the cost model charges the
conversions. fp16 keeps 11 significant bits, an int8 layer 8. fp16's range ends at 65504: a value
is narrowed only if FP16_HEADROOM times the largest magnitude calibration saw (from its quantize
map's scale) stays within it. `--disable-pass store_int8_floats_fp16` turns the pass off.

Only float32 results of an lpuc.Fused map that are not graph outputs, that every reader reads as an
lpuc.Fused map operand, directly or through Reshapes (which then carry fp16 too; kernels such as a
pooling or a Concat: store_kernel_floats_fp16), and that some map quantizes for an int8 layer
(values between int8 layers, not, e.g., a decomposed LRN's intermediates) are narrowed.

First, a map that reads two int32 products (a residual block with a projection shortcut: its
conv's and its shortcut's results) is split in two: the first product's dequantization becomes a
map of its own, whose float result is then narrowed like any other. Otherwise one product is
written to SRAM as int32 and read back by the map fused into the other product's MM: both at half
rate, and that fused map holds nine ALUs. Measured on ResNet-50 v1.5 int8 (tsp-v1): 153,666 cycles
with float32 storage, 142,188 with this pass (of which the split: with the stem unpacked, 138,489
narrowed without it, 134,593 with it).
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

from lpuc.ir.graph import LPUC_DOMAIN, Graph, Node, Value
from lpuc.passes.quantize_int8 import INT8_MAX, UNSIGNED_LEVELS, UNSIGNED_ZERO_POINT


def store_int8_floats_fp16(graph: Graph, ctx=None) -> Graph:
    if ctx is None or ctx.precision != "int8":
        return graph
    graph, parts = _split_products(graph)
    consumers = graph.consumers()
    outputs = set(graph.outputs)
    # Map results stored with the Reshapes of them that maps read (_views).
    candidates = {
        out: views
        for node in graph.nodes
        if is_map(node)
        for out in node.outputs[:1]
        if graph.values[out].dtype == np.float32
        and (views := _views(out, consumers, outputs, graph)) is not None
    }
    # Values some map quantizes, within fp16's range by a margin over their calibrated peak (where a
    # Reshape passes a value on, the peak its readers see of the reshaped one); then a product's part
    # (which no map quantizes) by the peak of the sum it joins, an addend's scale.
    narrowed: set[str] = set()
    for v in sorted(candidates.keys() - parts):
        views = candidates[v]
        peak = max(_value_peak(name, [c for c in consumers[name] if is_map(c)], graph) for name in views)
        if 0 < peak * FP16_HEADROOM <= FP16_MAX:
            narrowed.update(views)
    narrowed |= {
        v
        for v in candidates.keys() & parts
        if all(is_map(c) for c in consumers[v])
        and all(
            c.outputs[0] in narrowed
            or 0 < _calibrated_peak(v, [c], graph, direct=False) * FP16_HEADROOM <= FP16_MAX
            for c in consumers[v]
        )
    }
    return stored_fp16(graph, narrowed) if narrowed else graph


def stored_fp16(graph: Graph, narrowed: set[str]) -> Graph:
    """`graph` with the `narrowed` values stored as fp16: the maps writing them round to fp16 as
    their last step, the maps reading them widen them first (explicit casts, charged as ALU ops)."""
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
        out.nodes.append(with_expr(node, steps))
    return out


# Narrowed values stay finite up to this many times the largest magnitude calibration saw.
FP16_HEADROOM = 8.0
FP16_MAX = float(np.finfo(np.float16).max)


def _calibrated_peak(value: str, readers: list[Node], graph: Graph, direct: bool = True) -> float:
    """The largest magnitude calibration saw of what a reader quantizes, from its scale (a map's
    x * (1 / scale), scale = peak / 127: passes.quantize_int8): of `value` itself (direct), or of
    whatever the reader quantizes (a product's part joining a sum quantized in the same map). 0 when
    no reader quantizes that way."""
    peak = 0.0
    for reader in readers:
        if not _quantizes(reader, graph):
            continue
        levels = UNSIGNED_LEVELS if _unsigned_quantize(reader, graph, direct) else INT8_MAX
        for step in reader.attrs["expr"]:
            args = step["args"]
            if step["op"] != "Mul" or len(args) != 2:
                continue
            names = [reader.inputs[int(a[1:])] if a[0] == "i" else None for a in args]
            if direct and value not in names:
                continue
            consts = [n for n in names if n is not None and n != value and graph.is_const(n)]
            inverse = np.abs(np.asarray(graph.values[consts[0]].const)) if consts else None
            if inverse is not None and inverse.size == 1 and float(inverse.max()) > 0:
                peak = max(peak, levels / float(inverse.max()))
    return peak


def _unsigned_quantize(reader: Node, graph: Graph, direct: bool) -> bool:
    """Whether a quantizing map may quantize unsigned (scale = peak / 255, passes.quantize_int8): it
    adds the zero point -128 as a constant of its own; not known (so assumed) when the peak is read
    from a part's scale (direct False), where the zero point may have joined another constant."""
    if not direct:
        return True
    for step in reader.attrs["expr"]:
        if step["op"] != "Add":
            continue
        for a in step["args"]:
            name = reader.inputs[int(a[1:])] if a[0] == "i" else None
            if name is not None and graph.is_const(name):
                c = np.asarray(graph.values[name].const)
                if c.size == 1 and float(c.reshape(())) == UNSIGNED_ZERO_POINT:
                    return True
    return False


def _value_peak(value: str, readers: list[Node], graph: Graph) -> float:
    """`value`'s calibrated peak where a reader scales it directly for quantizing; otherwise the peak
    of what its readers quantize (a decomposed LRN quantizes the square of a value: a proxy, there
    larger than the value's own)."""
    return _calibrated_peak(value, readers, graph) or _calibrated_peak(value, readers, graph, direct=False)


def _views(value: str, consumers: dict[str, list[Node]], outputs: set[str], graph: Graph) -> list[str] | None:
    """`value` and the Reshapes of it (of them, ...) that maps read: what is stored as fp16 with it
    (a Reshape carries its input's dtype). None if any of them is a graph output, a dynamic shape,
    or read by anything but a map or a Reshape, or if no map reads any."""
    views, pending, read = [], [value], False
    while pending:
        name = pending.pop()
        if name in outputs or graph.values[name].is_dynamic or not consumers.get(name):
            return None
        views.append(name)
        for reader in consumers[name]:
            if reader.op == "Reshape" and not reader.domain and reader.inputs[0] == name:
                pending.append(reader.outputs[0])
            elif is_map(reader):
                read = True
            else:
                return None
    return views if read else None


def is_map(node: Node) -> bool:
    return node.domain == LPUC_DOMAIN and node.op == "Fused" and len(node.outputs) == 1


def _quantizes(node: Node, graph: Graph) -> bool:
    """A map with an int8 result: the next layer's input quantization (whose scale was calibrated
    on the values it reads)."""
    return is_map(node) and graph.values[node.outputs[0]].dtype == np.int8


def widened_inputs(node: Node, narrowed: set[str]) -> list[dict]:
    """The node's steps, preceded by a float32 conversion of each fp16-stored input it reads (its
    uses then read the conversion; later step numbers shift by the steps put in front)."""
    steps = node.attrs["expr"]
    inputs = [k for k, name in enumerate(node.inputs) if name in narrowed]
    if not inputs:
        return [dict(s) for s in steps]
    front = [cast_step(f"i{k}", TensorProto.FLOAT, "float32") for k in inputs]
    renamed = {f"i{k}": f"s{j}" for j, k in enumerate(inputs)}
    shift = len(front)

    def arg(a: str) -> str:
        if a in renamed:
            return renamed[a]
        return f"s{int(a[1:]) + shift}" if a.startswith("s") else a

    return front + [{**s, "args": [arg(a) for a in s["args"]]} for s in steps]


def cast_step(arg: str, to: int, dtype: str) -> dict:
    return {"op": "Cast", "domain": "", "attrs": {"to": int(to)}, "args": [arg], "dtype": dtype, "opset": 13}


def with_expr(node: Node, steps: list[dict]) -> Node:
    return node.with_(attrs={**node.attrs, "expr": steps})


def _split_products(graph: Graph) -> tuple[Graph, set[str]]:
    """A map of two int32 products (a residual block's conv and downsample results) reads one of
    them back from SRAM: 4-byte rows at half rate, and a fused map that holds the VXM's ALUs for
    twice the ops. One product's own part (its dequantization) becomes a map of its own, whose
    float result the narrowing then stores as fp16: each part fuses into its own MM. (The part of
    the shortcut, whose activation is computed first: ResNet-50 v1.5 int8 96,587 -> 95,276 cycles
    over taking the first product in input order, the block's last conv.)"""
    producers = graph.producers()
    depth = _depths(graph, producers)
    out = graph.copy(nodes=[])
    parts: set[str] = set()
    for node in graph.nodes:
        split = _product_part(node, graph, producers, depth) if is_map(node) else None
        if split is None:
            out.nodes.append(node)
            continue
        part, rest = split
        name = out.add_value(f"{node.outputs[0]}/part", graph.values[node.outputs[0]].shape, np.float32)
        inputs, steps = _subexpression(node, part)
        out.nodes.append(Node("Fused", f"{node.name}/part", inputs, (name,), {"expr": steps}, LPUC_DOMAIN, 1))
        out.nodes.append(_rest(node, part, rest, name))
        parts.add(name)
    return (out, parts) if parts else (graph, parts)


def _depths(graph: Graph, producers: dict[str, Node]) -> dict[str, int]:
    """Value -> the longest chain of nodes from the graph's inputs to it (0: an input, a constant)."""
    depth: dict[str, int] = {}
    for node in graph.nodes:  # (topological order)
        d = 1 + max((depth.get(i, 0) for i in node.inputs if i), default=0)
        for o in node.outputs:
            if o:
                depth[o] = d
    return depth


def _product_part(
    node: Node, graph: Graph, producers: dict[str, Node], depth: dict[str, int]
) -> tuple[list[int], list[int]] | None:
    """(steps computed from one int32 product and constants alone, the other steps) of a map that
    reads two or more int32 products of the full shape; None if that part is read by more than one
    later step or the map is not such. The part is the product of the shallowest activation (a
    projection shortcut's, of the block's input): its MM can run early, while the map's rest fuses
    into the MM of the deeper product (the block's last conv), the one on the block's chain."""
    shape = graph.values[node.outputs[0]].shape
    products = [
        k
        for k, name in enumerate(node.inputs)
        if name
        and name in producers
        and producers[name].op == "MatMulInteger"
        and graph.values[name].shape == shape
    ]
    if len(products) < 2:
        return None
    products.sort(key=lambda k: depth.get(producers[node.inputs[k]].inputs[0], 0))
    allowed = {products[0]} | {k for k, name in enumerate(node.inputs) if name and graph.is_const(name)}
    steps = node.attrs["expr"]
    inputs_of: list[set[int]] = []
    for step in steps:
        used: set[int] = set()
        for a in step["args"]:
            if a.startswith("i"):
                used.add(int(a[1:]))
            elif a.startswith("s"):
                used |= inputs_of[int(a[1:])]
        inputs_of.append(used)
    part = [j for j, used in enumerate(inputs_of) if products[0] in used and used <= allowed]
    rest = [j for j in range(len(steps)) if j not in part]
    if not part or not rest or part[-1] == len(steps) - 1:
        return None
    readers = {j: [r for r in rest if f"s{j}" in steps[r]["args"]] for j in part}
    if any(readers[j] for j in part[:-1]) or len(readers[part[-1]]) != 1:
        return None
    return part, rest


def _subexpression(node: Node, part: list[int]) -> tuple[tuple[str, ...], list[dict]]:
    """The inputs and steps of `part` as a map of its own."""
    steps = node.attrs["expr"]
    inputs: list[str] = []
    step_ref = {f"s{j}": f"s{n}" for n, j in enumerate(part)}

    def ref(a: str) -> str:
        if a.startswith("i"):
            name = node.inputs[int(a[1:])]
            if name not in inputs:
                inputs.append(name)
            return f"i{inputs.index(name)}"
        return step_ref.get(a, a)

    new_steps = [{**steps[j], "args": [ref(a) for a in steps[j]["args"]]} for j in part]
    return tuple(inputs), new_steps


def _rest(node: Node, part: list[int], rest: list[int], part_value: str) -> Node:
    """The map without `part`: the part's result is one more input."""
    steps = node.attrs["expr"]
    extra = f"i{len(node.inputs)}"
    step_ref = {f"s{j}": f"s{n}" for n, j in enumerate(rest)} | {f"s{part[-1]}": extra}
    new_steps = [{**steps[j], "args": [step_ref.get(a, a) for a in steps[j]["args"]]} for j in rest]
    # Only the inputs the remaining steps read (the first product is read by the part alone).
    names = (*node.inputs, part_value)
    kept = sorted({int(a[1:]) for st in new_steps for a in st["args"] if a.startswith("i")})
    index = {f"i{k}": f"i{n}" for n, k in enumerate(kept)}
    new_steps = [{**st, "args": [index.get(a, a) for a in st["args"]]} for st in new_steps]
    return node.with_(inputs=tuple(names[k] for k in kept), attrs={**node.attrs, "expr": new_steps})
