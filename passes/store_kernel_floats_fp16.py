"""int8 builds: float values that kernels carry between maps (a depthwise conv or a pooling reads
and writes them, a Concat or Reshape moves them) stored as fp16.

Between int8 layers some values stay float where a kernel, not a map, handles them: a MobileNet
block's depthwise conv (lpuc.DepthwiseConv) reads the expand conv's epilogue result and writes what
the project conv's quantize map reads; DenseNet's and Inception's Concats join the float results of
conv epilogues (and poolings) that the next layers' maps quantize. As float32 each is 4 bytes a lane:
the epilogues' MMs stream at half rate and hold their VXM ALUs twice as long, and the SXM copies and
VXM kernels move twice the bytes. As fp16, half of each, as in an fp16 build.

The rounding is explicit, as in store_int8_floats_fp16: the producing map converts its result to
fp16 (one more ALU op); a depthwise conv or pooling reads fp16 and computes wider (lpuc.kernels'
accumulation_dtype; the fp16 build's rule), writing fp16; Reshape and Concat carry the dtype; each
map reading an fp16 value converts it back to float32 (one more ALU op). The values are narrowed in
groups closed over producers and readers (a Concat's every input with its result): only if each is
computed by a map, a Reshape, a Concat, a depthwise conv or a pooling of the group, read only by
those or by maps, none is a graph output, and FP16_HEADROOM times the largest magnitude calibration
saw of each stays within fp16's range (measured by evaluating the graph on the calibration inputs,
only when some group qualifies). `--disable-pass store_kernel_floats_fp16` keeps them float32.
"""

from __future__ import annotations

import numpy as np

from lpuc import calibration as calib
from lpuc.ir.graph import LPUC_DOMAIN, Graph, Node
from lpuc.passes.eliminate_dead_code import eliminate_dead_code
from lpuc.passes.quantize_int8 import activation_ranges
from lpuc.passes.store_int8_floats_fp16 import FP16_HEADROOM, FP16_MAX, is_map, stored_fp16


def store_kernel_floats_fp16(graph: Graph, ctx=None) -> Graph:
    if ctx is None or ctx.precision != "int8":
        return graph
    producers, consumers = graph.producers(), graph.consumers()
    outputs = set(graph.outputs)
    groups: list[set[str]] = []
    claimed: set[str] = set()
    for node in graph.nodes:
        if not (_is_window_kernel(node) or _is_concat(node)) or node.outputs[0] in claimed:
            continue
        group = _group(node.outputs[0], producers, consumers, outputs, graph)
        if group is not None and not group & claimed:
            groups.append(group)
            claimed |= group
    if not groups:
        return graph
    # Reshape and Concat move values unchanged: the peaks of those maps and window kernels compute.
    computed = sorted(v for v in claimed if is_map(producers[v]) or _is_window_kernel(producers[v]))
    # Calibration runs only the nodes those values depend on (a ResNet's stem pooling: the stem).
    needed = graph.copy()
    needed.outputs = computed
    peaks = activation_ranges(eliminate_dead_code(needed), computed, ctx.calibration or calib.Calibration())
    narrowed: set[str] = set()
    for group in groups:
        if all(0 < peaks[v] * FP16_HEADROOM <= FP16_MAX for v in group if v in peaks):
            narrowed |= group
    return stored_fp16(graph, narrowed) if narrowed else graph


def _is_window_kernel(node: Node) -> bool:
    return node.domain == LPUC_DOMAIN and node.op in _WINDOW_KERNELS


# Channels-last window kernels that read fp16 and accumulate wider, writing fp16, as in fp16 builds.
_WINDOW_KERNELS = ("DepthwiseConv", "MaxPool", "AveragePool")


def _is_reshape(node: Node) -> bool:
    """A Reshape, or an op that only moves values as one does (passes/pool_ordered_pack's unpacking)."""
    return (node.op == "Reshape" and not node.domain) or (
        node.domain == LPUC_DOMAIN and node.op == "UnpackBlocks"
    )


def _group(
    root: str, producers: dict[str, Node], consumers: dict[str, list[Node]], outputs: set[str], graph: Graph
) -> set[str] | None:
    """The values stored as fp16 together with `root`: closed over what each is computed from (a map,
    or a Reshape, Concat or depthwise conv of group values) and what reads it (maps convert back;
    a Reshape's, Concat's or depthwise conv's result joins). None if one of them is a graph output,
    not float32, computed by anything else or read by anything else."""
    group: set[str] = set()
    pending = [root]
    while pending:
        name = pending.pop()
        if name in group:
            continue
        if name in outputs or graph.values[name].dtype != np.float32 or graph.values[name].is_dynamic:
            return None
        group.add(name)
        producer = producers.get(name)
        if producer is None:
            return None
        if _is_reshape(producer) or _is_window_kernel(producer):
            pending.append(producer.inputs[0])
        elif _is_concat(producer):
            pending.extend(producer.inputs)
        elif not is_map(producer):
            return None
        for reader in consumers.get(name, []):
            if (_is_reshape(reader) or _is_window_kernel(reader)) and reader.inputs[0] == name:
                if name in reader.inputs[1:]:
                    return None
                pending.append(reader.outputs[0])
            elif _is_concat(reader):
                pending.append(reader.outputs[0])
            elif not is_map(reader):
                return None
    return group


def _is_concat(node: Node) -> bool:
    return node.op == "Concat" and not node.domain
