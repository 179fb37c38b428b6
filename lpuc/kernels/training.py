"""One optimizer step (ai.onnx.preview.training): Adagrad, Adam and Momentum.

Each op updates several tensors at once; its variadic inputs come grouped by role (all X, then
all gradients, then each optimizer state), and its outputs in the same grouping.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from lpuc.kernels._common import float_scalar
from lpuc.kernels.registry import KernelContext, kernel

TRAINING_DOMAIN = "ai.onnx.preview.training"


def _groups(ctx: KernelContext, tensors: Sequence[np.ndarray], roles: int) -> list[tuple[np.ndarray, ...]]:
    """Regroup [X1..Xn, G1..Gn, ...] into per-tensor tuples (Xi, Gi, ...)."""
    if len(tensors) % roles:
        raise ValueError(f"{ctx.op_type}: {len(tensors)} inputs do not split into {roles} groups")
    count = len(tensors) // roles
    return [tuple(tensors[role * count + i] for role in range(roles)) for i in range(count)]


def _ungroup(results: list[tuple[np.ndarray, ...]]) -> list[np.ndarray]:
    """Per-tensor result tuples back to the output order [all X_new, then each state]."""
    return [out for role in zip(*results) for out in role]


@kernel("Adagrad", domain=TRAINING_DOMAIN)
def adagrad(
    ctx: KernelContext, rate: np.ndarray, count: np.ndarray, *tensors: np.ndarray
) -> list[np.ndarray]:
    norm = ctx.attr("norm_coefficient", 0.0)
    epsilon = ctx.attr("epsilon", 1e-6)
    step = float_scalar(rate) / (1 + float_scalar(count) * ctx.attr("decay_factor", 0.0))
    results = []
    for x, g, h in _groups(ctx, tensors, 3):
        g = norm * x + g
        h_new = h + g * g
        x_new = x - step * g / (np.sqrt(h_new) + epsilon)
        results.append((x_new.astype(x.dtype), h_new.astype(h.dtype)))
    return _ungroup(results)


@kernel("Adam", domain=TRAINING_DOMAIN)
def adam(ctx: KernelContext, rate: np.ndarray, count: np.ndarray, *tensors: np.ndarray) -> list[np.ndarray]:
    alpha, beta = ctx.attr("alpha", 0.9), ctx.attr("beta", 0.999)
    norm, norm_post = ctx.attr("norm_coefficient", 0.0), ctx.attr("norm_coefficient_post", 0.0)
    epsilon = ctx.attr("epsilon", 1e-6)
    t = float_scalar(count)
    step = float_scalar(rate)
    if t > 0:  # bias correction of both running averages
        step *= math.sqrt(1 - beta**t) / (1 - alpha**t)
    results = []
    for x, g, v, h in _groups(ctx, tensors, 4):
        g = norm * x + g
        v_new = alpha * v + (1 - alpha) * g
        h_new = beta * h + (1 - beta) * g * g
        x_new = (1 - norm_post) * (x - step * v_new / (np.sqrt(h_new) + epsilon))
        results.append((x_new.astype(x.dtype), v_new.astype(v.dtype), h_new.astype(h.dtype)))
    return _ungroup(results)


@kernel("Momentum", domain=TRAINING_DOMAIN)
def momentum(
    ctx: KernelContext, rate: np.ndarray, count: np.ndarray, *tensors: np.ndarray
) -> list[np.ndarray]:
    mode = ctx.attr("mode", "standard")
    if mode not in ("standard", "nesterov"):
        raise ValueError(f"Momentum: unsupported mode {mode!r}")
    alpha, beta, norm = (ctx.attr(name) for name in ("alpha", "beta", "norm_coefficient"))
    if alpha is None or beta is None or norm is None:
        raise ValueError("Momentum: the alpha, beta and norm_coefficient attributes are required")
    if float_scalar(count) <= 0:
        beta = 1.0  # the first step takes the whole gradient
    step = float_scalar(rate)
    results = []
    for x, g, v in _groups(ctx, tensors, 3):
        g = norm * x + g
        v_new = alpha * v + beta * g
        direction = g + alpha * v_new if mode == "nesterov" else v_new
        results.append(((x - step * direction).astype(x.dtype), v_new.astype(v.dtype)))
    return _ungroup(results)
