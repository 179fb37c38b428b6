"""Linear-algebra utilities: Einsum and Det."""

from __future__ import annotations

import numpy as np

from lpuc.kernels._common import compute_dtype
from lpuc.kernels.registry import KernelContext, kernel


@kernel("Einsum")
def einsum(ctx: KernelContext, *operands: np.ndarray) -> np.ndarray:
    # ONNX's equation language (explicit '->' or implicit output, '...' broadcasting) is numpy's.
    equation = "".join(str(ctx.attr("equation", "")).split())
    input_terms = equation.split("->")[0].split(",")
    if not operands or len(input_terms) != len(operands):
        raise ValueError(
            f"Einsum: equation {equation!r} names {len(input_terms)} inputs, got {len(operands)}"
        )
    out_dtype = operands[0].dtype
    work = [op.astype(compute_dtype(op.dtype), copy=False) for op in operands]
    try:
        result = np.einsum(equation, *work)
    except ValueError as err:
        shapes = ", ".join(str(op.shape) for op in operands)
        raise ValueError(f"Einsum: equation {equation!r} does not fit input shapes {shapes}: {err}") from err
    return np.asarray(result).astype(out_dtype, copy=False)


@kernel("Det")
def det(ctx: KernelContext, x: np.ndarray) -> np.ndarray:
    """Determinants of the square matrices in the last two dims of x."""
    if x.ndim < 2 or x.shape[-1] != x.shape[-2]:
        raise ValueError(f"Det: input shape {x.shape} does not end in square matrices")
    result = np.linalg.det(x.astype(compute_dtype(x.dtype), copy=False))
    return np.asarray(result).astype(x.dtype, copy=False)
