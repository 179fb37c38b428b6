"""Evaluate an ONNX graph node by node with lpuc's kernels.

This is not a path for running models (those are compiled and executed as instruction streams);
it evaluates the bodies of control-flow ops (If/Loop/Scan) inside host fallback, and lets kernel
tests run ONNX's own node test cases against the kernels alone.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
from onnx import numpy_helper

from lpuc.frontend.attributes import node_attributes
from lpuc.kernels.registry import KernelContext, canonical_domain, run_kernel


def opset_map(opset_imports) -> dict[str, int]:
    return {canonical_domain(o.domain): int(o.version) for o in opset_imports}


def evaluate_graph(
    graph: onnx.GraphProto,
    inputs: Mapping[str, np.ndarray | None],
    opsets: Mapping[str, int],
    outer: Mapping[str, np.ndarray] | None = None,
) -> list[np.ndarray]:
    """Run `graph` on `inputs`; returns the graph outputs in order."""
    env: dict[str, np.ndarray | None] = dict(outer or {})
    for init in graph.initializer:
        env[init.name] = numpy_helper.to_array(init)
    for sp in graph.sparse_initializer:
        from lpuc.frontend.attributes import _sparse_to_dense

        env[sp.values.name] = _sparse_to_dense(sp)
    env.update(inputs)
    env[""] = None
    for node in graph.node:
        domain = canonical_domain(node.domain)
        ctx = KernelContext(
            op_type=node.op_type,
            attrs=node_attributes(node),
            opset=opsets.get(domain, 0),
            num_outputs=len(node.output),
            domain=domain,
            opsets=opsets,
            outer=env,
        )
        args = [env[name] if name else None for name in node.input]
        for name, value in zip(node.output, run_kernel(ctx, args)):
            if name:
                env[name] = value
    return [env[o.name] for o in graph.output]


def evaluate_model(model: onnx.ModelProto, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    return evaluate_graph(model.graph, inputs, opset_map(model.opset_import))
