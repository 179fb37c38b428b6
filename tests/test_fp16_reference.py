"""The fp16 MXM path against an independent numpy reference, with weights as runtime inputs.

Weights that are model inputs reach the MXM unrounded (constants are already stored as fp16 at
compile time), so only the runtime's rounding of MXM operands makes these outputs match. K > 160
splits every matmul into several accumulated chunks on both targets.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import lpuc
from lpuc.runtime import execute
from tests.kernels.oracle import IR_VERSION, run_onnxruntime

# (M, K, N, K2) per target: K, K2 > 160 are several K tiles on both chips; tsp-mini has 512 KiB of SRAM.
SHAPES = {"tsp-v1": (16, 400, 300, 330), "tsp-mini": (8, 200, 96, 170)}
# Max abs difference allowed from the fp16 reference, relative to the output's largest magnitude:
# fp32 accumulation order differs (~1e-7); skipping the fp16 rounding costs ~1e-4. Every MXM operand
# is a model input, so no computed value sits near an fp16 rounding boundary that order could flip.
FP16_TOL = 1e-5


def _mlp(target: str) -> onnx.ModelProto:
    """y = x @ w1 + u @ w2 + b, every operand a graph input."""
    M, K, N, K2 = SHAPES[target]
    f = TensorProto.FLOAT
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"]),
            helper.make_node("MatMul", ["u", "w2"], ["z"]),
            helper.make_node("Add", ["h", "z"], ["s"]),
            helper.make_node("Add", ["s", "b"], ["y"]),
        ],
        "fp16_mlp",
        [
            helper.make_tensor_value_info("x", f, [M, K]),
            helper.make_tensor_value_info("w1", f, [K, N]),
            helper.make_tensor_value_info("u", f, [M, K2]),
            helper.make_tensor_value_info("w2", f, [K2, N]),
            helper.make_tensor_value_info("b", f, [N]),
        ],
        [helper.make_tensor_value_info("y", f, [M, N])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=IR_VERSION)


def _feeds(target: str) -> dict[str, np.ndarray]:
    M, K, N, K2 = SHAPES[target]
    rng = np.random.default_rng(1234)
    # Unit-scale values with many mantissa bits, so fp16 rounding changes nearly every operand.
    return {
        "x": rng.standard_normal((M, K)).astype(np.float32),
        "w1": (rng.standard_normal((K, N)) / np.sqrt(K)).astype(np.float32),
        "u": rng.standard_normal((M, K2)).astype(np.float32),
        "w2": (rng.standard_normal((K2, N)) / np.sqrt(K2)).astype(np.float32),
        "b": rng.standard_normal(N).astype(np.float32),
    }


def _reference(feeds: dict[str, np.ndarray], round_fp16: bool) -> np.ndarray:
    """MXM operands rounded to fp16 (when asked), products accumulated in fp32; the adds in fp32."""

    def mxm(a: np.ndarray) -> np.ndarray:
        return a.astype(np.float16).astype(np.float32) if round_fp16 else a.astype(np.float32)

    return mxm(feeds["x"]) @ mxm(feeds["w1"]) + mxm(feeds["u"]) @ mxm(feeds["w2"]) + feeds["b"]


def _max_scaled_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.max(np.abs(got.astype(np.float64) - want)) / np.max(np.abs(want)))


@pytest.mark.parametrize("target", sorted(SHAPES))
def test_reference_distinguishes_rounding_from_none(target):
    """The tolerance is tight enough that a runtime skipping the fp16 rounding would fail."""
    feeds = _feeds(target)
    rounded, exact = _reference(feeds, True), _reference(feeds, False)
    assert _max_scaled_error(exact, rounded.astype(np.float64)) > 5 * FP16_TOL


@pytest.mark.parametrize("interpret", [False, True], ids=["plan", "interpreter"])
@pytest.mark.parametrize("target", ["tsp-v1", "tsp-mini"])
def test_fp16_matches_rounded_reference(target, interpret):
    """Both executors: the default execution plan and the instruction-by-instruction interpreter."""
    program = lpuc.compile(_mlp(target), target=target, precision="fp16")
    accumulating = [i for i in program.instructions if i.opcode == "mxm.mm" and i.attrs.get("from_acc")]
    assert accumulating, "K was not split into accumulated chunks"
    feeds = _feeds(target)
    got = execute(program, feeds, interpret=interpret)["y"]
    assert got.shape == (SHAPES[target][0], SHAPES[target][2]) and got.dtype == np.float32
    assert _max_scaled_error(got, _reference(feeds, True).astype(np.float64)) < FP16_TOL


@pytest.mark.parametrize("target", ["tsp-v1", "tsp-mini"])
def test_fp32_matches_onnxruntime(target):
    model = _mlp(target)
    feeds = _feeds(target)
    got = lpuc.compile(model, target=target, precision="fp32").run(feeds)["y"]
    (want,) = run_onnxruntime(model, feeds)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
