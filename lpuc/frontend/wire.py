"""Reading an ONNX file's large weights without parsing them: the protobuf wire format, walked by hand.

Parsing a model copies every weight into protobuf's memory, and reading a tensor's `raw_data` copies
it again. Here the file is read once; the large raw-data initializers are found by walking the wire
format (ModelProto.graph -> GraphProto.initializer -> TensorProto.raw_data), the model is parsed
from a copy in which their data is a 16-byte placeholder (what `loader.weightless` stubs it with
anyway), and each weight is a read-only numpy view of the file's bytes (what onnx's `to_array` gives,
without the copies). Anything this walk does not expect returns None: the caller then parses the
whole file as before, so malformed files fail with the same errors.
"""

from __future__ import annotations

import math
import mmap
import sys

import numpy as np
import onnx
from onnx import TensorProto

# Field numbers (onnx.proto) and wire types this walk needs.
_MODEL_GRAPH, _GRAPH_INITIALIZER = 7, 5
_DIMS, _DATA_TYPE, _SEGMENT, _NAME, _RAW_DATA, _DATA_LOCATION = 1, 2, 3, 8, 9, 14
_TYPED_DATA = frozenset({4, 5, 6, 7, 10, 11})  # float/int32/string/int64/double/uint64 _data
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
_PLACEHOLDER = bytes([_RAW_DATA << 3 | _LEN, 16]) + bytes(16)
# Types whose raw data is one stored value per element (to_array: frombuffer, reshape); packed
# sub-byte types and strings keep the ordinary path.
_PLAIN_TYPES = frozenset(
    {
        TensorProto.FLOAT,
        TensorProto.UINT8,
        TensorProto.INT8,
        TensorProto.UINT16,
        TensorProto.INT16,
        TensorProto.BOOL,
        TensorProto.FLOAT16,
        TensorProto.DOUBLE,
        TensorProto.UINT32,
        TensorProto.UINT64,
        TensorProto.BFLOAT16,
    }
)


class _Unexpected(Exception):
    """Something the walk does not handle: parse the whole file instead."""


def split_weights(
    data: bytes | mmap.mmap, min_elements: int
) -> tuple[onnx.ModelProto, dict[str, np.ndarray]] | None:
    """The model in `data` (a serialized ModelProto) with every raw-data initializer of more than
    `min_elements` elements replaced by a placeholder, and those initializers as arrays by name
    (views of `data`: a file's bytes, or the file mapped). None when the walk meets anything it
    does not expect."""
    if sys.byteorder != "little":
        return None
    try:
        pieces: list[bytes | memoryview] = []
        weights: dict[str, np.ndarray] = {}
        view = memoryview(data)
        graphs = 0
        for number, wire, start, value, end in _fields(view, 0, len(view)):
            if number == _MODEL_GRAPH and wire == _LEN:
                graphs += 1
                graph = _graph(view, value, end, data, min_elements, weights)
                pieces.append(_with_len(view[start:value], graph))
            else:
                pieces.append(view[start:end])
        if graphs != 1:  # a graph given in parts is merged by protobuf: leave that to it
            return None
    except (_Unexpected, UnicodeDecodeError):
        return None
    model = onnx.ModelProto()
    try:
        model.ParseFromString(b"".join(pieces))
    except Exception:  # noqa: BLE001 - whatever protobuf refuses, the ordinary path words it
        return None
    return model, weights


def _graph(
    view: memoryview,
    lo: int,
    hi: int,
    data: bytes | mmap.mmap,
    min_elements: int,
    weights: dict[str, np.ndarray],
) -> bytes:
    pieces: list[bytes | memoryview] = []
    names: set[str] = set()
    for number, wire, start, value, end in _fields(view, lo, hi):
        if number == _GRAPH_INITIALIZER and wire == _LEN:
            tensor = _tensor(view, value, end, data, min_elements)
            if tensor is not None:
                name, array, stubbed = tensor
                if name in names:
                    raise _Unexpected  # one name twice: the loader keeps both tensors (rare, exact)
                names.add(name)
                if array is not None:
                    weights[name] = array
                    pieces.append(_with_len(view[start:value], stubbed))
                    continue
        pieces.append(view[start:end])
    return b"".join(pieces)


def _tensor(
    view: memoryview, lo: int, hi: int, data: bytes | mmap.mmap, min_elements: int
) -> tuple[str | None, np.ndarray | None, bytes] | None:
    """(name, array or None, the tensor's bytes with a placeholder for its raw data); None for a
    tensor without a name field (left as it is)."""
    name = None
    dims: list[int] = []
    data_type = 0
    raw: tuple[int, int] | None = None
    plain = True  # no typed data, segment or external location: raw data is all there is
    pieces: list[bytes | memoryview] = []
    for number, wire, start, value, end in _fields(view, lo, hi):
        if number == _NAME and wire == _LEN:
            name = bytes(view[value:end]).decode("utf-8")  # invalid UTF-8: _Unexpected below
        elif number == _DIMS and wire == _VARINT:
            dims.append(value)
        elif number == _DIMS and wire == _LEN:
            at = value
            while at < end:
                dim, at = _varint(view, at)
                dims.append(dim)
        elif number == _DATA_TYPE and wire == _VARINT:
            data_type = value
        elif number == _RAW_DATA and wire == _LEN:
            if raw is not None:
                plain = False  # given twice (the last wins): the ordinary path
            raw = (value, end - value)
            pieces.append(_PLACEHOLDER)
            continue
        elif number in _TYPED_DATA or number == _SEGMENT or (number == _DATA_LOCATION and value):
            plain = False
        pieces.append(view[start:end])
    if name is None:
        return None
    dims = [d - (1 << 64) if d >= 1 << 63 else d for d in dims]  # int64 varints
    elements = math.prod(dims)
    if not plain or raw is None or data_type not in _PLAIN_TYPES or elements <= min_elements:
        return name, None, b""
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(data_type))
    offset, nbytes = raw
    if nbytes != elements * dtype.itemsize:
        return name, None, b""  # the ordinary path refuses it in its own words
    array = np.frombuffer(data, dtype=dtype, count=elements, offset=offset).reshape(dims)
    return name, array, b"".join(pieces)


def _fields(view: memoryview, lo: int, hi: int):
    """(field number, wire type, field start, value or payload start, field end) of each field in
    view[lo:hi]; for LEN fields the payload is view[value:end]."""
    at = lo
    while at < hi:
        start = at
        key, at = _varint(view, at)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise _Unexpected
        if wire == _VARINT:
            value, at = _varint(view, at)
        elif wire == _LEN:
            size, at = _varint(view, at)
            value, at = at, at + size
        elif wire == _I64:
            value, at = at, at + 8
        elif wire == _I32:
            value, at = at, at + 4
        else:  # groups: not in onnx.proto
            raise _Unexpected
        if at > hi:
            raise _Unexpected
        yield number, wire, start, value, at


def _varint(view: memoryview, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(view) or shift > 63:
            raise _Unexpected
        byte = view[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7


def _with_len(key: memoryview, payload: bytes) -> bytes:
    """A LEN field: its key bytes (view[start:value] minus the old length), then the new length."""
    tag, at = _varint(key, 0)
    return _encode_varint(tag) + _encode_varint(len(payload)) + payload


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)
