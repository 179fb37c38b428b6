"""lpuc.frontend.wire: large raw-data weights read from a file's bytes without parsing them."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from lpuc.frontend.wire import split_weights

BIG = (300, 301)  # above the limit used below
LIMIT = 1000


def _model(*tensors: TensorProto) -> onnx.ModelProto:
    nodes = [helper.make_node("Identity", [t.name], [f"out{k}"]) for k, t in enumerate(tensors)]
    outputs = [
        helper.make_tensor_value_info(f"out{k}", t.data_type, list(t.dims)) for k, t in enumerate(tensors)
    ]
    graph = helper.make_graph(nodes, "g", [], outputs, list(tensors))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def _array(dtype, shape=BIG, seed=0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * 50).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.int8, np.uint16, np.float64, np.bool_])
def test_large_weights_come_apart_as_views_with_the_same_values(dtype):
    big, small = _array(dtype), _array(np.float32, (3, 4), seed=1)
    model = _model(numpy_helper.from_array(big, "w"), numpy_helper.from_array(small, "b"))
    data = model.SerializeToString()
    light, weights = split_weights(data, LIMIT)
    assert sorted(weights) == ["w"]
    expected = numpy_helper.to_array(model.graph.initializer[0])
    assert weights["w"].dtype == expected.dtype and weights["w"].shape == expected.shape
    np.testing.assert_array_equal(weights["w"], expected)
    assert not weights["w"].flags.writeable  # as onnx's to_array of raw data gives it
    # The rest of the model is parsed as it was; the big tensor keeps name, dims and type.
    w, b = light.graph.initializer
    assert (w.name, list(w.dims), w.data_type, len(w.raw_data)) == (
        "w",
        list(BIG),
        model.graph.initializer[0].data_type,
        16,
    )
    assert b == model.graph.initializer[1]
    assert light.graph.node == model.graph.node and light.opset_import == model.opset_import


def test_packed_and_unpacked_dims_give_the_same_shape():
    tensor = numpy_helper.from_array(_array(np.float32), "w")
    model = _model(tensor)
    packed = model.SerializeToString()
    # The same tensor with dims written one varint field each (proto2 style, also valid proto3).
    raw = tensor.SerializeToString()
    dims_field = b"".join(bytes([1 << 3 | 0]) + _varint(d) for d in BIG)
    assert split_weights(packed, LIMIT)[1]["w"].shape == BIG
    unpacked = packed.replace(raw, _without_packed_dims(raw, tensor) + dims_field)
    assert unpacked != packed
    assert split_weights(unpacked, LIMIT)[1]["w"].shape == BIG


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        out.append((value & 0x7F) | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


def _without_packed_dims(raw: bytes, tensor: TensorProto) -> bytes:
    copy = TensorProto()
    copy.CopyFrom(tensor)
    del copy.dims[:]
    return copy.SerializeToString()


def test_what_the_walk_does_not_handle_is_left_to_protobuf():
    big = numpy_helper.from_array(_array(np.float32), "w")
    typed = helper.make_tensor("t", TensorProto.FLOAT, BIG, _array(np.float32).ravel().tolist())
    short = numpy_helper.from_array(_array(np.float32), "s")
    short.raw_data = short.raw_data[:-4]
    light, weights = split_weights(_model(big, typed, short).SerializeToString(), LIMIT)
    assert sorted(weights) == ["w"]  # typed data and raw data of the wrong size stay in the model
    assert light.graph.initializer[1] == typed and light.graph.initializer[2] == short
    twice = numpy_helper.from_array(_array(np.float32, seed=2), "w")
    assert split_weights(_model(big, twice).SerializeToString(), LIMIT) is None  # a name given twice
    data = _model(big).SerializeToString()
    assert split_weights(data[:-7], LIMIT) is None  # truncated
    assert split_weights(b"\x00\x01garbage", LIMIT) is None
