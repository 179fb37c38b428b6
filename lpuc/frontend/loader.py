"""Read an ONNX model from disk (with external data) and bring it to one canonical opset."""

from __future__ import annotations

import math
import mmap
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto

from lpuc.errors import ModelError, UnsupportedError
from lpuc.frontend.wire import split_weights

# The opset every model is converted to when onnx's version converter can do it. Models that
# already import a newer opset keep theirs: the kernels implement every version's semantics.
CANONICAL_OPSET = 21


def load_model(source: str | os.PathLike | onnx.ModelProto) -> onnx.ModelProto:
    """Load and check a model; every failure is a one-line ModelError naming the file."""
    return _load(source, split=False)[0]


def load_model_and_weights(
    source: str | os.PathLike | onnx.ModelProto,
) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """load_model, with a file's large raw-data weights apart: read-only arrays by name (views of the
    file's bytes, lpuc.frontend.wire), their tensors in the model only a placeholder. For
    import_model(model, ..., weights=...): the weights are never parsed or copied."""
    return _load(source, split=True)


def _load(
    source: str | os.PathLike | onnx.ModelProto, split: bool
) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    weights: dict[str, np.ndarray] = {}
    if isinstance(source, onnx.ModelProto):
        model, where = source, source.graph.name or "<model>"
    else:
        path = Path(source)
        where = str(path)
        if path.is_dir():
            raise ModelError(f"{where}: is a directory, not an ONNX model file")
        if not path.is_file():
            raise ModelError(f"{where}: no such file")
        found = _split(path) if split else None
        if found is not None:
            model, weights = found
        else:
            try:
                model = onnx.load(str(path), load_external_data=False)
            except (DecodeError, ValueError, RuntimeError, OSError) as e:
                raise ModelError(f"{where}: not an ONNX model ({_first_line(e)})") from None
        if not model.HasField("graph") or not model.opset_import:
            raise ModelError(f"{where}: not an ONNX model (no graph or opset imports)")
        try:
            onnx.external_data_helper.load_external_data_for_model(model, str(path.parent))
        except (OSError, ValueError) as e:
            raise ModelError(f"{where}: cannot read external data ({_first_line(e)})") from None
    _check_opsets(model, where)
    light = weightless(model)
    try:
        check_weightless(light)
    except (onnx.checker.ValidationError, UnicodeDecodeError) as e:  # bad bytes in a name: not UTF-8
        raise ModelError(f"{where}: invalid ONNX model ({_first_line(e)})") from None
    if model.functions:
        model = attach_weights(
            Weightless(onnx.inliner.inline_local_functions(light.model), light.stubbed), model
        )
    return model, weights


def _split(path: Path) -> tuple[onnx.ModelProto, dict[str, np.ndarray]] | None:
    """The model and its large weights apart (lpuc.frontend.wire), or None: a file onnx reads as
    text, one it cannot read, or one the wire walk does not handle take onnx.load's path."""
    if onnx.serialization.registry.get_format_from_file_extension(path.suffix) not in (None, "protobuf"):
        return None
    try:
        data = _file_bytes(path)
    except OSError:
        return None
    return split_weights(data, STUB_MIN_ELEMENTS)


def _file_bytes(path: Path) -> bytes | mmap.mmap:
    """The file's bytes, mapped read-only where the OS allows: the weights are views of them, and a
    map copies nothing (reading a 340 MB model into memory took more time than the rest of the
    import). The map stays open while a weight uses it; outputs are written via temp file + rename,
    so writing over the model file does not change it."""
    with open(path, "rb") as f:
        try:
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (ValueError, OSError):  # an empty file, or one that cannot be mapped
            return f.read()


def _check_opsets(model: onnx.ModelProto, where: str) -> None:
    newest = onnx.defs.onnx_opset_version()
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            if imp.version > newest:
                raise UnsupportedError(
                    f"{where}: model imports ai.onnx opset {imp.version}, newer than the installed onnx "
                    f"{onnx.__version__} knows (up to {newest})"
                )


def default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def canonicalize_opset(model: onnx.ModelProto) -> onnx.ModelProto:
    """Convert older models up to CANONICAL_OPSET where onnx's converter can; else keep as is."""
    light = weightless(model)
    converted = canonicalize_weightless(light)
    return model if converted is light else attach_weights(converted, model)


def canonicalize_weightless(light: Weightless) -> Weightless:
    """canonicalize_opset on a weightless model: the converter never sees (or copies) the weights."""
    model = light.model
    version = default_opset(model)
    if version == 0 or version >= CANONICAL_OPSET:
        return light
    if version < 13:
        model = _hardmax_on_2d(model)
    try:
        converted = onnx.version_converter.convert_version(model, CANONICAL_OPSET)
        check_weightless(Weightless(converted, light.stubbed))
    except Exception:  # noqa: BLE001 - the converter raises many types; keeping the model is safe
        return light
    # Some adapters change the graph's signature (e.g. Scan 8 -> 9 drops the batch axis): refuse those.
    if _signature(converted) != _signature(model):
        return light
    # The weights are re-attached by name: refuse an adapter that rewrote a stubbed one (none do).
    before = {t.name: _tensor_type(t) for t in model.graph.initializer if t.name in light.stubbed}
    after = {t.name: _tensor_type(t) for t in converted.graph.initializer if t.name in light.stubbed}
    if after != before:
        return light
    return Weightless(converted, light.stubbed)


def _hardmax_on_2d(model: onnx.ModelProto) -> onnx.ModelProto:
    """Before opset 13 Hardmax flattened its input to 2-D at `axis`; onnx's converter has no 12->13
    adapter for it (it has for Softmax), so spell the old meaning out: Flatten, Hardmax over the
    flattened axis, Reshape back."""
    if not any(n.op_type == "Hardmax" and n.domain in ("", "ai.onnx") for n in model.graph.node):
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes = []
    for k, n in enumerate(model.graph.node):
        if n.op_type != "Hardmax" or n.domain not in ("", "ai.onnx"):
            nodes.append(n)
            continue
        axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
        flat, hard, shape = (f"{n.output[0]}__hardmax{k}_{tag}" for tag in ("flat", "2d", "shape"))
        nodes += [
            onnx.helper.make_node("Flatten", [n.input[0]], [flat], axis=axis),
            onnx.helper.make_node("Hardmax", [flat], [hard], axis=1, name=n.name),
            onnx.helper.make_node("Shape", [n.input[0]], [shape]),
            onnx.helper.make_node("Reshape", [hard, shape], [n.output[0]]),
        ]
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out


def _signature(model: onnx.ModelProto) -> list[bytes]:
    return [
        v.type.SerializeToString(deterministic=True)
        for v in list(model.graph.input) + list(model.graph.output)
    ]


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


# Initializers with more elements than this are stubbed in weightless copies: onnx's inference reads
# only small constants (shape operands); the importer's per-node inference uses the same limit.
STUB_MIN_ELEMENTS = 1 << 16
_TYPED_FIELDS = ("float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data")
_DATA_FIELDS = ("raw_data", *_TYPED_FIELDS)
_COMPLEX = (TensorProto.COMPLEX64, TensorProto.COMPLEX128)  # two typed values per element
# Strings may not be raw data; int32 / int64 tensors are what onnx's inference reads as shapes.
_NEVER_STUBBED = (TensorProto.STRING, TensorProto.INT32, TensorProto.INT64)


@dataclass(frozen=True)
class Weightless:
    """A copy of a model whose large initializers hold a placeholder instead of their data.

    onnx's checker, version converter and shape inference serialize the whole model (often more
    than once); on this copy they handle kilobytes, not the weights. Stubbed tensors keep their name,
    dims, dtype and which field holds the data; `attach_weights` or the importer (by name) put the
    real tensors back.
    """

    model: onnx.ModelProto
    stubbed: frozenset[str]


def weightless(model: onnx.ModelProto) -> Weightless:
    try:
        return _weightless(model)
    except UnicodeDecodeError:
        # A string field that is not UTF-8: the checker refuses the model itself, in its own words.
        return Weightless(model, frozenset())


def _weightless(model: onnx.ModelProto) -> Weightless:
    graph = model.graph
    light = onnx.ModelProto()
    _copy_fields(model, light, skip=("graph",))
    _copy_fields(graph, light.graph, skip=("initializer",))
    names = Counter(t.name for t in graph.initializer)
    stubbed = set()
    for t in graph.initializer:
        if names[t.name] == 1 and _stubbable(t):  # a name given twice: the tensors stay (rare, exact)
            light.graph.initializer.append(_stub(t))
            stubbed.add(t.name)
        else:
            light.graph.initializer.append(t)
    return Weightless(light, frozenset(stubbed))


def check_weightless(light: Weightless) -> None:
    """onnx's checker on a weightless model. Stubs pass as one-element tensors (the checker would
    refuse their placeholder for their dims); their typed data was counted when stubbed, and raw data
    too short for its dims is the importer's error (`raw_data_too_small`), as reading its length
    here would copy it."""
    if not light.stubbed:
        onnx.checker.check_model(light.model)
        return
    view = onnx.ModelProto()
    view.CopyFrom(light.model)
    for t in view.graph.initializer:
        if t.name in light.stubbed:
            del t.dims[:]
            t.dims.append(1)
    onnx.checker.check_model(view)


def attach_weights(light: Weightless, original: onnx.ModelProto) -> onnx.ModelProto:
    """A full model: `light` with its stubs replaced by `original`'s tensors of the same names."""
    tensors = {t.name: t for t in original.graph.initializer if t.name in light.stubbed}
    model = onnx.ModelProto()
    model.CopyFrom(light.model)
    for t in model.graph.initializer:
        if t.name in light.stubbed:
            t.CopyFrom(tensors[t.name])
    return model


def raw_data_too_small(tensor: TensorProto) -> str | None:
    """The checker's message for raw data shorter than its dims need (checked for stubs only)."""
    if not tensor.HasField("raw_data"):
        return None
    bits = _BITS.get(tensor.data_type)
    if bits is None:
        try:
            bits = 8 * np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
        except (KeyError, ValueError, TypeError):
            return None
    required = (math.prod(tensor.dims) * bits + 7) // 8
    size = len(tensor.raw_data)
    if size >= required:
        return None
    return (
        f"TensorProto (tensor name: {tensor.name}) raw_data size ({size} bytes) is too small for the "
        f"declared shape and type ({required} bytes required)."
    )


# Sub-byte types, packed in raw data.
_BITS = {
    getattr(TensorProto, n): b
    for n, b in (("INT4", 4), ("UINT4", 4), ("FLOAT4E2M1", 4), ("INT2", 2), ("UINT2", 2))
    if hasattr(TensorProto, n)
}


def _stubbable(t: TensorProto) -> bool:
    if t.data_location == TensorProto.EXTERNAL or t.data_type in _NEVER_STUBBED:
        return False
    elements = math.prod(t.dims)
    if elements <= STUB_MIN_ELEMENTS:
        return False
    if t.HasField("raw_data"):
        return not any(len(getattr(t, f)) for f in _TYPED_FIELDS)
    filled = [f for f in _TYPED_FIELDS if len(getattr(t, f))]
    # Only typed data the checker accepts: exactly one field, with enough values for the dims.
    per_element = 2 if t.data_type in _COMPLEX else 1
    return len(filled) == 1 and len(getattr(t, filled[0])) >= per_element * elements


def _stub(t: TensorProto) -> TensorProto:
    stub = TensorProto()
    _copy_fields(t, stub, skip=_DATA_FIELDS)
    if t.HasField("raw_data"):
        stub.raw_data = bytes(16)  # enough for one element of any type
    else:
        field = next(f for f in _TYPED_FIELDS if len(getattr(t, f)))
        getattr(stub, field).extend(getattr(t, field)[:2])  # two: a complex element takes two
    return stub


def _tensor_type(t: TensorProto) -> tuple:
    return (t.data_type, tuple(t.dims))


def _copy_fields(src, dst, skip: tuple[str, ...]) -> None:
    """Copy every set field of message `src` to `dst` except `skip`, without touching those."""
    for fd in src.DESCRIPTOR.fields:
        if fd.name in skip:
            continue
        value = getattr(src, fd.name)
        if fd.is_repeated:
            if len(value):
                getattr(dst, fd.name).extend(value)
        elif src.HasField(fd.name):
            if fd.message_type is not None:
                getattr(dst, fd.name).CopyFrom(value)
            else:
                setattr(dst, fd.name, value)
