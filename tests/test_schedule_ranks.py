"""Scheduler priorities (upward_ranks): the ops of a weight-stationary group (an LW and the MMs that
stream row tiles past its weights) run in order on one plane, so an op's path to the end goes through
the group's next op: ranks fall along a group, and what its first MM reads is wanted before what its
last one reads."""

from __future__ import annotations

import pytest
from onnx import helper

from lpuc.lowering import lower
from lpuc.passes.pipeline import PassContext, run_pipeline
from lpuc.schedule import scheduler
from lpuc.schedule.dependencies import dependencies
from lpuc.schedule.scheduler import plane_order_successors, upward_ranks
from lpuc.target import load_target
from tests.passes.helpers import imported, model, rand


def _tall_product():
    """[2000, 64] @ [64, 64] + Relu: the rows are shared among the planes as weight groups of
    several MMs each, and the Relu of each tile is a map of its own."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Relu", ["m"], ["y"])]
    return model(nodes, {"x": [2000, 64]}, {"y": [2000, 64]}, {"w": rand(64, 64, seed=1)})


def test_ranks_fall_along_each_weight_group():
    target = load_target("tsp-v1")
    graph = run_pipeline(imported(_tall_product()), PassContext(target, "fp16"))
    program = lower(graph, target, "fp16")
    rank = upward_ranks(program, dependencies(program), target)
    items: dict[int, list[int]] = {}
    for op in program.ops:
        if op.group >= 0:
            items.setdefault(op.group, []).append(op.id)
    groups = [ids for ids in items.values() if sum(program.ops[i].opcode == "mxm.mm" for i in ids) > 1]
    assert groups  # the product does run as groups of several MMs
    for ids in groups:
        ranks = [rank[i] for i in ids]
        assert all(a > b for a, b in zip(ranks, ranks[1:])), ranks


def _lowered(nodes, inputs, outputs, inits, precision):
    target = load_target("tsp-v1")
    graph = run_pipeline(imported(model(nodes, inputs, outputs, inits)), PassContext(target, precision))
    return lower(graph, target, precision)


def test_plane_order_follows_accumulation_chains_but_not_k_split_parts():
    """An accumulation chain (K in chunks summed in one plane) runs LW, MM, LW, MM... in order: each op's
    successor is the next. The chains of a K-split product's parts run side by side and get none."""
    product = [helper.make_node("MatMul", ["x", "w"], ["y"])]
    # fp32 never splits K: [64, 640] @ [640, 64] is one chain of four 160-row K chunks.
    chained = _lowered(product, {"x": [64, 640]}, {"y": [64, 64]}, {"w": rand(640, 64, seed=2)}, "fp32")
    mxm = [op.id for op in chained.ops if op.unit_class.startswith("MXM")]
    assert len(mxm) == 8 and len({chained.ops[i].chain for i in mxm}) == 1
    successor = plane_order_successors(chained.ops)
    assert [successor.get(i) for i in mxm] == [*mxm[1:], None]
    # One 128-row product over K = 3072 in fp16 is split into parts that run on several planes.
    split = _lowered(product, {"x": [128, 3072]}, {"y": [128, 320]}, {"w": rand(3072, 320, seed=3)}, "fp16")
    parts = {op.chain for op in split.ops if op.attrs.get("k_part")}
    assert len(parts) > 1
    successor = plane_order_successors(split.ops)
    assert not any(split.ops[i].chain in parts for i in successor)


def test_chains_of_a_tall_product_are_ranked_in_waves_over_the_planes():
    """More accumulation chains than planes, each over rows of its own: chain j's last op is
    followed by chain j + planes's first (they share a plane), so the first wave's inputs rank
    higher. Chains over the same rows (N chunks of a short product) get no such successor."""
    product = [helper.make_node("MatMul", ["x", "w"], ["y"])]
    tall = _lowered(product, {"x": [1536, 640]}, {"y": [1536, 64]}, {"w": rand(640, 64, seed=4)}, "fp16")
    chains: dict[int, list[int]] = {}
    for op in tall.ops:
        if op.chain >= 0:
            chains.setdefault(op.chain, []).append(op.id)
    ordered = [chains[c] for c in sorted(chains)]
    assert len(ordered) == 8  # 192-row segments (lpuc.lowering.plane_rows)
    successor = plane_order_successors(tall.ops, 4)
    for before, after in zip(ordered, ordered[4:]):
        assert successor[before[-1]] == after[0]
    assert all(chain[-1] not in successor for chain in ordered[4:])
    assert plane_order_successors(tall.ops).keys().isdisjoint(chain[-1] for chain in ordered)
    rank = upward_ranks(tall, dependencies(tall), load_target("tsp-v1"))
    assert min(rank[c[0]] for c in ordered[:4]) > max(rank[c[0]] for c in ordered[4:])
    # Five N chunks of one 64-row segment: five chains over the same rows.
    wide = _lowered(product, {"x": [64, 640]}, {"y": [64, 1600]}, {"w": rand(640, 1600, seed=5)}, "fp16")
    shared = {op.chain for op in wide.ops if op.chain >= 0}
    assert len(shared) > 4
    assert plane_order_successors(wide.ops, 4) == plane_order_successors(wide.ops)


def test_a_waves_quantize_maps_rank_above_its_chains_in_their_own_order():
    """int8 1536x3200x64: eight 192-row chains of ten K slabs in two waves over the four planes, each
    chain reading tiles its quantize maps write. Each wave's maps rank above every op of that wave's
    chains (so all are placed before the chains' weight loads), and keep the order the paths gave
    them."""
    product = [helper.make_node("MatMul", ["x", "w"], ["y"])]
    tall = _lowered(product, {"x": [1536, 3200]}, {"y": [1536, 64]}, {"w": rand(3200, 64, seed=4)}, "int8")
    target = load_target("tsp-v1")
    preds = dependencies(tall)
    rank = upward_ranks(tall, preds, target)
    chains: dict[int, list[int]] = {}
    for op in tall.ops:
        if op.chain >= 0:
            chains.setdefault(op.chain, []).append(op.id)
    ordered = [chains[c] for c in sorted(chains)]
    assert len(ordered) == 8
    writers = {w.buf: op.id for op in tall.ops if op.opcode == "vxm.map" for w in op.writes}
    for wave in (ordered[:4], ordered[4:]):
        ops = [i for chain in wave for i in chain]
        maps = sorted({writers[tall.ops[i].reads[0].buf] for i in ops if tall.ops[i].opcode == "mxm.mm"})
        assert maps and min(rank[m] for m in maps) > max(rank[i] for i in ops)
    # Without the lift (the ranks of the paths alone), the last wave's later K slabs' maps rank below
    # its chains; the lift keeps the maps' order.
    lifted = list(rank)
    plain = _ranks_without_the_lift(tall, preds, target)
    ops = [i for chain in ordered[4:] for i in chain]
    maps = sorted({writers[tall.ops[i].reads[0].buf] for i in ops if tall.ops[i].opcode == "mxm.mm"})
    assert min(plain[m] for m in maps) < max(plain[i] for i in ops)
    assert sorted(maps, key=lambda m: plain[m]) == sorted(maps, key=lambda m: lifted[m])


def test_a_float_waves_maps_keep_the_ranks_of_their_paths():
    """fp16 Relu then 1536x3200x64: the same waves, each chain reading tiles a Relu map writes (fp16).
    Only quantize maps (1-byte results) are lifted: a float build's maps keep their paths' ranks
    (lifted, DenseNet-121 fp16's BatchNorm/ReLU maps cost 350,713 -> 353,191 cycles)."""
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("MatMul", ["r", "w"], ["y"])]
    tall = _lowered(nodes, {"x": [1536, 3200]}, {"y": [1536, 64]}, {"w": rand(3200, 64, seed=4)}, "fp16")
    target = load_target("tsp-v1")
    preds = dependencies(tall)
    chains: dict[int, list[int]] = {}
    for op in tall.ops:
        if op.chain >= 0:
            chains.setdefault(op.chain, []).append(op.id)
    assert len(chains) == 8  # two waves over the four planes
    writers = {w.buf: op.id for op in tall.ops if op.opcode == "vxm.map" for w in op.writes}
    read = {op.reads[0].buf for op in tall.ops if op.opcode == "mxm.mm"}
    assert read and read <= writers.keys()  # the chains read what the Relu maps write
    assert upward_ranks(tall, preds, target) == _ranks_without_the_lift(tall, preds, target)


def _ranks_without_the_lift(program, preds, target) -> list[int]:
    """upward_ranks with scheduler._maps_ahead_of_their_wave switched off: the paths' ranks alone."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(scheduler, "_maps_ahead_of_their_wave", lambda program, rank, planes: None)
        return upward_ranks(program, preds, target)
