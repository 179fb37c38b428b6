"""Already-quantized ONNX models (passes/lower_quantized.py) run their integer products on the MXM's
int8 mode, checked against onnxruntime on the quantized model itself.

onnxruntime's x86 kernels for uint8 activations x int8 weights add pairs of products in int16 with
saturation, so with weights beyond +-63 they are not the exact sum the ONNX spec defines; the uint8
cases keep |w| <= 63, where they are exact. Quantized (QDQ) graphs are compared with onnxruntime
without graph optimizations: its optimizer fuses QDQ into its own integer kernels whose
requantization rounds differently from the graph the model states (DequantizeLinear, float op,
QuantizeLinear).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import lpuc

ort = pytest.importorskip("onnxruntime")

ACTIVATIONS = [(TensorProto.INT8, np.int8, 127), (TensorProto.UINT8, np.uint8, 63)]


def _reference(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def _model(node, x_name, x_type, x_shape, y_type, y_shape, inits) -> onnx.ModelProto:
    graph = helper.make_graph(
        [node],
        "quantized",
        [helper.make_tensor_value_info(x_name, x_type, x_shape)],
        [helper.make_tensor_value_info("y", y_type, y_shape)],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _compile_int8_mxm(model: onnx.ModelProto) -> lpuc.Program:
    """Compiled in the default (fp16) precision: the integer products still take the int8 mode."""
    program = lpuc.compile(model)
    modes = {i.attrs["precision"] for i in program.instructions if i.opcode == "mxm.mm"}
    assert modes == {"int8"} and program.summary["host_ops"] == 0, (modes, program.summary["host_ops"])
    return program


@pytest.mark.parametrize(("x_type", "x_dtype", "w_max"), ACTIVATIONS)
def test_qlinear_conv(x_type, x_dtype, w_max):
    rng = np.random.default_rng(0)
    info = np.iinfo(x_dtype)
    x = rng.integers(info.min, info.max + 1, (1, 8, 10, 10)).astype(x_dtype)
    inits = {
        "xs": np.float32(0.02),
        "xz": np.array(3 if x_dtype == np.int8 else 131, x_dtype),
        "w": rng.integers(-w_max, w_max + 1, (16, 8, 3, 3)).astype(np.int8),
        "ws": (rng.random(16) * 0.01 + 0.001).astype(np.float32),  # per output channel
        "wz": np.zeros(16, np.int8),
        "ys": np.float32(0.5),
        "yz": np.array(5, x_dtype),
        "b": rng.integers(-1000, 1000, 16).astype(np.int32),
    }
    node = helper.make_node(
        "QLinearConv",
        ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"],
        ["y"],
        pads=[1, 1, 1, 1],
        strides=[2, 2],
    )
    model = _model(node, "x", x_type, x.shape, x_type, (1, 16, 5, 5), inits)
    got = _compile_int8_mxm(model).run({"x": x})["y"]
    expected = _reference(model, {"x": x})
    assert got.dtype == expected.dtype
    assert np.abs(got.astype(np.int64) - expected).max() <= 1  # within one quantization step


@pytest.mark.parametrize(("x_type", "x_dtype", "w_max"), ACTIVATIONS)
def test_conv_integer_is_exact(x_type, x_dtype, w_max):
    """The zero point pads the image (so padded taps add nothing) and its term is added exactly."""
    rng = np.random.default_rng(1)
    info = np.iinfo(x_dtype)
    x = rng.integers(info.min, info.max + 1, (1, 8, 9, 9)).astype(x_dtype)
    inits = {
        "w": rng.integers(-w_max, w_max + 1, (12, 8, 3, 3)).astype(np.int8),
        "xz": np.array(-7 if x_dtype == np.int8 else 140, x_dtype),
    }
    node = helper.make_node("ConvInteger", ["x", "w", "xz"], ["y"], pads=[1, 1, 1, 1])
    model = _model(node, "x", x_type, x.shape, TensorProto.INT32, (1, 12, 9, 9), inits)
    np.testing.assert_array_equal(_compile_int8_mxm(model).run({"x": x})["y"], _reference(model, {"x": x}))


@pytest.mark.parametrize(("x_type", "x_dtype", "w_max"), ACTIVATIONS)
def test_matmul_integer_and_qlinear_matmul(x_type, x_dtype, w_max):
    rng = np.random.default_rng(2)
    info = np.iinfo(x_dtype)
    a = rng.integers(info.min, info.max + 1, (6, 400)).astype(x_dtype)  # K over one int8 k_tile
    w = rng.integers(-w_max, w_max + 1, (400, 12)).astype(np.int8)
    zero = np.array(-5 if x_dtype == np.int8 else 120, x_dtype)
    node = helper.make_node("MatMulInteger", ["a", "w", "az"], ["y"])
    model = _model(node, "a", x_type, a.shape, TensorProto.INT32, (6, 12), {"w": w, "az": zero})
    np.testing.assert_array_equal(_compile_int8_mxm(model).run({"a": a})["y"], _reference(model, {"a": a}))

    inits = {"as": np.float32(0.02), "az": zero, "w": w, "ws": np.float32(0.01), "wz": np.array(0, np.int8)}
    inits |= {"ys": np.float32(2.0), "yz": np.array(2, x_dtype)}
    node = helper.make_node("QLinearMatMul", ["a", "as", "az", "w", "ws", "wz", "ys", "yz"], ["y"])
    model = _model(node, "a", x_type, a.shape, x_type, (6, 12), inits)
    got = _compile_int8_mxm(model).run({"a": a})["y"]
    assert np.abs(got.astype(np.int64) - _reference(model, {"a": a})).max() <= 1


class _SmallNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.c2 = torch.nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.fc = torch.nn.Linear(32 * 8 * 8, 10)

    def forward(self, x):
        x = torch.relu(self.c2(torch.relu(self.c1(x))))
        return self.fc(torch.flatten(x, 1))


@pytest.fixture(scope="module")
def qdq_models(tmp_path_factory) -> dict[str, str]:
    """A seeded conv net quantized by onnxruntime.quantization.quantize_static (QDQ, per-channel
    int8 weights; int8 and uint8 activations)."""
    quantization = pytest.importorskip("onnxruntime.quantization")
    directory = tmp_path_factory.mktemp("qdq")
    torch.manual_seed(0)
    float_path = directory / "float.onnx"
    torch.onnx.export(
        _SmallNet().eval(),
        (torch.randn(1, 3, 16, 16),),
        str(float_path),
        input_names=["x"],
        output_names=["y"],
        opset_version=17,
        dynamo=False,
    )

    class Reader(quantization.CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(0)
            self.samples = iter(
                [{"x": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)} for _ in range(8)]
            )

        def get_next(self):
            return next(self.samples, None)

    paths = {}
    for name, activation in (("s8", quantization.QuantType.QInt8), ("u8", quantization.QuantType.QUInt8)):
        paths[name] = str(directory / f"qdq_{name}.onnx")
        quantization.quantize_static(
            str(float_path),
            paths[name],
            Reader(),
            quant_format=quantization.QuantFormat.QDQ,
            activation_type=activation,
            weight_type=quantization.QuantType.QInt8,
            per_channel=True,
        )
    return paths


@pytest.mark.parametrize("activations", ["s8", "u8"])
def test_qdq_model_runs_its_convs_and_gemm_on_the_int8_mode(qdq_models, activations):
    path = qdq_models[activations]
    model = onnx.load(path)
    program = _compile_int8_mxm(model)
    scale = next(numpy_helper.to_array(i) for i in model.graph.initializer if i.name == "y_scale")
    rng = np.random.default_rng(3)
    for _ in range(4):
        x = rng.standard_normal((1, 3, 16, 16)).astype(np.float32)
        error = np.abs(program.run({"x": x})["y"] - _reference(model, {"x": x})).max()
        assert error <= float(scale) * 1.01  # within one step of the output's quantization
