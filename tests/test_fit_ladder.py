"""The fit ladder's lean step (lpuc.api._build_fitting): before a lookup table leaves SRAM, the
program is lowered without the strategies that spend SRAM (api.SRAM_HUNGRY) and its constants fill
most slices, leaving whole tiles' room on a few (lpuc.schedule.placement.scratch_budgets)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import lpuc
from lpuc.api import SRAM_HUNGRY
from lpuc.frontend.importer import import_model
from lpuc.lowering import lower_with
from lpuc.passes.legalize_broadcast import legalize_broadcast, read_repeated
from lpuc.passes.pipeline import PassContext, run_pipeline
from lpuc.schedule.packing import pack_constants
from lpuc.schedule.placement import place_tiles, scratch_budgets
from lpuc.target import load_target
from tests.models import ort_run
from tests.onnx_builders import embedding_matmul_model
from tests.similarity import cosine


def _embed_matmul(path, vocab: int, rows: int) -> None:
    onnx.save(embedding_matmul_model(vocab, ids_shape=(rows,)), str(path))


def test_table_stays_in_sram_when_constants_leave_room_on_a_few_slices(tmp_path):
    # tsp-mini (8 slices of 1024 words) in fp16: the 3616 x 64 table and w take 7360 of the 8192
    # words. Spread evenly, they leave about 100 words per slice, and no 256-word tile of the fp32
    # product fits in any: without the lean step the table goes to the host.
    path = tmp_path / "embed.onnx"
    _embed_matmul(path, 3616, 128)
    program = lpuc.compile(path, target="tsp-mini", precision="fp16")
    s = program.summary
    assert s["host_tables"] == {} and s["host_ops"] == 0 and s["options"]["fit"] == "lean"
    assert s["sram_peak_bytes"] <= s["sram_capacity_bytes"]
    feeds = {"ids": np.random.default_rng(1).integers(0, 3616, 128).astype(np.int64)}
    (got,) = program.run(feeds).values()
    (expected,) = ort_run(path, feeds)
    assert cosine(got, expected) >= 0.9999
    np.testing.assert_allclose(got, expected, rtol=0.02, atol=0.05)  # fp16 table and weights

    # (input_gathers off too: it would gather the table on the host before the run instead)
    skipped = sorted(SRAM_HUNGRY | {"input_gathers"})
    without_step = lpuc.compile(path, target="tsp-mini", precision="fp16", disable_passes=skipped)
    assert without_step.summary["host_tables"] == {"embed/table_fp16": 3616 * 64 * 2}
    assert without_step.summary["options"]["fit"] == "host_tables"
    assert program.summary["cycles"] < without_step.summary["cycles"]  # no PCIe round trip


def _masked_scores(path, heads: int = 2, seq: int = 80) -> None:
    """BERT's additive mask: scores [1, H, S, S] + Where(mask [1, 1, S, S] > 0, 0, -1e4)."""
    graph = helper.make_graph(
        [
            helper.make_node("Greater", ["mask", "zero"], ["keep"]),
            helper.make_node("Where", ["keep", "zero", "minus"], ["bias"]),
            helper.make_node("Add", ["scores", "bias"], ["masked"]),
            helper.make_node("Softmax", ["masked"], ["y"], axis=-1),
        ],
        "g",
        [
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, heads, seq, seq]),
            helper.make_tensor_value_info("mask", TensorProto.FLOAT, [1, 1, seq, seq]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, heads, seq, seq])],
        [
            numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
            numpy_helper.from_array(np.array(-1e4, np.float32), "minus"),
        ],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), str(path))


def test_mask_over_heads_is_read_per_head_not_expanded(tmp_path):
    path = tmp_path / "masked.onnx"
    _masked_scores(path)
    graph = legalize_broadcast(import_model(onnx.load(path), "masked"))
    assert [n.op for n in graph.nodes].count("Expand") == 1  # by default: one copy per head
    lean = read_repeated(graph)
    assert "Expand" not in [n.op for n in lean.nodes]
    add = next(n for n in lean.nodes if n.op == "Add")
    assert add.inputs[1] == "bias"  # the [1, 1, S, S] mask itself

    rng = np.random.default_rng(4)
    mask = (rng.random((1, 1, 80, 80)) > 0.3).astype(np.float32)
    feeds = {"scores": rng.standard_normal((1, 2, 80, 80)).astype(np.float32), "mask": mask}
    (expected,) = ort_run(path, feeds)
    # tsp-mini tiles are 64 rows: the second head's rows start inside the mask's first tile.
    # inline_mask_selects off: the maps read the float32 mask itself, whose copies cost the SRAM.
    peak = {}
    for selects in ((), ("inline_mask_selects",)):
        for disabled in ((), ("expanded_broadcasts",)):
            skipped = selects + disabled
            program = lpuc.compile(path, target="tsp-mini", precision="fp32", disable_passes=skipped)
            (got,) = program.run(feeds).values()
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
            peak[skipped] = program.summary["sram_peak_bytes"]
    assert peak[("inline_mask_selects", "expanded_broadcasts")] < peak[("inline_mask_selects",)]


def _embed_then_layers(path, vocab: int, layers: int, width: int = 64) -> None:
    """ids [128] -> Gather(table [vocab, width]) -> `layers` MatMuls by [width, width], seeded."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Gather", ["table", "ids"], ["x0"], name="embed")]
    inits = [numpy_helper.from_array(rng.standard_normal((vocab, width)).astype(np.float32), "table")]
    for i in range(layers):
        nodes.append(helper.make_node("MatMul", [f"x{i}", f"w{i}"], [f"x{i + 1}"]))
        inits.append(numpy_helper.from_array(rng.standard_normal((width, width)).astype(np.float32), f"w{i}"))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [128])],
        [helper.make_tensor_value_info(f"x{layers}", TensorProto.FLOAT, [128, width])],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), str(path))


def test_lean_step_keeps_weights_off_the_slices_with_scratch_room(tmp_path):
    # The scratch slices hold the live data; a weight there would share their ports with it all run
    # long, the embedding table only while the Gather reads it at the start. On tsp-mini in fp16 the
    # table takes 4096 of the 8192 words and the 24 weights 3072: the table fills the scratch
    # slices' budgets (2 x 640 words) first, the weights the other slices.
    path = tmp_path / "embed_layers.onnx"
    _embed_then_layers(path, 2048, 24)
    target = load_target("tsp-mini")
    context = PassContext(target, "fp16", True, frozenset())
    graph = run_pipeline(import_model(onnx.load(path), "embed"), context)
    tiled = lower_with(read_repeated(graph), target, "fp16", True, "embed", frozenset(), SRAM_HUNGRY)
    packing = pack_constants(tiled, target.lanes)
    budget = scratch_budgets(tiled, target, packing)
    scratch = set(np.flatnonzero(budget < target.addresses_per_slice).tolist())
    assert scratch and len(scratch) < target.num_slices
    slice_of = place_tiles(tiled, target, packing=packing, scratch=True)
    table = {b.tensor for b in tiled.buffers if b.is_const and "table" in b.tensor}
    on_scratch = {b.tensor for b in tiled.buffers if b.is_const and slice_of[b.id] in scratch}
    assert len(table) == 1 and on_scratch == table


def test_scratch_room_holds_the_largest_tile_beside_a_typical_one():
    # BERT-base fp16 with stacked products: 24 tiles of 640 words (keys' transposes, live through
    # all of a layer's heads), half the words in 256-word halves. Room for the largest tile alone
    # left those transposes no slice to go to: the lean step failed.
    from lpuc.schedule.placement import scratch_room

    tiles = [640] * 24 + [512] * 145 + [256] * 1176 + [128] * 16
    assert scratch_room(tiles) >= 640 + 256
    assert scratch_room([256] * 10) >= 2 * 256  # equal tiles: two of them
    assert scratch_room([]) == 0
