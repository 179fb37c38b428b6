"""What a new user hits on day one: absurd sizes, exporter quirks, wrong dtypes, bad paths, tolerances.

Every user error must be one `error:` line with exit code 2 (exit 3 is for lpuc's own bugs).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import lpuc
from lpuc.errors import LpucError
from lpuc.frontend.loader import load_model
from lpuc.report import human_bytes
from tests.cli_helpers import assert_one_line_error, invoke

MODELS = Path(__file__).resolve().parent.parent / "models"


def mlp_with_input_dims(tmp_path, dims: dict[int, int], outputs_too: bool = False) -> Path:
    model = onnx.load(str(MODELS / "mlp.onnx"))
    for axis, size in dims.items():
        model.graph.input[0].type.tensor_type.shape.dim[axis].dim_value = size
        if outputs_too:
            model.graph.output[0].type.tensor_type.shape.dim[axis].dim_value = size
    path = tmp_path / "mutated.onnx"
    onnx.save(model, str(path))
    return path


@pytest.fixture
def mlp_lpu(tmp_path):
    art = tmp_path / "mlp.lpu"
    assert invoke("compile", MODELS / "mlp.onnx", "-o", art, "--precision", "fp32").exit_code == 0
    return art


# -- sizes -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("axis", [0, 1])
def test_billion_wide_input_refused_fast(tmp_path, axis):
    path = mlp_with_input_dims(tmp_path, {axis: 10**9})
    start = time.perf_counter()
    result = invoke("compile", path, "-o", tmp_path / "x.lpu")
    assert time.perf_counter() - start < 5  # must answer at once (CI is noisy: generous bound)
    assert_one_line_error(result, "input 'x'", "GiB", "elements")


def test_input_larger_than_sram_names_both_sizes(tmp_path):
    path = mlp_with_input_dims(tmp_path, {0: 2_000_000})  # 2e6 x 64 fp32 = 488 MiB > 220 MiB
    assert_one_line_error(
        invoke("compile", path, "-o", tmp_path / "x.lpu"), "input 'x'", "488.28 MiB", "220.00 MiB"
    )


def test_intermediate_larger_than_sram(tmp_path):
    """An Expand to a huge shape is refused where it appears, naming the node."""
    nodes = [helper.make_node("Expand", ["x", "shape"], ["y"], name="blow_up")]
    shape = numpy_helper.from_array(np.array([4096, 4096, 8], np.int64), "shape")
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4096, 4096, 8])],
        [shape],
    )
    path = tmp_path / "expand.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), str(path))
    assert_one_line_error(invoke("compile", path, "-o", tmp_path / "x.lpu"), "blow_up", "Expand", "MiB")


# -- exporter quirks ---------------------------------------------------------------------------------
@pytest.mark.parametrize("marker", [-1, 0])
def test_minus_one_and_zero_dims_are_dynamic(tmp_path, marker):
    """Both bind with --input-shape; unbound, -1 must be bound while 0 stays a real empty dim (the
    ONNX node tests have empty inputs)."""
    path = mlp_with_input_dims(tmp_path, {0: marker}, outputs_too=True)
    if marker == -1:
        assert_one_line_error(
            invoke("compile", path, "-o", tmp_path / "x.lpu"), "input 'x' dim 0", "is dynamic", "x=1x64"
        )
    art = tmp_path / "x.lpu"
    result = invoke("compile", path, "-o", art, "--input-shape", "x=3x64", "--precision", "fp32")
    assert result.exit_code == 0, result.output
    result = invoke("run", art, "--check", path)
    assert result.exit_code == 0 and ": ok" in result.output, result.output


# -- inputs ------------------------------------------------------------------------------------------
def test_wrong_input_dtype_refused(mlp_lpu, tmp_path):
    x = np.ones((8, 64), np.int64)
    with pytest.raises(LpucError, match="dtype int64, the program expects float32"):
        lpuc.load(mlp_lpu).run({"x": x})
    np.savez(tmp_path / "in.npz", x=x)
    assert_one_line_error(invoke("run", mlp_lpu, "--inputs", tmp_path / "in.npz"), "float32", "int64")


def test_float64_inputs_with_check(mlp_lpu, tmp_path):
    np.savez(tmp_path / "in.npz", x=np.ones((8, 64)))
    result = invoke("run", mlp_lpu, "--inputs", tmp_path / "in.npz", "--check", MODELS / "mlp.onnx")
    assert_one_line_error(result, "float64", "float32")


# -- paths -------------------------------------------------------------------------------------------
def test_output_into_missing_directory(mlp_lpu, tmp_path):
    missing = tmp_path / "nope" / "m.lpu"
    assert_one_line_error(invoke("compile", MODELS / "mlp.onnx", "-o", missing), "does not exist")
    for option in ("-o", "--trace"):
        assert_one_line_error(invoke("run", mlp_lpu, option, tmp_path / "nope" / "f"), "does not exist")


def test_directory_as_model(tmp_path):
    result = invoke("compile", tmp_path, "-o", tmp_path / "x.lpu")
    assert_one_line_error(result, str(tmp_path))
    assert "no such file" not in result.output
    with pytest.raises(LpucError, match="is a directory"):
        load_model(tmp_path)


# -- advice and tolerances ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("width", "precision", "advice"),
    [
        # tsp-mini has 512 KiB. 1024^2 fp32 is 4 MiB: 2 MiB in fp16, 1 MiB in int8 - neither fits.
        (1024, "fp32", "they need at least 8 tsp-mini chips (2 with int8 weights), or a larger target"),
        (1024, "fp16", "they need at least 4 tsp-mini chips (2 with int8 weights), or a larger target"),
        (640, "fp32", "int8 weights would take 400.00 KiB and fit; or use a larger target"),  # fp16: 800
        (448, "fp32", "try --precision fp16 (they would take 392.00 KiB) or a larger target"),
    ],
)
def test_constants_advice_is_true_for_the_model(tmp_path, width, precision, advice):
    # Random weights: no identical tiles to share; widths are whole 64-lane tiles (no padding).
    w = np.random.default_rng(0).standard_normal((width, width)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, width])],
        [numpy_helper.from_array(w, "w")],
    )
    path = tmp_path / "wide.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), str(path))
    out = tmp_path / "x.lpu"
    result = invoke("compile", path, "-o", out, "--target", "tsp-mini", "--precision", precision)
    assert_one_line_error(result, "constants need", "larger target")
    stored = "float16" if precision == "fp16" else "float32"
    size = human_bytes(width * width * (2 if precision == "fp16" else 4))
    assert f"largest: w [{width}x{width} {stored}] {size};" in result.output, result.output
    assert result.output.rstrip().endswith(advice), result.output


def test_zero_tolerance_is_honoured(tmp_path):
    art = tmp_path / "m.lpu"
    assert invoke("compile", MODELS / "mlp.onnx", "-o", art).exit_code == 0  # fp16: not bit-exact
    result = invoke("run", art, "--check", MODELS / "mlp.onnx", "--rtol", 0, "--atol", 0)
    assert "rtol 0, atol 0" in result.output and "FAILED" in result.output, result.output
    assert_one_line_error(result, "beyond tolerance", code=1)
    assert_one_line_error(invoke("run", art, "--rtol", -1), "must be >= 0")


def test_check_reports_cosine_and_sqnr(mlp_lpu):
    result = invoke("run", mlp_lpu, "--check", MODELS / "mlp.onnx")
    assert result.exit_code == 0, result.output
    assert "cosine 1.0000" in result.output and "SQNR" in result.output


# -- --check against the wrong thing -----------------------------------------------------------------
def test_check_with_missing_model(mlp_lpu, tmp_path):
    assert_one_line_error(invoke("run", mlp_lpu, "--check", tmp_path / "gone.onnx"), "no such file")


def test_check_with_other_model(mlp_lpu, tmp_path):
    result = invoke("run", mlp_lpu, "--check", MODELS / "residual.onnx")
    assert_one_line_error(result, "not the compiled model", "residual.onnx")
    other = mlp_with_input_dims(tmp_path, {0: 4}, outputs_too=True)  # same names, other batch
    assert_one_line_error(invoke("run", mlp_lpu, "--check", other), "not the compiled model", "'x'")


# -- data errors at run time -------------------------------------------------------------------------
def test_embedding_index_out_of_range(tmp_path):
    table = np.arange(80, dtype=np.float32).reshape(10, 8)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["y"], name="embed")],
        "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])],
        [numpy_helper.from_array(table, "table")],
    )
    path, art = tmp_path / "embed.onnx", tmp_path / "embed.lpu"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), str(path))
    assert invoke("compile", path, "-o", art).exit_code == 0
    np.savez(tmp_path / "ok.npz", ids=np.array([0, 9, -1, 3], np.int64))
    assert invoke("run", art, "--inputs", tmp_path / "ok.npz", "--check", path).exit_code == 0
    np.savez(tmp_path / "bad.npz", ids=np.array([0, 12, 1, 3], np.int64))
    result = invoke("run", art, "--inputs", tmp_path / "bad.npz")
    assert_one_line_error(result, "'embed'", "Gather", "index 12 out of range")


def test_huge_constant_refused_before_folding(tmp_path):
    """A ConstantOfShape of 10^12 elements is refused before numpy is asked for the memory."""
    shape = numpy_helper.from_array(np.array([10**6, 10**6], np.int64), "shape")
    graph = helper.make_graph(
        [
            helper.make_node("ConstantOfShape", ["shape"], ["c"], name="fill"),
            helper.make_node("Add", ["x", "c"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [10**6, 10**6])],
        [shape],
    )
    path = tmp_path / "fill.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), str(path))
    start = time.perf_counter()
    result = invoke("compile", path, "-o", tmp_path / "x.lpu")
    assert time.perf_counter() - start < 5
    assert_one_line_error(result, "'fill'", "ConstantOfShape", "elements")


def test_outputs_are_ordinary_files(tmp_path):
    """Written via a private temp file, but the result gets the usual permissions (umask)."""
    import os

    from lpuc.fileio import atomic_write

    umask = os.umask(0)
    os.umask(umask)
    atomic_write(tmp_path / "f.txt", "x")
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o666 & ~umask


def _one_node_model(tmp_path, node, x_type, x_shape, y_shape) -> Path:
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", x_type, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
    )
    path = tmp_path / "one.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), str(path))
    return path


def test_input_type_the_op_does_not_take(tmp_path):
    """onnxruntime refuses a Softmax over int64; so does lpuc, at compile time, naming the node."""
    node = helper.make_node("Softmax", ["x"], ["y"], name="probs")
    path = _one_node_model(tmp_path, node, TensorProto.INT64, [2, 3], [2, 3])
    result = invoke("compile", path, "-o", tmp_path / "x.lpu")
    assert_one_line_error(result, "'probs' (Softmax)", "int64", "float")


def test_invalid_node_refused_at_compile_time(tmp_path):
    """A pooling window larger than its input is refused by the frontend, not when the program runs
    (the declared output shape is not taken on trust)."""
    node = helper.make_node("MaxPool", ["x"], ["y"], name="pool", kernel_shape=[2, 9])
    path = _one_node_model(tmp_path, node, TensorProto.FLOAT, [1, 1, 4, 4], [1, 1, 3, 1])
    result = invoke("compile", path, "-o", tmp_path / "x.lpu")
    assert_one_line_error(result, "'pool' (MaxPool)", "window")
