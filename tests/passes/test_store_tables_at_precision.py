"""store_tables_at_precision: an fp16 build's Gather tables are stored in fp16 and widened by a Cast."""

from __future__ import annotations

import dataclasses

import numpy as np
from onnx import TensorProto, helper

from lpuc.passes.store_tables_at_precision import store_tables_at_precision
from tests.passes.helpers import CTX, imported, model, ops, rand

N = helper.make_node


def _embedding():
    m = model(
        [N("Gather", ["table", "ids"], ["y"], name="embed")],
        {"ids": [5]},
        {"y": [5, 8]},
        {"table": rand(16, 8)},
    )
    m.graph.input[0].type.tensor_type.elem_type = TensorProto.INT64
    return m


def test_fp16_build_gathers_from_an_fp16_table():
    g = imported(_embedding())
    out = store_tables_at_precision(g, dataclasses.replace(CTX, precision="fp16"))
    assert ops(out) == ["Gather", "Cast"]
    gather, cast = out.nodes
    assert gather.name == "embed"  # errors about its indices name the model's node
    table = out.values[gather.inputs[0]].const
    assert table.dtype == np.float16
    np.testing.assert_array_equal(table, g.values["table"].const.astype(np.float16))
    assert out.values[gather.outputs[0]].dtype == np.float16
    assert cast.outputs == ("y",) and out.values["y"].dtype == np.float32


def test_fp32_build_keeps_its_tables():
    g = imported(_embedding())
    assert store_tables_at_precision(g, dataclasses.replace(CTX, precision="fp32")) is g
