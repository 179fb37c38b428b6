"""ONNX backend node test cases, generated offline by onnx's own loader, and the scoring rule.

The conformance set is every node case whose graph inputs, outputs and initializers are tensors of
float32/16, bfloat16, int8-64, uint8 or bool (sequence/optional-typed cases and other dtypes are
out of scope for the chip).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto

IN_SCOPE_DTYPES = frozenset(
    {
        TensorProto.FLOAT,
        TensorProto.FLOAT16,
        TensorProto.BFLOAT16,
        TensorProto.BOOL,
        TensorProto.INT8,
        TensorProto.INT16,
        TensorProto.INT32,
        TensorProto.INT64,
        TensorProto.UINT8,
    }
)


def _graph_dtypes(model: onnx.ModelProto) -> set:
    kinds: set = set()
    for v in list(model.graph.input) + list(model.graph.output):
        if v.type.HasField("tensor_type"):
            kinds.add(v.type.tensor_type.elem_type)
        else:
            kinds.add(v.type.WhichOneof("value"))
    kinds.update(t.data_type for t in model.graph.initializer)
    return kinds


def in_scope(model: onnx.ModelProto) -> bool:
    return _graph_dtypes(model) <= IN_SCOPE_DTYPES


@functools.lru_cache(maxsize=1)
def all_cases() -> tuple:
    from onnx.backend.test.loader import load_node_model_tests

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return tuple(sorted(load_node_model_tests(), key=lambda c: c.name))


@functools.lru_cache(maxsize=1)
def conformance_cases() -> tuple:
    return tuple(c for c in all_cases() if in_scope(c.model))


def case_by_name(name: str):
    return next(c for c in conformance_cases() if c.name == name)


def normalize(value):
    if isinstance(value, onnx.TensorProto):
        return onnx.numpy_helper.to_array(value)
    return value


def assert_outputs_match(case, outputs: Sequence[np.ndarray], expected: Sequence) -> None:
    """onnx's own comparison (shape, dtype, allclose with the case's tolerances)."""
    from onnx.backend.test.runner import Runner

    Runner.assert_similar_outputs(
        [normalize(e) for e in expected], list(outputs), rtol=case.rtol, atol=case.atol
    )


class Crash(Exception):
    """A case failed with an exception that is neither a clean lpuc error nor a numeric mismatch."""


def run_case(case, backend) -> None:
    """Run one case through `backend` the way onnx's runner does; raise on any difference.

    Clean failures raise LpucError (compile/run refused with a message) or AssertionError (wrong
    numbers); anything else is re-raised as Crash.
    """
    from lpuc.errors import LpucError

    try:
        rep = backend.prepare(case.model, "CPU")
        for inputs, expected in case.data_sets:
            with np.errstate(all="ignore"):
                outputs = rep.run([normalize(x) for x in inputs])
            assert_outputs_match(case, outputs, expected)
    except (LpucError, AssertionError):
        raise
    except Exception as e:  # noqa: BLE001 - classify, keep the cause
        raise Crash(f"{type(e).__name__}: {e}") from e
