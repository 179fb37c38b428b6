"""sink_transposes: transposes carried past layout-agnostic ops, cancelled in pairs, absorbed by
Im2Col, and emitted once where an op needs the real layout."""

from __future__ import annotations

import numpy as np
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
