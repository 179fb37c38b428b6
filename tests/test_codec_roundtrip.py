"""The .lpu codec keeps every field of a program: encode -> decode compares field by field.

Fields are enumerated with dataclasses.fields, so a field added to Program, Instruction, Access,
TileSlot, Binding or Target is covered without touching this test. The program accumulates (K is
split into several MXM passes, `acc` set), runs a host op and holds constants.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import lpuc
from lpuc.backends.lpu import decode_program, encode_program
from tests.kernels.oracle import IR_VERSION


def _stored(obj: object, f: dataclasses.Field) -> bool:
    """Program fields declared compare=False are per-object state the artifact does not store by
    design (compile timings, validation, the runtime's plan, where it was loaded from). Elsewhere
    every field counts (Target.raw is compare=False but is the whole chip description)."""
    return f.compare or not isinstance(obj, lpuc.Program)


def _model() -> onnx.ModelProto:
    """Softmax(x @ W) with K = 400 (several K tiles on tsp-v1), and Det on the host."""
    w = np.random.default_rng(7).standard_normal((400, 48)).astype(np.float32)
    f = TensorProto.FLOAT
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["h"]),
            helper.make_node("Softmax", ["h"], ["y"], axis=-1),
            helper.make_node("Relu", ["m"], ["r"]),
            helper.make_node("Det", ["r"], ["d"]),
        ],
        "codec",
        [helper.make_tensor_value_info("x", f, [8, 400]), helper.make_tensor_value_info("m", f, [4, 3, 3])],
        [helper.make_tensor_value_info("y", f, [8, 48]), helper.make_tensor_value_info("d", f, [4])],
        [numpy_helper.from_array(w, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=IR_VERSION)


@pytest.fixture(scope="module", params=["fp16", "fp32"])
def program(request) -> lpuc.Program:
    return lpuc.compile(_model(), target="tsp-v1", precision=request.param)


def assert_same(a: object, b: object, where: str) -> None:
    """a and b equal in every dataclass field, recursively; arrays equal in dtype, shape and bits."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
    if dataclasses.is_dataclass(a):
        for f in dataclasses.fields(a):
            if _stored(a, f):
                assert_same(getattr(a, f.name), getattr(b, f.name), f"{where}.{f.name}")
    elif isinstance(a, np.ndarray):
        assert (a.dtype, a.shape) == (b.dtype, b.shape), where
        assert a.tobytes() == b.tobytes(), f"{where}: contents differ"
    elif isinstance(a, Mapping):
        assert sorted(a) == sorted(b), f"{where}: keys {sorted(a)} != {sorted(b)}"
        for key in sorted(a):
            assert_same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), f"{where}: length {len(a)} != {len(b)}"
        for k, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{k}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def test_program_accumulates_and_has_host_ops(program):
    assert any(i.opcode == "mxm.mm" and i.attrs.get("from_acc") for i in program.instructions)
    assert any(i.opcode == "host.kernel" for i in program.instructions)
    assert program.consts


def test_every_field_survives_the_round_trip(program):
    data = encode_program(program)
    decoded = decode_program(data)
    assert_same(program, decoded, "program")
    assert bytes(encode_program(decoded)) == data


def test_comparison_sees_a_dropped_attribute(program):
    """The field-by-field check fails on the fault it exists for: a lost `from_acc` attribute."""
    k = next(k for k, i in enumerate(program.instructions) if i.attrs.get("from_acc"))
    instructions = list(program.instructions)
    attrs = {key: v for key, v in instructions[k].attrs.items() if key != "from_acc"}
    instructions[k] = dataclasses.replace(instructions[k], attrs=attrs)
    with pytest.raises(AssertionError, match=r"instructions\[\d+\]\.attrs"):
        assert_same(program, dataclasses.replace(program, instructions=instructions), "program")
