"""Linear quantization: QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear.

Also the rounding and saturation step (`quantize_values`) shared by the quantized matmul and conv
kernels, so every quantized output in lpuc is produced the same way.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

from lpuc.kernels._common import integer_range, is_low_precision_float, normalize_axis, onnx_dtype
from lpuc.kernels.registry import KernelContext, kernel

# TensorProto.DataType codes of the types these ops may name in `output_dtype` / `precision`:
# float, uint8, int8, uint16, int16, int32, float16, bfloat16, the float8s, uint4, int4, float4,
# uint2, int2 and the float6s.
_QUANTIZATION_TYPES = frozenset({1, 2, 3, 4, 5, 6, 10, 16, 17, 18, 19, 20, 21, 22, 23, 25, 26, 27, 28})

_DIVISION_PRECISIONS = (np.dtype(np.float32), np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16))


def _attr_dtype(ctx: KernelContext, code: int) -> np.dtype:
    """The type an `output_dtype` / `precision` attribute names; ValueError for one these ops lack."""
    return onnx_dtype(code, ctx.op_type, _QUANTIZATION_TYPES)


def quantize_values(
    scaled: np.ndarray, zero_point: np.ndarray | None, dtype: np.dtype, saturate: bool = True
) -> np.ndarray:
    """saturate(round(scaled) + zero_point) in `dtype`.

    Integer types round half to even before the zero point is added (so ties stay ties) and clamp
    to their range. Float8/4/6 types round to nearest even in the cast, clamping to the largest
    finite value when `saturate` (otherwise out-of-range values become inf / NaN).
    """
    bounds = integer_range(dtype)
    values = np.rint(scaled) if bounds is not None else scaled
    if zero_point is not None:
        values = values + zero_point.astype(values.dtype)
    if bounds is None and saturate:
        largest = float(ml_dtypes.finfo(dtype).max)
        bounds = (-largest, largest)
    return (values if bounds is None else np.clip(values, *bounds)).astype(dtype)


def centered(values: np.ndarray, zero_point: np.ndarray | None) -> np.ndarray:
    """Quantized values minus their zero point: exact int64 for integer types, float32 for float8."""
    exact = np.int64 if integer_range(values.dtype) is not None else np.float32
    shifted = values.astype(exact)
    return shifted if zero_point is None else shifted - zero_point.astype(exact)


def _expand_to(param: np.ndarray, shape: tuple[int, ...], axis: int, block_size: int, op_type: str):
    """Broadcastable scale / zero point for per-tensor, per-axis or blocked quantization."""
    if param.size == 1 and block_size == 0:
        return param.reshape(())
    axis = normalize_axis(axis, len(shape))
    if not 0 <= axis < len(shape):
        raise ValueError(f"{op_type}: axis {axis} out of range for rank {len(shape)}")
    if block_size > 0:
        expanded = np.repeat(param, block_size, axis=axis).take(range(shape[axis]), axis=axis)
        if expanded.shape != shape:
            raise ValueError(f"{op_type}: scale shape {param.shape} does not block input shape {shape}")
        return expanded
    if param.ndim != 1 or param.size != shape[axis]:
        raise ValueError(
            f"{op_type}: per-axis scale of shape {param.shape} does not match axis {axis} of {shape}"
        )
    return param.reshape([-1 if i == axis else 1 for i in range(len(shape))])


def _as_float(values: np.ndarray, precision: np.dtype) -> np.ndarray:
    """Values rounded to `precision`, held in float32 (numpy ufuncs don't all support fp8/bf16)."""
    return values.astype(precision).astype(np.float32)


def _expander(ctx: KernelContext, shape: tuple[int, ...]):
    """Expands the node's scale / zero point (None stays None) to broadcast against `shape`."""
    axis, block_size = ctx.attr("axis", 1), ctx.attr("block_size", 0)
    return lambda param: None if param is None else _expand_to(param, shape, axis, block_size, ctx.op_type)


@kernel("QuantizeLinear")
def quantize_linear(ctx: KernelContext, x, y_scale, y_zero_point=None):
    output_dtype = ctx.attr("output_dtype", 0)
    out_dtype = _attr_dtype(ctx, output_dtype) if output_dtype else np.dtype(np.uint8)
    if y_zero_point is not None:
        if output_dtype and out_dtype != y_zero_point.dtype:
            raise ValueError(
                f"QuantizeLinear: output_dtype {out_dtype} differs from y_zero_point's {y_zero_point.dtype}"
            )
        out_dtype = y_zero_point.dtype
    if ctx.attr("precision", 0):
        precision = _attr_dtype(ctx, ctx.attr("precision"))
    else:  # the scale's type, when it is one arithmetic can be done in (not int32 / float8e8m0)
        precision = y_scale.dtype if y_scale.dtype in _DIVISION_PRECISIONS else np.dtype(np.float32)
    expand = _expander(ctx, x.shape)
    # The division happens at the scale's precision (or `precision`), rounding both operands to it.
    quotient = _as_float(_as_float(x, precision) / _as_float(expand(y_scale), precision), precision)
    return quantize_values(quotient, expand(y_zero_point), out_dtype, bool(ctx.attr("saturate", 1)))


@kernel("DequantizeLinear")
def dequantize_linear(ctx: KernelContext, x, x_scale, x_zero_point=None):
    output_dtype = ctx.attr("output_dtype", 0)
    out_dtype = _attr_dtype(ctx, output_dtype) if output_dtype else x_scale.dtype
    expand = _expander(ctx, x.shape)
    shifted = centered(x, expand(x_zero_point))
    # The output type is the precision of the multiplication.
    precision = out_dtype if is_low_precision_float(out_dtype) else np.dtype(np.float32)
    return (_as_float(shifted, precision) * _as_float(expand(x_scale), precision)).astype(out_dtype)


@kernel("DynamicQuantizeLinear")
def dynamic_quantize_linear(ctx: KernelContext, x):
    qmin, qmax = integer_range(np.dtype(np.uint8))
    values = x.astype(np.float32)
    zero = np.float32(0)
    # The range always includes 0 so that zero is exactly representable.
    low = np.minimum(zero, values.min(initial=zero))
    high = np.maximum(zero, values.max(initial=zero))
    # An all-zero input gets scale 1 (as onnxruntime does) rather than dividing by zero.
    scale = np.float32((high - low) / np.float32(qmax - qmin)) if high > low else np.float32(1)
    zero_point = quantize_values(qmin - low / scale, None, np.dtype(np.uint8))
    return quantize_values(values / scale, zero_point, np.dtype(np.uint8)), scale, zero_point
