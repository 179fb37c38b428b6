"""The registry of op kernels: the single definition of what every operator computes.

A kernel is a plain numpy function `fn(ctx, *inputs) -> array | tuple[array, ...]` over whole
tensors. The same kernel serves constant folding, the runtime's chip instructions (on tiles or
whole tensors) and host fallback, so an op's meaning is written exactly once.

Missing optional inputs arrive as `None`. Attributes are plain Python values (see
`lpuc.frontend.attributes`); a kernel reads them with `ctx.attr(name, default)`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

ONNX_DOMAIN = ""
_DOMAIN_ALIASES = {"ai.onnx": ONNX_DOMAIN}

KernelFn = Callable[..., Any]


def canonical_domain(domain: str) -> str:
    return _DOMAIN_ALIASES.get(domain, domain)


@dataclass(frozen=True)
class KernelContext:
    """What a kernel may know about the node it evaluates, besides its input arrays."""

    op_type: str
    attrs: Mapping[str, Any] = field(default_factory=dict)
    opset: int = 0  # version of the node's domain the model imports (0: latest)
    num_outputs: int = 1
    domain: str = ONNX_DOMAIN
    # Opset imports of the enclosing model: control-flow kernels evaluate subgraphs with them.
    opsets: Mapping[str, int] = field(default_factory=dict)
    # Values of the enclosing scopes, visible to subgraphs (If/Loop/Scan bodies).
    outer: Mapping[str, np.ndarray] = field(default_factory=dict)

    def attr(self, name: str, default: Any = None) -> Any:
        return self.attrs.get(name, default)


@dataclass(frozen=True)
class Kernel:
    op_type: str
    domain: str
    fn: KernelFn
    # Deterministic kernels may be evaluated at compile time (constant folding).
    deterministic: bool = True


_KERNELS: dict[tuple[str, str], Kernel] = {}


def kernel(
    *op_types: str, domain: str = ONNX_DOMAIN, deterministic: bool = True
) -> Callable[[KernelFn], KernelFn]:
    """Register `fn` as the kernel of each op type in `op_types`."""

    def register(fn: KernelFn) -> KernelFn:
        for op in op_types:
            key = (canonical_domain(domain), op)
            if key in _KERNELS:
                raise ValueError(f"kernel for {key} registered twice")
            _KERNELS[key] = Kernel(op, key[0], fn, deterministic)
        return fn

    return register


def get_kernel(op_type: str, domain: str = ONNX_DOMAIN) -> Kernel | None:
    _load_all()
    return _KERNELS.get((canonical_domain(domain), op_type))


def registered_ops() -> list[tuple[str, str]]:
    """(domain, op_type) of every kernel, sorted."""
    _load_all()
    return sorted(_KERNELS)


# Attribute naming the outer-scope values a control-flow node's bodies read. The compiler appends
# those values to the node's inputs (so dependencies and liveness see them); they reach the kernel
# as `ctx.outer`, not as inputs.
CAPTURES_ATTR = "_captures"


def run_kernel(ctx: KernelContext, inputs: Sequence[np.ndarray | None]) -> list[np.ndarray]:
    """Evaluate one node; always returns a list of `ctx.num_outputs` arrays."""
    k = get_kernel(ctx.op_type, ctx.domain)
    if k is None:
        raise KeyError(f"no kernel for {ctx.domain or 'ai.onnx'}::{ctx.op_type}")
    captures = ctx.attrs.get(CAPTURES_ATTR)
    if captures:
        inputs, captured = list(inputs[: -len(captures)]), inputs[-len(captures) :]
        ctx = dataclasses.replace(ctx, outer={**ctx.outer, **dict(zip(captures, captured))})
    out = k.fn(ctx, *inputs)
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    return [o if isinstance(o, np.ndarray) else np.asarray(o) for o in outs[: ctx.num_outputs]]


_LOADED = False


def _load_all() -> None:
    """Import every kernel module once (they register themselves on import)."""
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    import importlib
    import pkgutil

    import lpuc.kernels as pkg

    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        if info.name not in ("registry", "interpreter") and not info.name.startswith("_"):
            importlib.import_module(f"lpuc.kernels.{info.name}")
