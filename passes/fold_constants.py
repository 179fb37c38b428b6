"""Evaluate nodes whose inputs are all constants, with the same kernels the runtime uses."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from lpuc.errors import LpucError
from lpuc.ir.graph import Graph, Node, Value, constant_value
from lpuc.kernels import KernelContext, get_kernel, run_kernel

# Control-flow bodies may read values of the enclosing graph that are not constants here.
_NOT_FOLDABLE_ERRORS = (KeyError,)
# Ops whose result depends only on the shapes of their inputs: static shapes make them constants.
_SHAPE_ONLY = frozenset({"Shape", "Size"})


def try_fold(node: Node, values: Mapping[str, Value], opsets: Mapping[str, int]) -> list[np.ndarray] | None:
    """The node's outputs if it can be evaluated now, else None."""
    kernel = get_kernel(node.op, node.domain)
    if kernel is None or not kernel.deterministic:
        return None
    shape_only = node.op in _SHAPE_ONLY and not node.domain
    args = []
    for name in node.inputs:
        if not name:
            args.append(None)
            continue
        v = values.get(name)
        if shape_only and v is not None and not v.is_const and not v.is_dynamic:
            args.append(np.empty(v.shape, dtype=v.dtype))  # never touched: only its shape is read
            continue
        if v is None or not v.is_const:
            return None
        args.append(v.const)
    ctx = KernelContext(node.op, node.attrs, node.opset, len(node.outputs), node.domain, opsets)
    try:
        with np.errstate(all="ignore"):
            return run_kernel(ctx, args)
    except _NOT_FOLDABLE_ERRORS:
        return None
    except (ValueError, TypeError, IndexError, NotImplementedError) as e:
        raise LpucError(f"node '{node.name}' ({node.op}): {e}") from None


def fold_constants(graph: Graph, ctx=None) -> Graph:
    out = graph.copy(nodes=[])
    for node in graph.nodes:
        folded = try_fold(node, out.values, out.opsets)
        if folded is None:
            out.nodes.append(node)
            continue
        for name, array in zip(node.outputs, folded):
            if name:
                out.values[name] = constant_value(name, array)
    return out.prune_values()
