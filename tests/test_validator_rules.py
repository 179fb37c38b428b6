"""One mutation per validator rule, each of which a wrong program could slip through before; and a
randomized test: hundreds of dependency-breaking mutations of compiled programs, every one refused."""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

import lpuc
from lpuc import cost
from lpuc.backends.lpu import decode_program, encode_program
from lpuc.cli import main
from lpuc.errors import ArtifactError, ScheduleError
from lpuc.program import Program
from lpuc.schedule.validate_costs import booked_ports, streams_of
from lpuc.schedule.validator import validate
from tests.mutate import cost_of, refusals, resummarized, with_instruction, without_instruction
from tests.onnx_builders import single_op_model


@pytest.fixture(scope="module")
def mlp(mlp_onnx) -> Program:
    """tsp-mini splits K into 32-wide chunks: every layer accumulates."""
    return lpuc.compile(mlp_onnx, target="tsp-mini", precision="fp32")


@pytest.fixture(scope="module")
def mlp_maps(mlp_onnx) -> Program:
    """The mlp with its maps apart from the MMs (mxm_epilogues would fuse every one of them)."""
    return lpuc.compile(mlp_onnx, target="tsp-mini", precision="fp32", disable_passes=["mxm_epilogues"])


@pytest.fixture(scope="module")
def residual(small_residual_onnx) -> Program:
    """80 activation rows on 64-lane tiles: weight groups with two MMs (one installs, one reuses)."""
    return lpuc.compile(small_residual_onnx, target="tsp-mini", precision="fp16")


def _index(p: Program, pred) -> int:
    return next(k for k, i in enumerate(p.instructions) if pred(i))


def test_compiled_programs_are_valid(mlp, residual):
    validate(mlp)
    validate(residual)


def _chains(p: Program) -> list[list]:
    """Accumulation chains: per plane, in id order, each MM that does not continue a kept sum starts one."""
    chains: dict[str, list[list]] = {}
    for i in p.instructions:
        if i.opcode == "mxm.mm":
            runs = chains.setdefault(i.unit, [])
            if not i.attrs.get("from_acc"):
                runs.append([])
            runs[-1].append(i)
    return [c for runs in chains.values() for c in runs]


def test_accumulating_matmul_moved_after_the_consumer_of_its_result(mlp):
    last = max((c[-1] for c in _chains(mlp) if len(c) > 1), key=lambda i: i.id)
    consumer = next(
        i for i in mlp.instructions if i.id > last.id and any(r.buf == last.writes[0].buf for r in i.reads)
    )
    moved = with_instruction(mlp, last.id, start=consumer.end + 10_000)
    problems = refusals(moved)
    assert any(f"instruction {consumer.id} " in p and "comes before it" in p for p in problems), problems


@pytest.mark.parametrize("step", ["first", "middle", "last"])
def test_dropped_accumulation_step(mlp, step):
    chain = max(_chains(mlp), key=len)
    assert len(chain) >= 3
    dropped = {"first": chain[0], "middle": chain[1], "last": chain[-1]}[step]
    problems = refusals(without_instruction(mlp, dropped.id))
    expected = {
        "first": "no MM kept a sum there",
        "middle": "does not match",
        "last": "discards the partial sum",
    }[step]
    assert any(expected in p for p in problems), problems


def test_partial_sum_continued_on_another_plane(tmp_path):
    """The middle MM of a chain moved to another plane does not continue the sum held there, and the
    last MM on its own plane no longer continues where the sum stopped."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(400, 16)).astype(np.float32)  # K 400: three fp16 chunks on tsp-v1
    path = tmp_path / "mm.onnx"  # 1280 rows: a chain per plane (no K split)
    onnx.save(
        single_op_model("MatMul", [("x", [1280, 400])], [("y", [1280, 16])], initializers={"w": w}), path
    )
    program = lpuc.compile(path, precision="fp16")
    chain = max(_chains(program), key=len)
    assert len(chain) == 3
    other = next(u for u in ("MXM0", "MXM1", "MXM2", "MXM3") if u != chain[1].unit)
    problems = refusals(with_instruction(program, chain[1].id, units=(other, *chain[1].units[1:])))
    # The other plane holds no sum, or its own chain's: either way not this one.
    assert any("no MM kept a sum there" in p or "does not match" in p for p in problems), problems


def test_plane_taking_rows_while_another_mm_streams(mlp):
    """An MM holds its plane while its rows stream in: a second MM starting then is refused."""
    chain = max(_chains(mlp), key=len)
    a, b = chain[0], chain[1]
    moved = with_instruction(mlp, b.id, start=a.start + 1)
    assert any(f"unit {a.unit} double-booked" in p for p in refusals(moved))


@pytest.fixture(scope="module")
def shared_weights(tmp_path_factory) -> Program:
    """80 rows past one 32x16 weight tile on tsp-mini (64-row tiles): a group of two MMs, the first
    installs the weights, the second reuses them."""
    rng = np.random.default_rng(0)
    model = single_op_model(
        "MatMul",
        [("x", [80, 32])],
        [("y", [80, 16])],
        initializers={"w": rng.normal(size=(32, 16)).astype(np.float32)},
    )
    path = tmp_path_factory.mktemp("shared") / "mm.onnx"
    onnx.save(model, path)
    return lpuc.compile(path, target="tsp-mini", precision="fp32")


def test_dropped_installing_matmul(shared_weights):
    k = _index(shared_weights, lambda i: i.opcode == "mxm.mm" and i.attrs["install"])
    group = shared_weights.instructions[k].attrs["group"]
    assert any(
        i.attrs.get("group") == group and not i.attrs.get("install") for i in shared_weights.instructions
    )
    problems = refusals(without_instruction(shared_weights, k))
    assert any("weights of another group" in p or "no installed weights" in p for p in problems), problems


def test_installing_the_weights_of_another_group(residual):
    k = _index(residual, lambda i: i.opcode == "mxm.lw")
    other = next(i.attrs["group"] for i in residual.instructions if i.opcode == "mxm.lw" and i.id != k)
    changed = with_instruction(residual, k, attrs={**residual.instructions[k].attrs, "group": other})
    assert any("not its own group's" in p for p in refusals(changed))


def test_dropped_only_writer_of_a_model_output(mlp):
    out_tiles = {t for b in mlp.outputs for t in b.tiles}
    k = _index(mlp, lambda i: any(w.buf in out_tiles for w in i.writes))
    problems = refusals(without_instruction(mlp, k))
    assert any("no instruction writes" in p for p in problems), problems


def test_dropped_writer_of_part_of_a_tile(residual):
    """A reader whose window is only partly written (one of two lane blocks dropped) is refused."""
    readers = [i for i in residual.instructions if i.opcode in ("vxm.map", "mxm.mm")]  # (maps may be fused)
    writers = {w.buf: [] for i in readers for w in i.reads}
    for i in residual.instructions:
        for w in i.writes:
            if w.buf in writers and i.opcode == "mxm.mm":
                writers[w.buf].append(i)
    victim = next(ws[0] for ws in writers.values() if ws)
    problems = refusals(without_instruction(residual, victim.id))
    assert any("no earlier instruction writes" in p or "accumulation" in p for p in problems), problems


def test_duration_shorter_than_the_cost_model(mlp):
    k = _index(mlp, lambda i: i.opcode == "mxm.mm")
    assert any("shorter than the" in p for p in refusals(with_instruction(mlp, k, duration=1)))
    one_less = with_instruction(mlp, k, duration=mlp.instructions[k].duration - 1)
    assert any("shorter than the" in p for p in refusals(one_less))


def test_kernel_booking_fewer_alus_must_last_longer(tmp_path):
    """A kernel may hold fewer VXM ALUs than keep pace with its stream, at least one, if it lasts as
    long as its ops take on those (lpuc.cost.held_alus)."""
    # 256-wide rows (a tree each), in 64-row segments: 1,600 ops over 256 vectors, seven ALUs keep pace.
    model = single_op_model("Softmax", [("x", [128, 256])], [("y", [128, 256])])
    onnx.save(model, tmp_path / "softmax.onnx")
    p = lpuc.compile(tmp_path / "softmax.onnx", precision="fp16")
    k = _index(p, lambda i: i.opcode == "vxm.kernel")
    ins = p.instructions[k]
    assert ins.work.alu_ops == 1600 and ins.work.vectors == 256
    alus = [u for u in ins.units if u.startswith("VXM")]
    assert len(alus) == 7  # alone on the VXM: as many as keep pace
    fewer = tuple(u for u in ins.units if u not in alus[4:])  # four of them
    problems = refusals(with_instruction(p, k, units=fewer))
    assert any("shorter than the" in q for q in problems), problems
    longer = ins.duration + 1600 // 4 - 256  # ops on four ALUs: 400 cycles, not 256
    validate(resummarized(with_instruction(p, k, units=fewer, duration=longer)))
    none = tuple(u for u in ins.units if u not in alus)
    assert any("needs 1 VXM ALUs, books 0" in q for q in refusals(with_instruction(p, k, units=none)))


def test_map_booking_fewer_alus_than_its_ops_must_wrap(tmp_path):
    """A map may hold fewer ALUs than its chain of ops, at least one, if it lasts as long as its ops
    wrapped over those take (lpuc.cost.held_alus)."""
    model = single_op_model("Gelu", [("x", [128, 320])], [("y", [128, 320])], approximate="tanh")
    onnx.save(model, tmp_path / "gelu.onnx")
    p = lpuc.compile(tmp_path / "gelu.onnx", precision="fp16")
    k = _index(p, lambda i: i.opcode == "vxm.map")
    ins = p.instructions[k]
    alus = [u for u in ins.units if u.startswith("VXM")]
    assert len(alus) == ins.work.alu_ops > 4  # alone: one ALU per op
    fewer = tuple(u for u in ins.units if u not in alus[4:])  # four of them
    problems = refusals(with_instruction(p, k, units=fewer))
    assert any("shorter than the" in q for q in problems), problems
    reads, writes = streams_of(p, ins)
    ports = booked_ports(p, ins, reads, writes)
    wrapped = cost.duration(p.target, ins.opcode, ins.unit, ins.work, reads, writes, "fp16", False, ports, 4)
    assert wrapped > ins.duration
    validate(resummarized(with_instruction(p, k, units=fewer, duration=wrapped)))


def test_work_record_that_does_not_match_the_windows(mlp):
    k = _index(mlp, lambda i: i.opcode == "mxm.mm")
    ins = mlp.instructions[k]
    cheaper = dataclasses.replace(ins.work, vectors=ins.work.vectors // 2)
    assert any("does not match" in p for p in refusals(with_instruction(mlp, k, work=cheaper)))


def test_mm_macs_may_be_fewer_than_its_window_never_more(mlp):
    """Constant rows a pass adds are no model work (lpuc.ir.model_work): an MM may count fewer MACs
    than its window streams, which only lowers the MXM bound (the ratio gets worse), never more."""
    k = _index(mlp, lambda i: i.opcode == "mxm.mm")
    ins = mlp.instructions[k]
    more = dataclasses.replace(ins.work, macs=ins.work.macs + 1)
    assert any("does not match" in p for p in refusals(with_instruction(mlp, k, work=more)))
    fewer = resummarized(
        with_instruction(mlp, k, work=dataclasses.replace(ins.work, macs=ins.work.macs // 2))
    )
    validate(fewer)
    assert fewer.summary["macs"] < mlp.summary["macs"]
    assert fewer.summary["lower_bound_cycles"]["mxm"] <= mlp.summary["lower_bound_cycles"]["mxm"]


def test_map_issued_on_an_mxm_unit(mlp_maps):
    k = _index(mlp_maps, lambda i: i.opcode == "vxm.map")
    ins = mlp_maps.instructions[k]
    moved = with_instruction(mlp_maps, k, units=("MXM0", *ins.units[1:]))
    assert any("not a VXM unit" in p for p in refusals(moved))


def test_missing_mem_port_and_stream_bookings(mlp_maps):
    k = _index(mlp_maps, lambda i: i.opcode == "vxm.map")
    ins = mlp_maps.instructions[k]
    no_ports = with_instruction(mlp_maps, k, units=tuple(u for u in ins.units if not u.startswith("MEM")))
    assert any("none of the ports of MEM slice" in p for p in refusals(no_ports))
    streamless = tuple(u for u in ins.units if not u.startswith(("SE", "SW")))
    no_streams = with_instruction(mlp_maps, k, units=streamless)
    assert any("streams, books 0" in p for p in refusals(no_streams))


def test_oversubscribed_mem_port(mlp_maps):
    """Two instructions holding the same bank port of a slice at the same time."""
    maps = [i for i in mlp_maps.instructions if i.opcode == "vxm.map"]
    a, b = [i for i in maps if any(u.startswith("MEM") for u in i.units)][:2]
    port = next(u for u in a.units if u.startswith("MEM"))
    clash = with_instruction(mlp_maps, b.id, units=(*b.units, port), start=a.start)
    assert any(f"unit {port} double-booked" in p for p in refusals(clash))


def test_edited_summary_is_refused_at_load(mlp, tmp_path):
    edited = dataclasses.replace(mlp)
    edited.summary = {**mlp.summary, "cycles": mlp.summary["cycles"] // 2}
    with pytest.raises(ArtifactError, match="summary does not match the instructions.*cycles"):
        decode_program(encode_program(edited))
    path = tmp_path / "edited.lpu"
    path.write_bytes(encode_program(edited))
    result = CliRunner().invoke(main, ["report", str(path)])
    assert result.exit_code == 2
    assert result.output.strip().startswith("error: ") and result.output.strip().count("\n") == 0


def test_edited_duration_is_refused_at_load(mlp_maps):
    k = _index(mlp_maps, lambda i: i.opcode == "vxm.map")
    shorter = resummarized(with_instruction(mlp_maps, k, duration=mlp_maps.instructions[k].duration - 1))
    with pytest.raises(ArtifactError, match="shorter than the"):
        decode_program(encode_program(shorter))


# -- randomized ------------------------------------------------------------------------------------
def _mutations(p: Program, rng: random.Random, count: int):
    """Dependency-breaking mutations: (description, mutated program)."""
    ins = p.instructions
    out_tiles = {t for b in p.outputs for t in b.tiles}
    producers = []  # (consumer index, producer) for every read of a computed window
    for k, i in enumerate(ins):
        for r in i.reads:
            if p.tiles[r.buf].kind in ("temp", "output"):
                for w in ins:
                    if w.id < i.id and any(x.buf == r.buf for x in w.writes):
                        producers.append((k, w))
    needed = [
        k
        for k, i in enumerate(ins)
        if any(
            w.buf in out_tiles or any(w.buf == r.buf for j in ins if j.id > i.id for r in j.reads)
            for w in i.writes
        )
    ]
    accs = [k for k, i in enumerate(ins) if i.opcode == "mxm.mm" and "k" in i.attrs]
    kinds = ["move", "drop_writer", "drop_acc", "shorten"]
    for _ in range(count):
        kind = rng.choice(kinds)
        if kind == "move":
            k, producer = rng.choice(producers)
            start = max(0, producer.end - rng.randint(1, producer.duration))
            yield f"move {k} to {start}, before {producer.id} ends", with_instruction(p, k, start=start)
        elif kind == "drop_writer":
            k = rng.choice(needed)
            yield f"drop writer {k}", without_instruction(p, k)
        elif kind == "drop_acc":
            k = rng.choice(accs)
            yield f"drop matmul {k}", without_instruction(p, k)
        else:
            k = rng.randrange(len(ins))
            need = cost_of(p, ins[k])
            yield f"shorten {k}", with_instruction(p, k, duration=rng.randint(1, need - 1))


def test_every_random_dependency_breaking_mutation_is_refused(mlp, residual):
    rng = random.Random(20261129)
    accepted = []
    total = 0
    for program in (mlp, residual):
        for what, mutated in _mutations(program, rng, 120):
            total += 1
            try:
                validate(mutated)
            except ScheduleError:
                continue
            accepted.append(what)
    assert total >= 200
    assert not accepted, f"{len(accepted)} of {total} wrong programs accepted: {accepted[:5]}"


def test_outputs_still_match_after_legal_rescheduling(mlp, mlp_onnx):
    """Sanity check for the mutation helpers: an unmodified round trip runs the same."""
    from tests.models import random_feeds

    feeds = random_feeds(mlp_onnx)
    again = decode_program(encode_program(mlp))
    np.testing.assert_array_equal(again.run(feeds)["y"], mlp.run(feeds)["y"])


def test_streams_derived_again_after_a_tile_is_replaced_in_place(mlp):
    """streams_of keeps what it derived per instruction with the tiles it came from: a tile replaced
    in place (a new TileSlot) is seen, so the validator never rules on stale streams."""
    program = dataclasses.replace(mlp)  # a copy of our own (nothing derived yet)
    program.tiles = list(program.tiles)
    ins = next(i for i in program.instructions if i.opcode == "mxm.mm")
    before = streams_of(program, ins)
    assert streams_of(program, ins) is before  # derived once
    buf = ins.reads[0].buf
    program.tiles[buf] = dataclasses.replace(program.tiles[buf], dtype="float16")  # half the words a row
    after = streams_of(program, ins)
    assert after != before
    assert after == streams_of(dataclasses.replace(program), ins)  # what a fresh program derives
