"""Node attributes <-> JSON, losslessly and deterministically (artifacts never hold pickles).

numpy arrays become {"ndarray": {"dtype", "shape", "b64"}}; ONNX subgraphs and type protos become
their deterministic protobuf bytes in base64.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import onnx

from lpuc.dtypes import dtype_from_name, dtype_name


def to_json(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        data = np.ascontiguousarray(value)
        return {
            "ndarray": {
                "dtype": dtype_name(data.dtype),
                "shape": list(data.shape),
                "b64": base64.b64encode(data.tobytes()).decode("ascii"),
            }
        }
    if isinstance(value, np.generic):
        return to_json(np.asarray(value))
    if isinstance(value, onnx.GraphProto):
        return {"graph": base64.b64encode(value.SerializeToString(deterministic=True)).decode("ascii")}
    if isinstance(value, onnx.TypeProto):
        return {"type_proto": base64.b64encode(value.SerializeToString(deterministic=True)).decode("ascii")}
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    raise TypeError(f"cannot store attribute value of type {type(value).__name__}")


def from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"ndarray"}:
            spec = value["ndarray"]
            raw = base64.b64decode(spec["b64"])
            return np.frombuffer(raw, dtype=dtype_from_name(spec["dtype"])).reshape(spec["shape"]).copy()
        if set(value) == {"graph"}:
            g = onnx.GraphProto()
            g.ParseFromString(base64.b64decode(value["graph"]))
            return g
        if set(value) == {"type_proto"}:
            t = onnx.TypeProto()
            t.ParseFromString(base64.b64decode(value["type_proto"]))
            return t
        return {k: from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_json(v) for v in value]
    return value
