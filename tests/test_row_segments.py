"""Row segments (lpuc/lowering/row_segments.py): the values a row-wise VXM kernel reads and writes
are cut into short tiles, so each segment is its own instruction and the consumers start on the first
one. Checked: which values and sizes the rule picks, that a 128-token GPT still matches onnxruntime
with its LayerNorms and softmaxes in segments (and maps reading other tilings window by window).
What the segments are worth in cycles is measured by the bench's ablation (BERT-base and GPT-2-shaped),
not asserted here: it depends on how the weight loads they add balance against the earlier starts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lpuc
from lpuc.lowering.row_segments import _matrix_rows, _segment
from tests import zoo
from tests.models import export, ort_run
from tests.similarity import cosine

CONTEXT = 128


@pytest.mark.parametrize(
    "shape, expected",
    [
        ((1, 128, 768), 64),  # a sequence of 128 tokens: halves
        ((1, 256, 768), 64),  # quarters
        ((1, 12, 128, 128), None),  # already 5 tiles, 5 instructions side by side
        ((1, 32, 768), None),  # shorter than the least segment
        ((1, 96, 768), None),  # odd halves would be shorter than the least segment
        ((768,), None),  # one row
    ],
)
def test_segment_sizes(shape, expected):
    assert _segment(shape, 320, 64) == expected


@pytest.mark.parametrize(
    "shape, expected",
    [
        ((1, 12, 128, 128), 128),  # 320-row tiles would cut heads 2, 4, 7, 9: one head per tile
        ((1, 12, 64, 64), None),  # 320 rows are 5 whole heads already
        ((1, 128, 128), None),  # one matrix
        ((1, 2, 320, 320), None),  # a matrix per tile already
    ],
)
def test_matrix_rows(shape, expected):
    assert _matrix_rows(shape, 320) == expected


@pytest.fixture(scope="module")
def gpt128(tmp_path_factory):
    path = tmp_path_factory.mktemp("gpt128") / "gpt128.onnx"
    ids = torch.zeros(1, CONTEXT, dtype=torch.int64)
    return export(zoo.GPT(context=CONTEXT), (ids,), path, input_names=["ids"], opset_version=14)


def _kernel_rows(program, kernel: str) -> list[int]:
    """Rows each instruction of `kernel` writes (per lane tile)."""
    rows = []
    for ins in program.instructions:
        if ins.opcode == "vxm.kernel" and ins.attrs["kernel"] == kernel:
            rows.append(sum(a.nrows for a in ins.writes) // max(1, len({a.lane0 for a in ins.writes})))
    return rows


def test_gpt_in_segments_matches_onnxruntime(gpt128):
    ids = np.random.default_rng(0).integers(0, 96, (1, CONTEXT)).astype(np.int64)
    (want,) = ort_run(gpt128, {"ids": ids})
    # (Its 4-head softmaxes would take in their scale-and-mask prologue, passes/fuse_softmax: kept
    # apart here, so that the map's tiles and its fusion into Q @ K^T are what is checked.)
    # (pair_heads off: its softmaxes are two heads' rows side by side, SegmentedSoftmax.)
    apart = ["fuse_softmax", "pair_heads"]
    program = lpuc.compile(gpt128, precision="fp32", host_fallback=False, disable_passes=apart)
    whole = lpuc.compile(
        gpt128, precision="fp32", host_fallback=False, disable_passes=[*apart, "row_segments"]
    )
    for p in (program, whole):
        (got,) = p.run({"ids": ids}).values()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    # 5 LayerNorms over 128 tokens: two segments each; the softmaxes' 4 heads of 128 rows one each
    # (320-row tiles would cut the third head in two).
    assert _kernel_rows(program, "LayerNormalization") == [64] * 10
    assert _kernel_rows(program, "Softmax") == [128] * 8
    assert _kernel_rows(whole, "LayerNormalization") == [128] * 5
    assert _kernel_rows(whole, "Softmax") == [320, 192] * 2
    # Scores, mask map and softmax in the same per-head tiles: the scale-and-mask map (and its
    # constant mask, stored in those tiles) fuses into each head's Q @ K^T as its epilogue.
    assert _mask_maps(program) == (8, 0)
    assert _mask_maps(whole)[1] > 0


def _mask_maps(program) -> tuple[int, int]:
    """(MMs with the attention mask map as epilogue, mask maps left as VXM maps)."""
    fused = sum(
        ins.opcode == "mxm.mm" and ins.attrs.get("epilogue", {}).get("node", "").endswith("/Where")
        for ins in program.instructions
    )
    apart = sum(ins.opcode == "vxm.map" and ins.node.endswith("/Where") for ins in program.instructions)
    return fused, apart


def test_residual_add_shares_the_layernorm_segments(tmp_path):
    """The residual add before a LayerNorm has 64-row segments (the LayerNorm's input), so the
    product it adds gets them too: where K is split (fp16), the map summing each segment's partial
    results is joined with the bias and residual add (one VXM pass per segment, no separate add
    map). Matches onnxruntime in fp16."""
    path = tmp_path / "gpt384.onnx"
    ids = torch.zeros(1, CONTEXT, dtype=torch.int64)
    export(zoo.GPT(width=384, heads=6, context=CONTEXT), (ids,), path, input_names=["ids"], opset_version=14)
    ids = np.random.default_rng(0).integers(0, 96, (1, CONTEXT)).astype(np.int64)
    (want,) = ort_run(path, {"ids": ids})
    program = lpuc.compile(path, precision="fp16", host_fallback=False)
    (got,) = program.run({"ids": ids}).values()
    assert cosine(got, want) >= 0.999
    sums = [i for i in program.instructions if i.opcode == "vxm.map" and i.node.endswith("/MatMul")]
    assert len(sums) >= 8 and {i.work.vectors for i in sums[:-1]} == {64}  # the last: the LM head's
    assert not any(i.opcode == "vxm.map" and i.node.endswith("/Add_1") for i in program.instructions)
    # The split MMs write partial results in tiles of their own: their rows stay whole (128, as the
    # GELU output they read), the result's segments do not halve them (and double the weight loads).
    mms = [i for i in program.instructions if i.opcode == "mxm.mm" and i.node.endswith("mlp.2/MatMul")]
    assert {i.work.vectors for i in mms} == {128}
    apart = lpuc.compile(path, precision="fp16", host_fallback=False, disable_passes=["map_chains"])
    assert any(i.opcode == "vxm.map" and i.node.endswith("/Add_1") for i in apart.instructions)


def test_layernorm_segments_read_their_own_constant_copies(gpt128):
    """The two segments of a LayerNorm run side by side: the second reads its scale and bias rows
    from a copy of its own (constant_replicas), not from the slots the first holds ports on."""
    program = lpuc.compile(gpt128, precision="fp16", host_fallback=False)
    shared = lpuc.compile(gpt128, precision="fp16", host_fallback=False, disable_passes=["constant_replicas"])
    for p, apart in ((program, True), (shared, False)):
        segments = _layernorm_constants(p)
        assert len(segments) == 5 and all(len(keys) == 2 and all(keys) for keys in segments.values())
        assert all(not (first & second) == apart for first, second in segments.values())


def _layernorm_constants(program) -> dict[str, list[set[str]]]:
    """LayerNorm node -> the constant tiles (content keys) each of its instructions reads."""
    out: dict[str, list[set[str]]] = {}
    for ins in program.instructions:
        if ins.opcode == "vxm.kernel" and ins.attrs["kernel"] == "LayerNormalization":
            tiles = [program.tiles[r.buf] for r in ins.reads]
            out.setdefault(ins.node, []).append({t.const_key for t in tiles if t.kind == "const"})
    return out
