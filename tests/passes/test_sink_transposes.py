"""sink_transposes: transposes carried past layout-agnostic ops, cancelled in pairs, absorbed by
Im2Col, and emitted once where an op needs the real layout."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from lpuc.passes.lower_conv import lower_conv
from lpuc.passes.sink_transposes import sink_transposes
from tests.passes.helpers import assert_matches_onnxruntime, imported, model, ops, rand, run_pass


def _conv_chain(skip_from_input: bool = False):
    """conv -> relu -> conv (+ residual) -> relu: the shape of a ResNet block."""
    w1, w2 = rand(8, 4, 3, 3, seed=1), rand(8, 8, 3, 3, seed=2)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "skip" if skip_from_input else "c1"], ["s"]),
        helper.make_node("Relu", ["s"], ["y"]),
    ]
    inputs = {"x": [1, 4, 6, 6]}
    if skip_from_input:
        inputs["skip"] = [1, 8, 6, 6]
    inits = {"w1": w1, "w2": w2, "b1": rand(8, seed=3)}
    return model(nodes, inputs, {"y": [1, 8, 6, 6]}, inits)


def test_transposes_between_convolutions_disappear():
    lowered = run_pass(lower_conv, imported(_conv_chain()))
    assert ops(lowered).count("Transpose") >= 2
    sunk = run_pass(sink_transposes, lowered)
    # The relu, the second Im2Col and the residual Add run channels-last: only the output is transposed.
    assert ops(sunk).count("Transpose") == 1
    assert sunk.nodes[-1].op == "Transpose" and sunk.nodes[-1].outputs == ("y",)
    im2cols = [n for n in sunk.nodes if n.op == "Im2Col"]
    assert [n.attr("channels_last", 0) for n in im2cols] == [0, 1]


def test_numerics_unchanged():
    m = _conv_chain()
    feeds = {"x": rand(1, 4, 6, 6, seed=4)}
    with_pass = assert_matches_onnxruntime(m, feeds)
    without = assert_matches_onnxruntime(m, feeds, disable_passes=("sink_transposes",))
    assert with_pass.summary["instructions_by_opcode"].get("sxm.kernel", 0) < without.summary[
        "instructions_by_opcode"
    ].get("sxm.kernel", 0)
    assert with_pass.summary["cycles"] < without.summary["cycles"]


def test_runtime_operand_in_the_original_layout_materializes_once():
    lowered = run_pass(lower_conv, imported(_conv_chain(skip_from_input=True)))
    sunk = run_pass(sink_transposes, lowered)
    add = next(n for n in sunk.nodes if n.op == "Add" and "skip" in n.inputs)
    producer = next(n for n in sunk.nodes if add.inputs[0] in n.outputs)
    assert producer.op == "Transpose"  # c2 is emitted in NCHW right before the Add that needs it
    assert_matches_onnxruntime(
        _conv_chain(skip_from_input=True), {"x": rand(1, 4, 6, 6, seed=5), "skip": rand(1, 8, 6, 6, seed=6)}
    )


def test_inverse_transposes_cancel():
    nodes = [
        helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]),
        helper.make_node("Mul", ["t", "k"], ["m"]),
        helper.make_node("Transpose", ["m"], ["u"], perm=[0, 3, 1, 2]),
        helper.make_node("Relu", ["u"], ["y"]),
    ]
    k = rand(5, seed=7)  # broadcast over the last axis of t: channel scale, moved to axis 1 of x
    m = model(nodes, {"x": [2, 5, 3, 4]}, {"y": [2, 5, 3, 4]}, {"k": k})
    sunk = run_pass(sink_transposes, imported(m))
    assert ops(sunk) == ["Mul", "Relu"]
    scale = sunk.values[sunk.nodes[0].inputs[1]].const
    assert scale.shape == (1, 5, 1, 1)
    np.testing.assert_array_equal(scale.reshape(-1), k)
    assert_matches_onnxruntime(m, {"x": rand(2, 5, 3, 4, seed=8)})


def test_nothing_to_do():
    m = model([helper.make_node("Relu", ["x"], ["y"])], {"x": [2, 3]}, {"y": [2, 3]})
    graph = imported(m)
    assert ops(run_pass(sink_transposes, graph)) == ops(graph)


def test_a_transposed_graph_output_keeps_its_name():
    m = model([helper.make_node("Transpose", ["x"], ["y"], perm=[1, 0])], {"x": [2, 3]}, {"y": [3, 2]})
    sunk = run_pass(sink_transposes, imported(m))
    assert ops(sunk) == ["Transpose"] and sunk.nodes[0].outputs == ("y",)
    assert_matches_onnxruntime(m, {"x": rand(2, 3, seed=9)})


def test_pointwise_convolution_reads_channels_last_rows_for_free():
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["y"]),  # 1x1
    ]
    inits = {"w1": rand(8, 4, 3, 3, seed=10), "w2": rand(16, 8, 1, 1, seed=11)}
    m = model(nodes, {"x": [1, 4, 5, 5]}, {"y": [1, 16, 5, 5]}, inits)
    sunk = run_pass(sink_transposes, run_pass(lower_conv, imported(m)))
    assert ops(sunk).count("Im2Col") == 1  # only the 3x3 convolution gathers windows
    assert "Reshape" in ops(sunk)
    assert_matches_onnxruntime(m, {"x": rand(1, 4, 5, 5, seed=12)})


def _depthwise_chain(stride: int, bias: bool):
    """conv 1x1 -> relu -> depthwise 3x3 (group = channels) -> relu -> conv 1x1: a MobileNet block."""
    c = 16
    dw_inputs = ["r1", "wd", "bd"] if bias else ["r1", "wd"]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", dw_inputs, ["d"], group=c, pads=[1, 1, 1, 1], strides=[stride, stride]),
        helper.make_node("Relu", ["d"], ["r2"]),
        helper.make_node("Conv", ["r2", "w2"], ["y"]),
    ]
    size = 24 // stride
    inits = {"w1": rand(c, 4, 1, 1, seed=1), "wd": rand(c, 1, 3, 3, seed=2), "w2": rand(8, c, 1, 1, seed=3)}
    if bias:
        inits["bd"] = rand(c, seed=4)
    return model(nodes, {"x": [1, 4, 24, 24]}, {"y": [1, 8, size, size]}, inits)


@pytest.mark.parametrize("stride, bias", [(1, True), (2, False)])
def test_depthwise_conv_runs_channels_last(stride, bias):
    """A depthwise Conv between convolutions runs channels-last (lpuc DepthwiseConv, one weight
    vector per tap): no Transpose to NCHW and back, and its VXM kernel cut into row slabs. Numerics
    match onnxruntime; switched off (channels_last_depthwise) it stays an NCHW Conv."""
    m = _depthwise_chain(stride, bias)
    sunk = run_pass(sink_transposes, run_pass(lower_conv, imported(m)))
    (dw,) = [n for n in sunk.nodes if n.op == "DepthwiseConv"]
    assert ops(sunk).count("Transpose") == 1 and "Conv" not in ops(sunk)  # only the output's
    assert sunk.values[dw.inputs[1]].shape == (9, 16)
    feeds = {"x": rand(1, 4, 24, 24, seed=5)}
    program = assert_matches_onnxruntime(m, feeds)
    slabs = [i for i in program.instructions if i.attrs.get("kernel") == "DepthwiseConv"]
    assert len(slabs) > 1 and all(i.attrs["attrs"].get("slab") for i in slabs)
    whole = assert_matches_onnxruntime(m, feeds, disable_passes=("row_slabs",))
    assert len([i for i in whole.instructions if i.attrs.get("kernel") == "DepthwiseConv"]) == 1
    off = assert_matches_onnxruntime(m, feeds, disable_passes=("channels_last_depthwise",))
    assert any(i.attrs.get("kernel") == "Conv" for i in off.instructions)
    assert not any(i.attrs.get("kernel") == "DepthwiseConv" for i in off.instructions)
    assert program.summary["cycles"] < off.summary["cycles"]


@pytest.mark.parametrize("size, kernel, stride", [(23, 3, 2), (10, 2, 2), (12, 3, 2)])
def test_ceil_mode_max_pool_becomes_end_pads(size, kernel, stride):
    """A channels-last MaxPool with ceil_mode 1 (MTCNN's) gets the extra windows as end pads, which
    never win a max: ceil_mode 0, so lowering cuts it into row slabs. Numerics match onnxruntime."""
    out = -(-(size - kernel) // stride) + 1
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"]),
        helper.make_node(
            "MaxPool", ["c"], ["y"], kernel_shape=[kernel] * 2, strides=[stride] * 2, ceil_mode=1
        ),
    ]
    m = model(nodes, {"x": [1, 3, size, size]}, {"y": [1, 8, out, out]}, {"w": rand(8, 3, 1, 1, seed=1)})
    sunk = run_pass(sink_transposes, run_pass(lower_conv, imported(m)))
    (pool,) = [n for n in sunk.nodes if n.op == "MaxPool"]
    assert pool.domain and pool.attr("ceil_mode") == 0
    extra = (out - 1) * stride + kernel - size
    assert pool.attr("pads") == [0, 0, extra, extra]
    assert_matches_onnxruntime(m, {"x": rand(1, 3, size, size, seed=2)})
