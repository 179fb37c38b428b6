"""Size checks run as soon as a value's shape is known, before anything is allocated or tiled.

A mutated or mis-bound model (a dim of 10**9) must be refused in milliseconds with the sizes that
matter, not after minutes of tiling or a MemoryError.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from lpuc.errors import DoesNotFitError, ShapeError
from lpuc.ir.graph import Node, Value
from lpuc.report import human_bytes
from lpuc.target import Target

# numpy and the tile index arithmetic are comfortable below this; no chip tensor comes close.
MAX_ELEMENTS = 2**31


def check_value_size(value: Value, where: str, what: str, target: Target | None) -> None:
    """Refuse a value with absurdly many elements or more bytes than the chip's whole SRAM.

    Dynamic (data-dependent, host-resident) values have no static shape and are not checked.
    """
    if value.shape is None:
        return
    shape = "x".join(str(d) for d in value.shape) or "scalar"
    elements = math.prod(int(d) for d in value.shape)  # Python ints: no int64 overflow
    nbytes = elements * np.dtype(value.dtype).itemsize
    if elements > MAX_ELEMENTS:
        raise ShapeError(
            f"{where}: {what} has shape {shape} = {elements:,} elements ({human_bytes(nbytes)}), "
            f"over lpuc's limit of {MAX_ELEMENTS:,} elements per tensor"
        )
    if target is not None and nbytes > target.sram_bytes:
        raise DoesNotFitError(
            f"{where}: {what} (shape {shape}, {np.dtype(value.dtype).name}) needs {human_bytes(nbytes)}, "
            f"the chip ({target.name}) has {human_bytes(target.sram_bytes)} of SRAM"
        )


def check_before_folding(node: Node, values: Mapping[str, Value], where: str) -> None:
    """Refuse a constant op whose output would be huge before evaluating it allocates the memory
    (only by element count: constants meet SRAM once deduplicated and at their stored precision)."""
    shape = _generated_shape(node, values)
    if shape is not None and node.outputs and all(d >= 0 for d in shape):
        dtype = values[node.inputs[0]].dtype if node.op != "ConstantOfShape" else np.float32
        what = f"output '{node.outputs[0]}' of {node.op} node '{node.name}'"
        check_value_size(Value(node.outputs[0], shape, np.dtype(dtype)), where, what, None)


def _generated_shape(node: Node, values: Mapping[str, Value]) -> tuple[int, ...] | None:
    """The output shape of the ops that make big tensors from small operands (None: not one)."""
    if node.op not in ("ConstantOfShape", "Expand", "Tile") or node.domain:
        return None
    operands = [values.get(n) for n in node.inputs[:2]]
    if any(v is None or v.shape is None for v in operands):
        return None
    if node.op == "ConstantOfShape":
        return tuple(int(d) for d in np.ravel(operands[0].const)) if operands[0].is_const else None
    if len(operands) < 2 or not operands[1].is_const:
        return None
    x, arg = operands
    given = [int(d) for d in np.ravel(arg.const)]
    if node.op == "Tile":
        return tuple(a * b for a, b in zip(x.shape, given)) if len(given) == len(x.shape) else None
    rank = max(len(x.shape), len(given))
    padded_x = (1,) * (rank - len(x.shape)) + tuple(x.shape)
    padded = (1,) * (rank - len(given)) + tuple(given)
    return tuple(max(a, b) for a, b in zip(padded_x, padded))
