"""The command line: compile / run / report / targets, and one-line errors with exit code 2."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from lpuc.cli import CheckCriteria, compare
from tests.cli_helpers import assert_one_line_error, invoke
from tests.models import ort_run
from tests.onnx_builders import dynamic_batch_model, single_op_model, unsupported_ops_model


def test_compile_run_report(mlp_onnx, tmp_path):
    art, inputs, outputs = tmp_path / "m.lpu", tmp_path / "in.npz", tmp_path / "out.npz"
    result = invoke("compile", mlp_onnx, "-o", art, "--precision", "fp32")
    assert result.exit_code == 0, result.output
    assert "cycles" in result.output and art.exists()

    x = np.random.default_rng(3).standard_normal((8, 64)).astype(np.float32)
    np.savez(inputs, x=x)
    result = invoke("run", art, "--inputs", inputs, "-o", outputs, "--check", mlp_onnx)
    assert result.exit_code == 0, result.output
    assert "check y: max abs err" in result.output and ": ok" in result.output
    with np.load(outputs, allow_pickle=False) as data:
        np.testing.assert_allclose(data["y"], ort_run(mlp_onnx, {"x": x})[0], rtol=1e-4, atol=1e-6)

    result = invoke("report", art, "--json")
    summary = json.loads(result.output)
    assert {"cycles", "latency_us", "sram_peak_bytes", "units"} <= set(summary)
    assert summary["cycles"] > 0 and summary["latency_us"] == pytest.approx(summary["cycles"] / 900, abs=1e-3)
    assert "busy %" in invoke("report", art).output


def test_run_without_inputs_says_so(mlp_program, tmp_path):
    art = tmp_path / "m.lpu"
    mlp_program.save(art)
    result = invoke("run", art)
    assert result.exit_code == 0 and "random inputs (seed 0)" in result.output


def test_check_fails_with_exit_1(mlp_onnx, tmp_path):
    """A model that is not the one compiled: --check reports the error and exits 1."""
    other = tmp_path / "other.onnx"
    model = onnx.load(str(mlp_onnx))
    w = next(i for i in model.graph.initializer if len(i.dims) == 2)
    arr = onnx.numpy_helper.to_array(w) * 1.5
    w.CopyFrom(onnx.numpy_helper.from_array(arr, w.name))
    onnx.save(model, str(other))
    art = tmp_path / "m.lpu"
    invoke("compile", mlp_onnx, "-o", art)
    result = invoke("run", art, "--check", other)
    assert_one_line_error(result, "beyond tolerance", code=1)
    # An fp16 build is checked by direction and size: weights 1.5x too large scale the output, which
    # keeps a cosine near 1 but not the SQNR.
    assert "(cosine >= 0.999, SQNR >= 30 dB): FAILED" in result.output, result.output


def test_check_criteria_by_precision():
    fp32, fp16, int8 = (CheckCriteria.for_precision(p) for p in ("fp32", "fp16", "int8"))
    assert (fp32.rtol, fp32.atol, fp32.min_cosine, fp32.min_sqnr) == (1e-4, 1e-5, None, None)
    assert (fp16.rtol, fp16.min_cosine, fp16.min_sqnr) == (None, 0.999, 30.0)
    assert (int8.rtol, int8.min_cosine, int8.min_sqnr) == (None, 0.99, 10.0)
    # A tolerance given adds the elementwise test (the other one at its default); 0 is a value.
    assert CheckCriteria.for_precision("fp16", rtol=0.0).atol == 0.0
    assert CheckCriteria.for_precision("int8", atol=1e-3).rtol == 0.0
    assert CheckCriteria.for_precision("fp16", min_sqnr=0.0).min_sqnr == 0.0
    ref = np.linspace(-1.0, 1.0, 64)
    assert compare(ref * (1 + 1e-4), ref, fp16)[0]
    assert not compare(ref * 1.5, ref, fp16)[0]  # cosine 1, SQNR 6 dB
    assert not compare(ref[::-1], ref, fp16)[0]  # same size, wrong direction
    assert str(int8) == "cosine >= 0.99, SQNR >= 10 dB"


def test_targets_lists_shipped_targets():
    out = invoke("targets").output
    assert "tsp-v1" in out and "tsp-mini" in out and "320 lanes" in out


def test_unsupported_ops_listed_in_one_error(tmp_path):
    path = tmp_path / "bad.onnx"
    onnx.save(unsupported_ops_model(), str(path))
    result = invoke("compile", path, "-o", tmp_path / "x.lpu")
    assert_one_line_error(
        result, str(path), "Frobnicate", "frob_1", "frob_2", "Twiddle", "twiddle", "com.acme 3"
    )


def test_unbound_dynamic_dim(tmp_path):
    path = tmp_path / "dyn.onnx"
    onnx.save(dynamic_batch_model(), str(path))
    result = invoke("compile", path, "-o", tmp_path / "x.lpu")
    assert_one_line_error(result, "input 'x' dim 0 ('batch') is dynamic", "--input-shape x=")
    result = invoke("compile", path, "-o", tmp_path / "x.lpu", "--input-shape", "x=4x16")
    assert result.exit_code == 0, result.output


def test_bad_input_shape_specs(tmp_path):
    path = tmp_path / "dyn.onnx"
    onnx.save(dynamic_batch_model(), str(path))
    assert_one_line_error(
        invoke("compile", path, "-o", tmp_path / "x.lpu", "--input-shape", "x=4xq"), "integers"
    )
    assert_one_line_error(
        invoke("compile", path, "-o", tmp_path / "x.lpu", "--input-shape", "z=4x16"), "unknown input"
    )
    assert_one_line_error(
        invoke("compile", path, "-o", tmp_path / "x.lpu", "--input-shape", "x=4x8"), "fixed at 16"
    )


def test_not_onnx_and_missing_file(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\x01 definitely not protobuf \xff" * 10)
    assert_one_line_error(invoke("compile", junk, "-o", tmp_path / "x.lpu"), str(junk), "not an ONNX model")
    assert_one_line_error(invoke("compile", tmp_path / "nope.onnx", "-o", tmp_path / "x.lpu"), "no such file")


def test_opset_newer_than_onnx_knows(tmp_path):
    model = single_op_model("Relu", [("x", [4])], [("y", [4])])
    model.opset_import[0].version = onnx.defs.onnx_opset_version() + 5
    path = tmp_path / "future.onnx"
    onnx.save(model, str(path))
    assert_one_line_error(invoke("compile", path, "-o", tmp_path / "x.lpu"), "newer than the installed onnx")


def test_output_not_half_written_on_failure(tmp_path):
    path = tmp_path / "bad.onnx"
    onnx.save(unsupported_ops_model(), str(path))
    out = tmp_path / "x.lpu"
    out.write_bytes(b"previous artifact")
    invoke("compile", path, "-o", out)
    assert out.read_bytes() == b"previous artifact"


def test_random_inputs_index_a_two_row_table(tmp_path):
    """Random integer inputs (no --inputs) are valid indices for the smallest real table: BERT's
    token types have two rows. The check compares onnxruntime's result on the same random ids."""
    from onnx import TensorProto, helper, numpy_helper

    table = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["y"], axis=0)],
        "token_types",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 8])],
        [numpy_helper.from_array(table, "table")],
    )
    model_path, art = tmp_path / "types.onnx", tmp_path / "types.lpu"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), str(model_path))
    assert invoke("compile", model_path, "-o", art, "--precision", "fp32").exit_code == 0
    result = invoke("run", art, "--check", model_path)
    assert result.exit_code == 0, result.output
    assert "random inputs" in result.output and ": ok" in result.output
