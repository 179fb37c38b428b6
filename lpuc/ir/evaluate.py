"""Evaluate a Graph IR on concrete inputs, node by node, with the kernels the runtime uses.

Not a way to run models (those are compiled and executed as instruction streams): passes use it to
observe intermediate values, e.g. int8 calibration's activation ranges on the graph the pass sees,
whose values need not exist in the source model (Im2Col columns, fused forms).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from lpuc.ir.graph import LPUC_DOMAIN, Graph
from lpuc.kernels import KernelContext, run_kernel
from lpuc.kernels.lowered import evaluate_expression


def evaluate_graph_ir(
    graph: Graph, feeds: Mapping[str, np.ndarray], observe: Callable[[str, np.ndarray], None]
) -> None:
    """Run `graph` on `feeds` (one array per graph input) and call `observe(name, value)` for every
    graph input and every node output. Values are dropped after their last reader, so memory stays
    near the widest cut of the graph rather than its sum."""
    last_use: dict[str, int] = {}
    for index, node in enumerate(graph.nodes):
        for name in node.inputs:
            if name:
                last_use[name] = index
    env: dict[str, np.ndarray] = {}
    for name in graph.inputs:
        env[name] = np.asarray(feeds[name])
        observe(name, env[name])
    for index, node in enumerate(graph.nodes):
        args = []
        for name in node.inputs:
            value = graph.values[name] if name else None
            args.append(None if value is None else value.const if value.is_const else env[name])
        ctx = KernelContext(node.op, node.attrs, node.opset, len(node.outputs), node.domain, graph.opsets)
        with np.errstate(all="ignore"):
            if node.domain == LPUC_DOMAIN and node.op == "Fused":
                # A fused map (fuse_elementwise) has no kernel: the runtime evaluates its steps, here
                # over whole tensors (its operands still broadcast as ONNX's do before legalize_broadcast).
                results = [evaluate_expression(node.attrs["expr"], args)]
            else:
                results = run_kernel(ctx, args)
        for name, result in zip(node.outputs, results):
            if name:
                env[name] = result
                observe(name, result)
        for name in node.inputs:
            if name and last_use.get(name) == index and name not in graph.outputs:
                env.pop(name, None)
