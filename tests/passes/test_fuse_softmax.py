"""fuse_softmax: a scaled (and padding-masked) last-axis Softmax becomes one row-wise lpuc.FusedSoftmax;
checked against onnxruntime on the original model."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import helper

from lpuc.kernels.registry import KernelContext, run_kernel
from lpuc.passes.fuse_elementwise import fuse_elementwise
from lpuc.passes.fuse_softmax import causal_mask, fuse_softmax, match_softmaxes
from lpuc.passes.legalize_broadcast import legalize_broadcast
from lpuc.target import load_target
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
    assert kernels == ["FusedSoftmax"] * 4  # one instruction per head's 100 rows (lpuc.lowering.row_segments)


def test_fused_softmax_is_cheaper_than_map_then_softmax():
    m = scaled_softmax_model([1, 1, 1, 16])
    feeds = _feeds([1, 1, 1, 16])
    fused = assert_matches_onnxruntime(m, feeds)
    plain = assert_matches_onnxruntime(m, feeds, disable_passes=("fuse_softmax",))
    assert "vxm.map" not in fused.summary["instructions_by_opcode"]
    assert fused.summary["cycles"] < plain.summary["cycles"]


def test_full_size_mask_is_refused():
    # A mask per score computed at run time (a [B, 1, S, S] mask expanded over heads) would stream
    # again in every softmax pass.
    m = scaled_softmax_model(SCORES)
    graph = _prepared(m)
    fusions, refusals = match_softmaxes(graph)
    assert fusions == []
    assert [(r.anchor, r.reason) for r in refusals] == [
        ("softmax", "operand 'mask' of 'scale+mask' is not one row, a scalar or a causal mask")
    ]
    assert ops(run_pass(fuse_softmax, graph)) == ops(graph)
    assert_matches_onnxruntime(m, _feeds(SCORES))


# Square scores, [batch, heads, queries, keys]: 200 rows, one slab.
CAUSAL = [1, 2, 100, 100]
_UPPER = np.triu(np.ones((100, 100), bool), 1)  # the keys after each query


def causal_model(form: str, scores=CAUSAL):
    """A scaled softmax over causally masked scores, masked as a GPT or a BERT export masks them."""
    scale = np.array(0.125, np.float32)
    nodes = [_N("Mul", ["s", "scale"], ["scaled"], "scale")]
    if form.startswith("where"):  # torch masked_fill: Where(mask, -inf, scores) (GPT-2, tests/zoo.py)
        mask = _UPPER if form == "where" else np.tril(np.ones((100, 100), bool))  # where-tril: kept keys
        args = ["mask", "fill", "scaled"] if form == "where" else ["mask", "scaled", "fill"]
        nodes.append(_N("Where", args, ["masked"], "mask"))
        inits = {"scale": scale, "mask": mask, "fill": np.array(-np.inf, np.float32)}
    else:  # an additive bias: 0 for kept keys, -inf or the dtype's minimum for the others
        low = -np.inf if form == "add-inf" else np.finfo(np.float32).min
        bias = np.where(_UPPER, low, 0).astype(np.float32)
        nodes.append(_N("Add", ["scaled", "mask"], ["masked"], "mask"))
        inits = {"scale": scale, "mask": bias if form == "add-inf" else bias.reshape(1, 1, 100, 100)}
    nodes.append(_N("Softmax", ["masked"], ["y"], "softmax", axis=-1))
    return model(nodes, {"s": scores}, {"y": scores}, inits)


@pytest.mark.parametrize("form", ["where", "where-tril", "add-inf", "add-min"])
def test_causal_mask_is_generated_not_streamed(form):
    m = causal_model(form)
    fused = run_pass(fuse_softmax, _prepared(m))  # (run_pass gives the pass tsp-v1)
    assert ops(fused) == ["FusedSoftmax"]
    node = fused.nodes[0]
    assert node.inputs[:2] == ("s", "scale")
    assert node.attrs["triangles"] == {"2": 1}  # operand 2, the mask: on where key - query >= 1
    assert node.attrs["matrix_rows"] == 100
    feeds = {"s": rand(*CAUSAL) * 4}
    program = assert_matches_onnxruntime(m, feeds)
    plain = assert_matches_onnxruntime(m, feeds, disable_passes=("fuse_softmax",))
    kernels = [i for i in program.instructions if i.opcode == "vxm.kernel"]
    assert [i.attrs["attrs"]["row0"] for i in kernels] == [0, 100]  # two row segments
    # The mask's two values are read, never its 100 x 100 entries.
    mask_reads = [sum(a.nrows for a in i.reads[i.attrs["inputs"][2]["first"] :][:1]) for i in kernels]
    assert mask_reads == [1, 1]
    assert "vxm.map" not in program.summary["instructions_by_opcode"]
    # Fewer vectors stream than through the map and the softmax apart. (Not fewer cycles on this
    # small case any more: with the map cut into the softmax's row segments, the unfused map and
    # softmax pipeline segment by segment, 801 cycles against the fused kernels' 1062.)
    streamed = [sum(i.work.vectors for i in p.instructions) for p in (program, plain)]
    assert streamed[0] < streamed[1]


def test_causal_mask_finder():
    upper = np.where(_UPPER, -np.inf, 0).astype(np.float32)
    diagonal, values = causal_mask(upper, (2, 3, 100, 100))
    assert diagonal == 1 and values.tolist() == [-np.inf, 0.0]
    diagonal, values = causal_mask(np.tril(np.ones((8, 8), bool), -2), (8, 8))  # on: col - row >= -1
    assert diagonal == -1 and values.tolist() == [False, True]
    noise = upper.copy()
    noise[50, 3] = -np.inf
    assert causal_mask(noise, (1, 1, 100, 100)) is None  # not a triangle
    per_batch = np.stack([upper, np.where(np.triu(np.ones((100, 100), bool), 2), -np.inf, 0)])
    assert causal_mask(per_batch.astype(np.float32)[:, None], (2, 4, 100, 100)) is None  # matrices differ
    assert causal_mask(np.zeros((100, 100), np.float32), (1, 100, 100)) is None  # one value


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


def test_causal_mask_of_a_slab_inside_a_matrix():
    # The runtime hands the kernel row slabs: one starting at view row 320 is row 20 of head 3.
    m = causal_model("where", [1, 4, 100, 100])
    s = rand(1, 4, 100, 100) * 4
    session = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    (want,) = session.run(None, {"s": s})
    fusion = match_softmaxes(_prepared(causal_model("where")), load_target("tsp-v1"))[0][0]
    attrs = {**fusion.attrs, "row0": 320}
    slab = s.reshape(400, 100)[320:]
    ctx = KernelContext("FusedSoftmax", attrs, 1, 1, "lpuc")
    (got,) = run_kernel(ctx, [slab, np.float32(0.125), fusion.inputs[2], np.float32(-np.inf)])
    np.testing.assert_allclose(got, want.reshape(400, 100)[320:], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("heads", [8, 12])
def test_causal_mask_is_refused_when_its_slabs_would_queue_for_alus(heads):
    # 800 or 1200 rows: 3 or 4 slabs of 8 ALUs each (the prologue and the mask recomputed in each of
    # the three passes; two 100-wide rows share a vector's lane trees), more than tsp-v1's 16: the
    # map and the plain softmax stay.
    m = causal_model("where", [1, heads, 100, 100])
    graph = _prepared(m)
    fusions, refusals = match_softmaxes(graph, load_target("tsp-v1"))
    assert fusions == [] and "more VXM ALUs than its row slabs can share" in refusals[0].reason
    assert match_softmaxes(graph)[0] == []  # without a target: never generated
    assert_matches_onnxruntime(m, {"s": rand(1, heads, 100, 100) * 4})


def test_causal_mask_is_generated_when_its_slabs_fit_the_alus():
    # 400 rows: 2 slabs of 8 ALUs each fit tsp-v1's 16 side by side.
    m = causal_model("where", [1, 4, 100, 100])
    (fusion,), _ = match_softmaxes(_prepared(m), load_target("tsp-v1"))
    assert fusion.attrs["triangles"]
    program = assert_matches_onnxruntime(m, {"s": rand(1, 4, 100, 100) * 4})
    kernels = [i.attrs.get("kernel") for i in program.instructions if i.opcode == "vxm.kernel"]
    assert kernels and set(kernels) == {"FusedSoftmax"}
