"""fuse_softmax: a scaled (and padding-masked) last-axis Softmax becomes one row-wise lpuc.FusedSoftmax;
checked against onnxruntime on the original model."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from lpuc.passes.fuse_elementwise import fuse_elementwise
from lpuc.passes.fuse_softmax import fuse_softmax, match_softmaxes
from lpuc.passes.legalize_broadcast import legalize_broadcast
from tests.passes.helpers import assert_matches_onnxruntime, imported, model, ops, rand, run_pass

_N = helper.make_node
# [batch, heads, queries, keys]: 4 x 100 = 400 rows, two 320-row slabs on tsp-v1.
SCORES = [1, 4, 100, 16]


def scaled_softmax_model(mask_shape: list[int] | None, mask_output: bool = False):
    nodes = [_N("Mul", ["s", "scale"], ["scaled"], "scale")]
    inputs = {"s": SCORES}
    if mask_shape is not None:
        nodes.append(_N("Add", ["scaled", "mask"], ["masked"], "mask"))
        inputs["mask"] = mask_shape
    nodes.append(_N("Softmax", [nodes[-1].output[0]], ["y"], "softmax", axis=-1))
    outputs = {"y": SCORES, **({"scaled": SCORES} if mask_output else {})}
    return model(nodes, inputs, outputs, {"scale": np.array(0.125, np.float32)})


def _prepared(m):
    """The graph as fuse_softmax sees it in the pipeline: prologues fused, broadcasts legalized."""
    return run_pass(legalize_broadcast, run_pass(fuse_elementwise, imported(m)))


def _feeds(mask_shape):
    feeds = {"s": rand(*SCORES) * 4}
    if mask_shape is not None:
        # A padding mask: 0 for kept keys, -10000 for padded ones (the last three).
        keys = np.where(np.arange(16) >= 13, -1e4, 0).astype(np.float32)
        feeds["mask"] = np.ascontiguousarray(np.broadcast_to(keys, mask_shape))
    return feeds


@pytest.mark.parametrize("mask_shape", [None, [1, 1, 1, 16]], ids=["scale", "scale+padding-mask"])
def test_scaled_masked_softmax_becomes_one_op(mask_shape):
    m = scaled_softmax_model(mask_shape)
    graph = _prepared(m)
    assert ops(graph) == ["Fused" if mask_shape else "Mul", "Softmax"]
    fused = run_pass(fuse_softmax, graph)
    assert ops(fused) == ["FusedSoftmax"]
    node = fused.nodes[0]
    assert node.domain == "lpuc" and node.outputs == ("y",)
    assert [s["op"] for s in node.attrs["expr"]] == ["Mul"] + (["Add"] if mask_shape else [])
    assert node.inputs[0] == "s"
    program = assert_matches_onnxruntime(m, _feeds(mask_shape))
    kernels = [i.attrs.get("kernel") for i in program.instructions if i.opcode == "vxm.kernel"]
    assert kernels == ["FusedSoftmax", "FusedSoftmax"]  # one instruction per 320-row slab


def test_fused_softmax_is_cheaper_than_map_then_softmax():
    m = scaled_softmax_model([1, 1, 1, 16])
    feeds = _feeds([1, 1, 1, 16])
    fused = assert_matches_onnxruntime(m, feeds)
    plain = assert_matches_onnxruntime(m, feeds, disable_passes=("fuse_softmax",))
    assert "vxm.map" not in fused.summary["instructions_by_opcode"]
    assert fused.summary["cycles"] < plain.summary["cycles"]


def test_full_size_mask_is_refused():
    # A mask per score (a causal mask expanded over heads) would stream again in every softmax pass.
    m = scaled_softmax_model(SCORES)
    graph = _prepared(m)
    fusions, refusals = match_softmaxes(graph)
    assert fusions == []
    assert [(r.anchor, r.reason) for r in refusals] == [
        ("softmax", "operand 'mask' of 'scale+mask' is not one row or a scalar")
    ]
    assert ops(run_pass(fuse_softmax, graph)) == ops(graph)
    assert_matches_onnxruntime(m, _feeds(SCORES))


def test_prologue_read_elsewhere_is_refused():
    m = scaled_softmax_model(None, mask_output=True)
    fusions, refusals = match_softmaxes(_prepared(m))
    assert fusions == []
    assert refusals[0].reason == "intermediate 'scaled' is a graph output"


def test_softmax_over_another_axis_is_refused():
    m = scaled_softmax_model(None)
    m.graph.node[-1].attribute[0].i = 2
    fusions, refusals = match_softmaxes(_prepared(m))
    assert fusions == [] and "is not over the last axis" in refusals[0].reason
    assert_matches_onnxruntime(m, _feeds(None))
