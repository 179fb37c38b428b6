"""Small helpers shared by kernel modules.

The one place for them: kernel modules import shared helpers from here, never from a sibling op
module. Nothing here registers a kernel.
"""

from __future__ import annotations

import functools
from collections.abc import Container, Iterable
from typing import TYPE_CHECKING, Any

import ml_dtypes
import numpy as np
from onnx import TensorProto, helper

from lpuc.errors import LpucError

if TYPE_CHECKING:
    from lpuc.kernels.registry import KernelContext, KernelFn


class IndexRangeError(LpucError, ValueError):
    """An index input out of range: bad data, not an lpuc bug (a ValueError too, so constant
    folding reports it like any other invalid operand)."""


def normalize_axis(axis: int, rank: int) -> int:
    """ONNX allows negative axes counted from the end."""
    return axis + rank if axis < 0 else axis


def normalize_axes(axes: Iterable[int], rank: int) -> tuple[int, ...]:
    """`normalize_axis` over an axes attribute or input."""
    return tuple(normalize_axis(int(a), rank) for a in axes)


def ints(value: np.ndarray | None) -> list[int] | None:
    """A 1-D int tensor input (shape, axes, pads...) as a Python list; None stays None."""
    if value is None:
        return None
    return [int(v) for v in np.asarray(value).reshape(-1)]


def float_scalar(value: np.ndarray) -> float:
    """A scalar input (ONNX passes them as shape [] or [1]) as a Python float."""
    return float(np.asarray(value).reshape(-1)[0])


def int_scalar(value: np.ndarray | None, default: int | None = None) -> int | None:
    """An integer scalar input as a Python int; `default` when the optional input is absent."""
    return default if value is None else int(np.asarray(value).reshape(-1)[0])


def opset_before(ctx: KernelContext, version: int) -> bool:
    """Whether the model imports an opset older than `version` (opset 0 means the latest)."""
    return 0 < ctx.opset < version


def onnx_dtype(to: int | str, op_type: str = "", allowed: Container[int] | None = None) -> np.dtype:
    """The numpy dtype of an ONNX element type: a TensorProto code, or its name (Cast before opset 6).

    With `allowed`, a code outside it is a ValueError naming `op_type`.
    """
    if isinstance(to, str):
        to = TensorProto.DataType.Value(to.upper())
    if allowed is not None and to not in allowed:
        raise ValueError(f"{op_type}: unsupported data type code {to}")
    return np.dtype(helper.tensor_dtype_to_np_dtype(to))


def integer_range(dtype: np.dtype) -> tuple[int, int] | None:
    """(min, max) of an integer dtype, including ml_dtypes' int4/int2; None for floats."""
    if not isinstance(dtype, np.dtype):  # (np.dtype() of a dtype costs more than the lookup)
        try:
            dtype = np.dtype(dtype)
        except TypeError:  # not a dtype at all
            return None
    return _integer_range(dtype)


@functools.cache
def _integer_range(dtype: np.dtype) -> tuple[int, int] | None:
    """integer_range, once per dtype: ml_dtypes.iinfo raises for floats, which took tens of
    microseconds on every kernel call that asked (kernels ask per call, runtimes run them often)."""
    try:
        info = ml_dtypes.iinfo(dtype)
    except (TypeError, ValueError):
        return None
    return int(info.min), int(info.max)


def is_low_precision_float(dtype: np.dtype) -> bool:
    """float16 / bfloat16: compute in float32 and cast back to keep numpy's ufuncs exact enough."""
    if not isinstance(dtype, np.dtype):
        dtype = np.dtype(dtype)  # once: dtype.name is slow, and this runs per elementwise kernel call
    # (the scalar type compared, not the dtype: dtype equality took microseconds)
    return dtype.kind == "f" and dtype.itemsize < 4 or dtype.type is _BFLOAT16


_BFLOAT16 = ml_dtypes.bfloat16  # (ml_dtypes' module attributes are slow to look up)


def compute_dtype(dtype: np.dtype) -> np.dtype:
    """float16/bfloat16 widen to float32 (numpy's ufuncs lose accuracy in them); others stay."""
    return np.dtype(np.float32) if is_low_precision_float(dtype) else np.dtype(dtype)


def accumulation_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype products and sums are accumulated in: float32 for fp16/bf16 (numpy would
    accumulate in the narrow type), int64 for integers (exact; callers wrap back to the input
    type, as a 32-bit accumulator would), otherwise the dtype itself."""
    if not isinstance(dtype, np.dtype):
        dtype = np.dtype(dtype)
    if is_low_precision_float(dtype):
        return _FLOAT32
    if integer_range(dtype) is not None:
        return _INT64
    return dtype


_FLOAT32, _INT64 = np.dtype(np.float32), np.dtype(np.int64)


def widen_low_precision(x: np.ndarray | None) -> np.ndarray | None:
    """float16/bfloat16 as float32 (exact); any other dtype, or a missing input, unchanged."""
    if x is not None and is_low_precision_float(x.dtype):
        return x.astype(np.float32)
    return x


def low_precision_in_float32(fn: KernelFn) -> KernelFn:
    """Run kernel `fn` on widened inputs and cast its result to the first input's dtype.

    The final cast also keeps float32 in float32 when a formula's constants would promote it.
    """

    @functools.wraps(fn)
    def wrapped(ctx: KernelContext, *inputs: Any) -> np.ndarray:
        result = fn(ctx, *(widen_low_precision(x) for x in inputs))
        return np.asarray(result).astype(inputs[0].dtype, copy=False)

    return wrapped


def sigmoid(x: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-x)) without overflowing exp for large |x| (Sigmoid, recurrent gates, SiLU)."""
    decay = np.exp(-np.abs(x))
    # Integer literals: a float one would promote ml_dtypes' bfloat16 to float32.
    return np.where(x >= 0, 1 / (1 + decay), decay / (1 + decay))
