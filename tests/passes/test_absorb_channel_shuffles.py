"""absorb_channel_shuffles: a channel shuffle (Reshape, Transpose, Reshape) before per-channel ops and
a Conv disappears into the constants around it; numerics against onnxruntime."""

from __future__ import annotations

import numpy as np
from onnx import helper

from lpuc.passes.absorb_channel_shuffles import absorb_channel_shuffles
from tests.passes.helpers import assert_matches_onnxruntime, imported, model, ops, rand, run_pass

C, G = 16, 4


def _shufflenet_unit(second_reader: bool = False):
    """conv -> relu -> shuffle (4 groups) -> depthwise conv (+bias) -> per-channel scale -> grouped
    1x1 conv: ShuffleNet's unit. `second_reader`: the shuffled value is also a graph output."""
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c"]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Reshape", ["r", "split"], ["s"]),
        helper.make_node("Transpose", ["s"], ["t"], perm=[0, 2, 1, 3, 4]),
        helper.make_node("Reshape", ["t", "merged"], ["u"]),
        helper.make_node("Conv", ["u", "wd", "bd"], ["d"], group=C, pads=[1, 1, 1, 1]),
        helper.make_node("Mul", ["d", "k"], ["m"]),
        helper.make_node("Conv", ["m", "wg"], ["y"], group=G),
    ]
    inits = {
        "w1": rand(C, 3, 1, 1, seed=1),
        "split": np.array([1, G, C // G, 6, 6], np.int64),
        "merged": np.array([1, C, 6, 6], np.int64),
        "wd": rand(C, 1, 3, 3, seed=2),
        "bd": rand(C, seed=3),
        "k": rand(C, 1, 1, seed=4),
        "wg": rand(8, C // G, 1, 1, seed=5),
    }
    outputs = {"y": [1, 8, 6, 6], **({"u": [1, C, 6, 6]} if second_reader else {})}
    return model(nodes, {"x": [1, 3, 6, 6]}, outputs, inits)


def test_shuffle_disappears_into_the_weights():
    m = _shufflenet_unit()
    g = run_pass(absorb_channel_shuffles, imported(m))
    assert ops(g) == ["Conv", "Relu", "Conv", "Mul", "Conv"]
    depthwise, last = g.nodes[2], g.nodes[4]
    assert depthwise.inputs[0] == "r" and depthwise.attr("group") == C
    assert last.attr("group") == 1 and g.values[last.inputs[1]].shape == (8, C, 1, 1)
    program = assert_matches_onnxruntime(m, {"x": rand(1, 3, 6, 6, seed=6)})
    kept = assert_matches_onnxruntime(
        m, {"x": rand(1, 3, 6, 6, seed=6)}, disable_passes=("absorb_channel_shuffles",)
    )
    assert program.summary["cycles"] < kept.summary["cycles"]


def test_a_shuffled_value_read_elsewhere_stays():
    m = _shufflenet_unit(second_reader=True)
    g = run_pass(absorb_channel_shuffles, imported(m))
    assert "Transpose" in ops(g)
    assert_matches_onnxruntime(m, {"x": rand(1, 3, 6, 6, seed=7)})


def test_a_depthwise_conv_with_a_channel_multiplier_reads_the_unshuffled_channels():
    """Group = C with two output channels per input channel: not per channel (its output channels
    are not the shuffled ones), so it absorbs the shuffle as a dense Conv over all channels."""
    nodes = [
        helper.make_node("Reshape", ["x", "split"], ["s"]),
        helper.make_node("Transpose", ["s"], ["t"], perm=[0, 2, 1, 3, 4]),
        helper.make_node("Reshape", ["t", "merged"], ["u"]),
        helper.make_node("Conv", ["u", "w"], ["y"], group=C, pads=[1, 1, 1, 1]),
    ]
    inits = {
        "split": np.array([1, G, C // G, 5, 5], np.int64),
        "merged": np.array([1, C, 5, 5], np.int64),
        "w": rand(2 * C, 1, 3, 3, seed=8),
    }
    m = model(nodes, {"x": [1, C, 5, 5]}, {"y": [1, 2 * C, 5, 5]}, inits)
    g = run_pass(absorb_channel_shuffles, imported(m))
    assert ops(g) == ["Conv"] and g.nodes[0].attr("group") == 1 and g.nodes[0].inputs[0] == "x"
    assert_matches_onnxruntime(m, {"x": rand(1, C, 5, 5, seed=9)})
