"""Kernels that create tensors or change only their shape: Shape, Size, Reshape, Flatten, Squeeze,
Unsqueeze, Constant, ConstantOfShape, Range and EyeLike.

`reshape_target_shape` is public: the compiler resolves Reshape's 0 / -1 entries with it too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from lpuc.kernels._common import compute_dtype, ints, normalize_axes, normalize_axis, onnx_dtype
from lpuc.kernels.registry import KernelContext, kernel


def reshape_target_shape(in_shape: Sequence[int], shape: Sequence[int], allowzero: int) -> tuple[int, ...]:
    """Reshape's output shape: a 0 copies the input dim (unless `allowzero`), one -1 is inferred."""
    shape = [int(d) for d in shape]
    if shape.count(-1) > 1:
        raise ValueError(f"Reshape: at most one -1 allowed in shape {shape}")
    if any(d < -1 for d in shape):
        raise ValueError(f"Reshape: invalid negative dimension in shape {shape}")
    if allowzero and 0 in shape and -1 in shape:
        raise ValueError(f"Reshape: shape {shape} has both 0 and -1 with allowzero=1")
    if not allowzero:
        if any(d == 0 and i >= len(in_shape) for i, d in enumerate(shape)):
            raise ValueError(
                f"Reshape: a 0 in shape {shape} has no input dim to copy (input {tuple(in_shape)})"
            )
        shape = [in_shape[i] if d == 0 else d for i, d in enumerate(shape)]
    total = math.prod(in_shape)
    if -1 in shape:
        known = math.prod(d for d in shape if d != -1)
        if known == 0 or total % known:
            raise ValueError(f"Reshape: cannot infer -1 in {shape} from input shape {tuple(in_shape)}")
        shape[shape.index(-1)] = total // known
    if math.prod(shape) != total:
        raise ValueError(f"Reshape: cannot reshape {tuple(in_shape)} to {tuple(shape)}")
    return tuple(shape)


@kernel("Shape")
def shape_kernel(ctx: KernelContext, x: np.ndarray) -> np.ndarray:
    rank = x.ndim
    start = min(max(normalize_axis(ctx.attr("start", 0), rank), 0), rank)
    end = min(max(normalize_axis(ctx.attr("end", rank), rank), 0), rank)
    return np.array(x.shape[start:end], dtype=np.int64)


@kernel("Size")
def size_kernel(ctx: KernelContext, x: np.ndarray) -> np.ndarray:
    return np.array(x.size, dtype=np.int64)


@kernel("Reshape")
def reshape_kernel(ctx: KernelContext, x: np.ndarray, shape: np.ndarray | None = None) -> np.ndarray:
    target = ints(shape) if shape is not None else ctx.attr("shape")  # an attribute before opset 5
    return x.reshape(reshape_target_shape(x.shape, target, ctx.attr("allowzero", 0)))


@kernel("Flatten")
def flatten_kernel(ctx: KernelContext, x: np.ndarray) -> np.ndarray:
    axis = normalize_axis(ctx.attr("axis", 1), x.ndim)
    if not 0 <= axis <= x.ndim:
        raise ValueError(f"Flatten: axis {ctx.attr('axis')} out of range for rank {x.ndim}")
    return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


@kernel("Squeeze")
def squeeze_kernel(ctx: KernelContext, x: np.ndarray, axes: np.ndarray | None = None) -> np.ndarray:
    listed = ints(axes) if axes is not None else ctx.attr("axes")  # an attribute before opset 13
    if not listed:
        return x.reshape(tuple(d for d in x.shape if d != 1))
    squeezed = normalize_axes(listed, x.ndim)
    if any(not 0 <= a < x.ndim or x.shape[a] != 1 for a in squeezed):
        raise ValueError(f"Squeeze: axes {listed} of shape {x.shape} are not all of size 1")
    return x.reshape(tuple(d for a, d in enumerate(x.shape) if a not in squeezed))


@kernel("Unsqueeze")
def unsqueeze_kernel(ctx: KernelContext, x: np.ndarray, axes: np.ndarray | None = None) -> np.ndarray:
    listed = ints(axes) if axes is not None else ctx.attr("axes")  # an attribute before opset 13
    out_rank = x.ndim + len(listed)
    inserted = normalize_axes(listed, out_rank)
    if len(set(inserted)) != len(inserted) or any(not 0 <= a < out_rank for a in inserted):
        raise ValueError(f"Unsqueeze: invalid axes {listed} for input rank {x.ndim}")
    dims = iter(x.shape)
    return x.reshape(tuple(1 if a in inserted else next(dims) for a in range(out_rank)))


# Constant's value attributes and the dtype each one implies (None: the array keeps its own).
_CONSTANT_ATTRS = {
    "value": None,
    "sparse_value": None,  # densified by the frontend
    "value_float": np.float32,
    "value_floats": np.float32,
    "value_int": np.int64,
    "value_ints": np.int64,
    "value_string": object,
    "value_strings": object,
}


@kernel("Constant")
def constant_kernel(ctx: KernelContext) -> np.ndarray:
    present = [name for name in _CONSTANT_ATTRS if name in ctx.attrs]
    if len(present) != 1:
        raise ValueError(f"Constant: exactly one value attribute expected, got {present or 'none'}")
    name = present[0]
    return np.array(ctx.attr(name), dtype=_CONSTANT_ATTRS[name])


@kernel("ConstantOfShape")
def constant_of_shape_kernel(ctx: KernelContext, shape: np.ndarray) -> np.ndarray:
    value = ctx.attr("value")
    fill = np.zeros(1, dtype=np.float32) if value is None else np.asarray(value).reshape(-1)
    if fill.size != 1:
        raise ValueError(f"ConstantOfShape: value must hold one element, got {fill.size}")
    dims = ints(shape)
    if any(d < 0 for d in dims):
        raise ValueError(f"ConstantOfShape: negative dimension in shape {dims}")
    return np.full(tuple(dims), fill[0], dtype=fill.dtype)


@kernel("Range")
def range_kernel(ctx: KernelContext, start: np.ndarray, limit: np.ndarray, delta: np.ndarray) -> np.ndarray:
    # Scalars by the spec, but exporters also pass 1-element vectors.
    start, limit, delta = (np.asarray(v).reshape(()) for v in (start, limit, delta))
    if delta == 0:
        raise ValueError("Range: delta must not be zero")
    dtype = start.dtype
    if dtype.kind in "iu":
        first, stop, step = int(start), int(limit), int(delta)
        count = max(-((first - stop) // step), 0)  # exact ceil((stop - first) / step)
        return (first + np.arange(count, dtype=np.int64) * step).astype(dtype)
    # stash_type=1 (the default): low-precision floats are computed in float32.
    work = compute_dtype(dtype) if ctx.attr("stash_type", 1) else dtype
    first, stop, step = (v.astype(work) for v in (start, limit, delta))
    count = max(math.ceil(float((stop - first) / step)), 0)
    return (first + np.arange(count).astype(work) * step).astype(dtype)


@kernel("EyeLike")
def eye_like_kernel(ctx: KernelContext, x: np.ndarray) -> np.ndarray:
    if x.ndim != 2:
        raise ValueError(f"EyeLike: input must be 2-D, got shape {x.shape}")
    elem_type = ctx.attr("dtype")
    dtype = x.dtype if elem_type is None else onnx_dtype(elem_type)
    return np.eye(x.shape[0], x.shape[1], k=ctx.attr("k", 0), dtype=dtype)
