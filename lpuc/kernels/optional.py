"""Optional-type ops on tensors. lpuc has no optional or sequence values: an optional is a tensor
that is present, or a missing input (None)."""

from __future__ import annotations

import numpy as np

from lpuc.kernels.registry import KernelContext, kernel


@kernel("OptionalHasElement")
def optional_has_element(ctx: KernelContext, x: np.ndarray | None = None) -> np.ndarray:
    return np.array(x is not None)


@kernel("OptionalGetElement")
def optional_get_element(ctx: KernelContext, x: np.ndarray | None) -> np.ndarray:
    if x is None:
        raise ValueError("OptionalGetElement: the optional input is empty")
    return x


@kernel("Optional")
def optional(ctx: KernelContext, x: np.ndarray | None = None) -> np.ndarray:
    if x is None:
        raise ValueError("Optional: an empty optional has no tensor value on this target")
    return x
