"""Random generators: RandomUniform(Like), RandomNormal(Like), Bernoulli and Multinomial.

ONNX leaves the random stream implementation-defined, so outputs match other runtimes only in
distribution. A `seed` attribute makes a node reproducible: every evaluation of it draws the same
values. These kernels are registered non-deterministic so they are never constant-folded.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

from lpuc.kernels._common import onnx_dtype
from lpuc.kernels.registry import KernelContext, kernel


def _generator(ctx: KernelContext) -> np.random.Generator:
    seed = ctx.attr("seed")
    if seed is None:
        return np.random.default_rng()
    # The float's bit pattern, so fractional seeds give distinct streams too.
    return np.random.default_rng(int(np.float64(seed).view(np.uint64)))


def _dtype(ctx: KernelContext, like: np.ndarray | None, default: int = TensorProto.FLOAT) -> np.dtype:
    """The `dtype` attribute, else the dtype of the input a *Like op copies, else `default`."""
    code = ctx.attr("dtype")
    if code is not None:
        return onnx_dtype(int(code))
    return like.dtype if like is not None else onnx_dtype(default)


def _uniform(ctx: KernelContext, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    low, high = float(ctx.attr("low", 0.0)), float(ctx.attr("high", 1.0))
    return _generator(ctx).uniform(low, high, shape).astype(dtype)


def _normal(ctx: KernelContext, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    mean, scale = float(ctx.attr("mean", 0.0)), float(ctx.attr("scale", 1.0))
    return _generator(ctx).normal(mean, scale, shape).astype(dtype)


def _shape_attr(ctx: KernelContext) -> tuple[int, ...]:
    shape = ctx.attr("shape")
    if shape is None:
        raise ValueError(f"{ctx.op_type}: the shape attribute is required")
    return tuple(int(d) for d in shape)


@kernel("RandomUniform", deterministic=False)
def random_uniform(ctx: KernelContext) -> np.ndarray:
    return _uniform(ctx, _shape_attr(ctx), _dtype(ctx, None))


@kernel("RandomNormal", deterministic=False)
def random_normal(ctx: KernelContext) -> np.ndarray:
    return _normal(ctx, _shape_attr(ctx), _dtype(ctx, None))


@kernel("RandomUniformLike", deterministic=False)
def random_uniform_like(ctx: KernelContext, x: np.ndarray) -> np.ndarray:
    return _uniform(ctx, x.shape, _dtype(ctx, x))


@kernel("RandomNormalLike", deterministic=False)
def random_normal_like(ctx: KernelContext, x: np.ndarray) -> np.ndarray:
    return _normal(ctx, x.shape, _dtype(ctx, x))


@kernel("Bernoulli", deterministic=False)
def bernoulli(ctx: KernelContext, p: np.ndarray) -> np.ndarray:
    draws = _generator(ctx).random(p.shape)
    return (draws < p.astype(np.float64)).astype(_dtype(ctx, p))


@kernel("Multinomial", deterministic=False)
def multinomial(ctx: KernelContext, logits: np.ndarray) -> np.ndarray:
    """`sample_size` class indices per batch row, drawn from softmax(logits)."""
    dtype = _dtype(ctx, None, TensorProto.INT32)
    if dtype not in (np.int32, np.int64):
        raise ValueError(f"Multinomial: output dtype must be int32 or int64, got {dtype}")
    logits = logits.astype(np.float64)
    weights = np.exp(logits - logits.max(axis=-1, keepdims=True))
    cdf = np.cumsum(weights, axis=-1)
    cdf /= cdf[:, -1:]
    draws = _generator(ctx).random((logits.shape[0], int(ctx.attr("sample_size", 1))))
    classes = (draws[..., None] >= cdf[:, None, :]).sum(axis=-1)
    return np.minimum(classes, logits.shape[-1] - 1).astype(dtype)
