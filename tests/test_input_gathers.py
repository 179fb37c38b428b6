"""Input-fed host gathers (lpuc.lowering.input_gathers): which tables the host gathers before the
run, what that costs end to end, and that the results match onnxruntime."""

from __future__ import annotations

import json
import zlib

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import lpuc
from lpuc.api import SRAM_HUNGRY, with_host_gathers
from lpuc.backends.lpu import _PREFIX, decode_program
from lpuc.backends.lpu_check import check_body
from lpuc.cli import random_inputs
from lpuc.errors import LpucError
from lpuc.frontend.importer import import_model
from lpuc.lowering import lower_with
from lpuc.lowering.input_gathers import InputGather, gather_on_host, input_fed_gathers
from lpuc.passes.pipeline import PassContext, run_pipeline
from lpuc.report import summary_text
from lpuc.schedule.build import build_program
from lpuc.target import load_target
from tests.models import ort_run
from tests.onnx_builders import embedding_matmul_model
from tests.similarity import assert_matches, cosine


def _pipeline(path, target, precision: str):
    graph = run_pipeline(
        import_model(onnx.load(path), "embed"), PassContext(target, precision, True, frozenset())
    )
    return graph, lower_with(graph, target, precision, True, "embed")


def _two_tables(path, vocab: int, cast_ids: bool) -> None:
    """Gather(words [vocab, 64], ids or Cast(ids)) + Gather(types [2, 64], type_ids) -> MatMul."""
    rng = np.random.default_rng(0)
    ids_type = TensorProto.INT32 if cast_ids else TensorProto.INT64
    nodes = [helper.make_node("Gather", ["types", "type_ids"], ["t"], name="types_gather")]
    if cast_ids:
        nodes.append(helper.make_node("Cast", ["ids"], ["ids64"], to=TensorProto.INT64))
    nodes += [
        helper.make_node("Gather", ["words", "ids64" if cast_ids else "ids"], ["w"], name="words_gather"),
        helper.make_node("Add", ["w", "t"], ["x"]),
        helper.make_node("MatMul", ["x", "k"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(rng.standard_normal((vocab, 64)).astype(np.float32), "words"),
        numpy_helper.from_array(rng.standard_normal((2, 64)).astype(np.float32), "types"),
        numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), "k"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [
            helper.make_tensor_value_info("ids", ids_type, [128]),
            helper.make_tensor_value_info("type_ids", TensorProto.INT64, [128]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [128, 64])],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), str(path))


def test_only_large_tables_indexed_by_a_model_input_are_gathered_on_the_host(tmp_path):
    target = load_target("tsp-v1")
    path = tmp_path / "two.onnx"
    _two_tables(path, 512, cast_ids=False)
    graph, tiled = _pipeline(path, target, "fp32")
    # The 2-row table is smaller than its 128 gathered rows: moving it would free no SRAM.
    assert input_fed_gathers(graph, tiled, target) == [InputGather("w", "ids", "words")]
    fed = gather_on_host(graph, input_fed_gathers(graph, tiled, target))
    assert fed.inputs == ["type_ids", "w"]  # ids only the host reads leave the chip's program
    assert "words" not in fed.values and "types" in fed.values

    # Ids computed on the chip (here a Cast) are not the host's before the run.
    _two_tables(path, 512, cast_ids=True)
    graph, tiled = _pipeline(path, target, "fp32")
    assert input_fed_gathers(graph, tiled, target) == []


def _forced(path, precision: str) -> lpuc.Program:
    """The input-gathers build of the ladder, on a model that fits anyway; through the artifact."""
    target = load_target("tsp-v1")
    graph, tiled = _pipeline(path, target, precision)
    gathers = input_fed_gathers(graph, tiled, target)
    assert gathers
    fed = lower_with(gather_on_host(graph, gathers), target, precision, True, "embed")
    program = with_host_gathers(build_program(fed, target, "embed", {"precision": precision}), graph, gathers)
    program.validate()
    return decode_program(program.to_bytes(), "<test>")


def test_end_to_end_time_counts_the_hosts_gather_and_the_rows_pcie_bytes(tmp_path):
    path = tmp_path / "embed.onnx"
    onnx.save(embedding_matmul_model(3616, ids_shape=(128,)), str(path))
    program = _forced(path, "fp16")
    s, target = program.summary, program.target
    assert s["host_gathers"] == {"embed/gather": "embed/table_fp16"}
    assert [(b.name, b.tiles) for b in program.inputs][0] == ("ids", ())  # the ids stay on the host
    assert [b.name for b in program.model_inputs] == ["ids"]
    rows = 128 * 64 * 2  # fp16 rows cross PCIe, not the 128 int64 ids
    assert s["model_io_bytes"] == {"to_chip": rows, "to_host": 128 * 64 * 4}
    h = target.host
    pcie = sum(h.pcie_latency_us * 1e-6 + n / (h.pcie_gbytes_per_s * 1e9) for n in (rows, 128 * 64 * 4))
    assert s["model_io_pcie_cycles"] == pytest.approx(pcie * target.clock_mhz * 1e6, abs=2)
    # The host reads the ids and the rows and writes the rows, one FLOP an element.
    host = (128 + 2 * 128 * 64) / (h.host_gflops * 1e9) + (128 * 8 + 2 * rows) / (h.host_gbytes_per_s * 1e9)
    assert s["host_gather_cycles"] == pytest.approx(host * target.clock_mhz * 1e6, abs=1)
    total = s["cycles"] + s["model_io_pcie_cycles"] + s["host_gather_cycles"]
    assert s["end_to_end_us"] == round(total / target.clock_mhz, 3)
    line = next(t for t in summary_text(s).splitlines() if "before the run" in t)
    assert "embed/table_fp16" in line and f"{s['host_gather_cycles'] / target.clock_mhz:.1f} us" in line


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_host_gathered_rows_match_onnxruntime(tmp_path, precision):
    path = tmp_path / "two.onnx"
    _two_tables(path, 3000, cast_ids=False)
    program = _forced(path, precision)
    assert len(program.summary["host_gathers"]) == 1  # the words; the 2 token types stay in SRAM
    rng = np.random.default_rng(3)
    feeds = {
        "ids": rng.integers(-3000, 3000, 128).astype(np.int64),
        "type_ids": rng.integers(0, 2, 128).astype(np.int64),
    }
    (expected,) = ort_run(path, feeds)
    for interpret in (False, True):
        (got,) = program.run(feeds, interpret=interpret).values()
        assert_matches(got, expected, precision, atol=1e-4)
    assert sorted(random_inputs(program, 0)) == ["ids", "type_ids"]  # what `lpuc run` feeds
    with pytest.raises(LpucError, match="outside"):
        program.run({**feeds, "ids": np.full(128, 3000, np.int64)})


def test_ladder_gathers_on_the_host_rather_than_round_trips_in_the_schedule(tmp_path):
    # tsp-mini in fp16 without the lean step: the table does not fit. Gathered by the host before
    # the run, no op waits on PCIe; as a host_tables Gather, one waits for ids out and rows back.
    path = tmp_path / "embed.onnx"
    onnx.save(embedding_matmul_model(3616, ids_shape=(128,)), str(path))
    fed = lpuc.compile(path, target="tsp-mini", precision="fp16", disable_passes=sorted(SRAM_HUNGRY))
    assert fed.summary["options"]["fit"] == "input_gathers" and fed.summary["host_ops"] == 0
    skipped = sorted(SRAM_HUNGRY | {"input_gathers"})
    tables = lpuc.compile(path, target="tsp-mini", precision="fp16", disable_passes=skipped)
    assert tables.summary["options"]["fit"] == "host_tables"
    assert fed.summary["cycles"] < tables.summary["cycles"]
    assert fed.summary["end_to_end_us"] < tables.summary["end_to_end_us"]
    feeds = {"ids": np.random.default_rng(1).integers(0, 3616, 128).astype(np.int64)}
    (got,) = fed.run(feeds).values()
    (expected,) = ort_run(path, feeds)
    assert cosine(got, expected) >= 0.999

    # With the lean step too, the shorter end to end wins (here lean: the host's gather costs more).
    both = lpuc.compile(path, target="tsp-mini", precision="fp16")
    assert both.summary["options"]["fit"] == "lean"
    assert both.summary["end_to_end_us"] <= fed.summary["end_to_end_us"]


def test_a_table_lowering_moved_to_host_memory_is_gathered_before_the_run_if_that_is_shorter(tmp_path):
    # tsp-mini: the 2048 x 64 fp32 table alone fills its 512 KiB, so lowering keeps it in host
    # memory and the plain step fits with a host Gather inside the schedule; gathered by the host
    # before the run instead, the chip waits for no host work and the end to end is shorter.
    path = tmp_path / "embed.onnx"
    onnx.save(embedding_matmul_model(2048, ids_shape=(1, 8)), str(path))
    fed = lpuc.compile(path, target="tsp-mini", precision="fp32")
    trip = lpuc.compile(path, target="tsp-mini", precision="fp32", disable_passes=["input_gathers"])
    assert trip.summary["options"]["fit"] == "plain" and trip.summary["host_ops"] == 1
    assert fed.summary["options"]["fit"] == "input_gathers" and fed.summary["host_ops"] == 0
    assert fed.summary["host_gathers"] and fed.summary["host_gather_cycles"] > 0
    assert fed.summary["cycles"] < trip.summary["cycles"]
    assert fed.summary["end_to_end_us"] <= trip.summary["end_to_end_us"]
    feeds = {"ids": np.array([[0, 2047, 5, 5, 1000, 7, 3, 2]], np.int64)}
    for interpret in (False, True):
        (got,) = fed.run(feeds, interpret=interpret).values()
        np.testing.assert_allclose(got, ort_run(path, feeds)[0], rtol=1e-4, atol=1e-5)


def test_an_edited_artifact_cannot_drop_an_inputs_tiles(tmp_path):
    path = tmp_path / "embed.onnx"
    onnx.save(embedding_matmul_model(3616, ids_shape=(128,)), str(path))
    body = json.loads(zlib.decompress(_program_section(_forced(path, "fp32").to_bytes())))
    check_body(body)
    body["host_gathers"] = []  # the ids, bound to no tiles, would be silently ignored
    with pytest.raises(ValueError, match="tiles or host ids"):
        check_body(body)


def _program_section(data: bytes) -> bytes:
    _, _, header_len = _PREFIX.unpack_from(data)
    header = json.loads(data[_PREFIX.size : _PREFIX.size + header_len])
    section = next(s for s in header["sections"] if s["name"] == "program")
    start = _PREFIX.size + header_len + section["offset"]
    return data[start : start + section["nbytes"]]
