"""Read an ONNX model from disk (with external data) and bring it to one canonical opset."""

from __future__ import annotations

import os
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from lpuc.errors import ModelError, UnsupportedError

# The opset every model is converted to when onnx's version converter can do it. Models that
# already import a newer opset keep theirs: the kernels implement every version's semantics.
CANONICAL_OPSET = 21


def load_model(source: str | os.PathLike | onnx.ModelProto) -> onnx.ModelProto:
    """Load and check a model; every failure is a one-line ModelError naming the file."""
    if isinstance(source, onnx.ModelProto):
        model, where = source, source.graph.name or "<model>"
    else:
        path = Path(source)
        where = str(path)
        if path.is_dir():
            raise ModelError(f"{where}: is a directory, not an ONNX model file")
        if not path.is_file():
            raise ModelError(f"{where}: no such file")
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
    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, UnicodeDecodeError) as e:  # bad bytes in a name: not UTF-8
        raise ModelError(f"{where}: invalid ONNX model ({_first_line(e)})") from None
    if model.functions:
        model = onnx.inliner.inline_local_functions(model)
    return model


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
    version = default_opset(model)
    if version == 0 or version >= CANONICAL_OPSET:
        return model
    try:
        converted = onnx.version_converter.convert_version(model, CANONICAL_OPSET)
        onnx.checker.check_model(converted)
    except Exception:  # noqa: BLE001 - the converter raises many types; keeping the model is safe
        return model
    # Some adapters change the graph's signature (e.g. Scan 8 -> 9 drops the batch axis): refuse those.
    if _signature(converted) != _signature(model):
        return model
    return converted


def _signature(model: onnx.ModelProto) -> list[bytes]:
    return [
        v.type.SerializeToString(deterministic=True)
        for v in list(model.graph.input) + list(model.graph.output)
    ]


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
