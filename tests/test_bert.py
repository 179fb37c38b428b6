"""Issue 9: BERT fits one chip. Tables at the compile precision, padding measured, embedding tables
in host memory only when the constants overflow SRAM, and a does-not-fit error that is true."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import lpuc
from lpuc.report import summary_text
from tests.cli_helpers import assert_one_line_error, invoke
from tests.models import ort_run
from tests.onnx_builders import embedding_matmul_model

pytest.importorskip("transformers")
from tests import zoo  # noqa: E402 - needs transformers
from tests.similarity import cosine

# 2 layers, 128 wide, 2 heads; the real vocabulary (a 30522 x 128 table) and 512 positions.
SMALL = {"num_hidden_layers": 2, "hidden_size": 128, "num_attention_heads": 2, "intermediate_size": 512}


def bert_feeds(vocab: int = 30522, seq_len: int = 128, seed: int = 3) -> dict[str, np.ndarray]:
    """Seeded ids, a padded mask (the last 28 positions masked) and two segments."""
    rng = np.random.default_rng(seed)
    mask = np.ones((1, seq_len), np.int64)
    mask[0, seq_len - 28 :] = 0
    types = np.zeros((1, seq_len), np.int64)
    types[0, seq_len // 2 :] = 1
    return {
        "input_ids": rng.integers(0, vocab, (1, seq_len)).astype(np.int64),
        "attention_mask": mask,
        "token_type_ids": types,
    }


@pytest.fixture(scope="module")
def small_bert():
    return zoo.bert_onnx(**SMALL)


def test_small_bert_fp32_matches_onnxruntime(small_bert):
    program = lpuc.compile(small_bert, precision="fp32")
    feeds = bert_feeds()
    got = program.run(feeds)
    for (name, value), expected in zip(got.items(), ort_run(small_bert, feeds)):
        np.testing.assert_allclose(value, expected, rtol=1e-4, atol=1e-5, err_msg=name)
    assert program.summary["host_ops"] == 0 and program.summary["host_tables"] == {}


def test_small_bert_fp16_stores_its_tables_in_fp16(small_bert):
    program = lpuc.compile(small_bert, precision="fp16")
    feeds = bert_feeds()
    for (name, value), expected in zip(program.run(feeds).items(), ort_run(small_bert, feeds)):
        assert cosine(value, expected) >= 0.999, name
    # Every SRAM tile of the word-embedding table is fp16, holding the fp32 table rounded to fp16.
    table = numpy_helper.to_array(
        next(t for t in onnx.load(str(small_bert)).graph.initializer if "word_embeddings" in t.name)
    )
    tiles = [t for t in program.tiles if "word_embeddings" in t.tensor and t.kind == "const"]
    assert {t.dtype for t in tiles} == {"float16"}
    assert sum(t.rows * t.lanes for t in tiles) == table.size
    for t in tiles:
        stored = program.consts[t.const_key]
        assert stored.dtype == np.float16
        np.testing.assert_array_equal(
            stored, table[t.r0 : t.r0 + t.rows, t.c0 : t.c0 + t.lanes].astype(np.float16)
        )
    assert program.summary["host_tables"] == {}


def _embed_matmul(path, vocab: int, width: int) -> None:
    onnx.save(embedding_matmul_model(vocab, width), str(path))


def test_table_goes_to_host_memory_only_when_constants_overflow(tmp_path):
    # tsp-mini has 512 KiB of SRAM: the 2048 x 64 fp32 table alone is 512 KiB, with w it overflows.
    path = tmp_path / "embed.onnx"
    _embed_matmul(path, 2048, 64)
    # (By default the host gathers these rows before the run: tests/test_input_gathers.py.)
    program = lpuc.compile(path, target="tsp-mini", precision="fp32", disable_passes=["input_gathers"])
    s = program.summary
    assert s["host_tables"] == {"table": 2048 * 64 * 4}
    assert s["host_nodes"] == ["embed"] and s["sram_const_bytes"] == 64 * 64 * 4
    (host,) = [i for i in program.instructions if i.opcode == "host.kernel"]
    # The ids are a model input (already on the host): nothing goes out, only the 8 gathered rows
    # come back; the host touches those rows only.
    assert (host.work.pcie_to_host, host.work.pcie_to_chip) == (0, 8 * 64 * 4)
    assert host.work.host_bytes == 8 * 8 + 2 * 8 * 64 * 4
    assert "host mem   tables kept in host memory" in summary_text(s)
    feeds = {"ids": np.array([[0, 2047, 5, 5, 1000, 7, 3, 2]], np.int64)}
    for _ in range(2):  # a second run reloads the host table after resetting host memory
        (got,) = program.run(feeds).values()
        np.testing.assert_allclose(got, ort_run(path, feeds)[0], rtol=1e-4, atol=1e-5)
    art = tmp_path / "embed.lpu"
    program.save(art)
    (again,) = lpuc.load(art).run(feeds).values()
    np.testing.assert_array_equal(again, got)

    # On tsp-v1 everything fits: the table stays in SRAM.
    on_chip = lpuc.compile(path, precision="fp32").summary
    assert on_chip["host_tables"] == {} and on_chip["host_ops"] == 0


def _compile_on_tsp_mini_without_host(path, tmp_path):
    """`lpuc compile` for tsp-mini in fp32 with --no-host-fallback (no table may leave SRAM)."""
    out = tmp_path / "x.lpu"
    return invoke(
        "compile", path, "-o", out, "--target", "tsp-mini", "--precision", "fp32", "--no-host-fallback"
    )


def test_no_host_fallback_keeps_tables_on_chip_and_names_them(tmp_path):
    path = tmp_path / "embed.onnx"
    _embed_matmul(path, 2048, 64)
    result = _compile_on_tsp_mini_without_host(path, tmp_path)
    assert_one_line_error(
        result,
        "constants need 528.00 KiB",
        "largest: table [2048x64 float32] 512.00 KiB, w [64x64 float32] 16.00 KiB",
    )


def test_constant_padding_is_measured(tmp_path):
    # tsp-mini tiles are 64 lanes: w [64, 96] is a 64-lane and a 32-lane tile, each of 64 rows. The
    # second fills whole 64-byte words with 32 lanes: 64 rows x 32 lanes x itemsize bytes of padding.
    w = np.random.default_rng(1).standard_normal((64, 96)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 96])],
        [numpy_helper.from_array(w, "w")],
    )
    path = tmp_path / "mm.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), str(path))
    for precision, itemsize in (("fp32", 4), ("fp16", 2)):
        s = lpuc.compile(path, target="tsp-mini", precision=precision).summary
        assert s["sram_const_bytes"] == 2 * 64 * itemsize * 64
        assert s["sram_const_padding_bytes"] == 64 * 32 * itemsize
        assert "lane padding" in summary_text(s)


@pytest.mark.slow
def test_bert_base_fp16_fits_one_chip():
    path = zoo.bert_onnx()  # BertConfig() defaults: 12 layers, 768 wide, seq 128, batch 1
    program = lpuc.compile(path, precision="fp16")
    s = program.summary
    assert s["sram_peak_bytes"] <= s["sram_capacity_bytes"]
    feeds = bert_feeds()
    for (name, value), expected in zip(program.run(feeds).items(), ort_run(path, feeds)):
        assert cosine(value, expected) >= 0.999, name


def test_tables_leave_sram_when_constants_fit_but_live_data_does_not(tmp_path):
    # tsp-mini: the 1536 x 64 table and w are 400 KiB of constants (they fit in 512 KiB), but the
    # 512 gathered rows and the product add 256 KiB of live data.
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "ids"], ["x"], name="embed"),
            helper.make_node("MatMul", ["x", "w"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [512])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [512, 64])],
        [
            numpy_helper.from_array(rng.standard_normal((1536, 64)).astype(np.float32), "table"),
            numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), "w"),
        ],
    )
    path = tmp_path / "tall.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), str(path))
    feeds = {"ids": rng.integers(0, 1536, 512).astype(np.int64)}
    # The ids are a model input: the host gathers the rows before the run (no PCIe wait inside it).
    program = lpuc.compile(path, target="tsp-mini", precision="fp32")
    assert program.summary["host_gathers"] == {"x": "table"} and program.summary["host_tables"] == {}
    (got,) = program.run(feeds).values()
    np.testing.assert_allclose(got, ort_run(path, feeds)[0], rtol=1e-4, atol=1e-5)
    program = lpuc.compile(path, target="tsp-mini", precision="fp32", disable_passes=["input_gathers"])
    assert program.summary["host_tables"] == {"table": 1536 * 64 * 4}
    (got,) = program.run(feeds).values()
    np.testing.assert_allclose(got, ort_run(path, feeds)[0], rtol=1e-4, atol=1e-5)
    no_host = _compile_on_tsp_mini_without_host(path, tmp_path)
    largest = "constants 400.00 KiB, largest: table [1536x64 float32] 384.00 KiB"
    assert_one_line_error(no_host, "at its peak", largest)


def test_does_not_fit_error_names_tables_already_on_the_host(tmp_path):
    # tsp-mini: the table goes to the host, and w alone (768 KiB) still overflows 512 KiB.
    path = tmp_path / "embed.onnx"
    _embed_matmul(path, 2048, 448)
    result = invoke("compile", path, "-o", tmp_path / "x.lpu", "--target", "tsp-mini", "--precision", "fp32")
    assert_one_line_error(
        result,
        "largest: w [448x448 float32] 784.00 KiB; already in host memory: table; ",
        "try --precision fp16 (they would take 392.00 KiB)",
    )
