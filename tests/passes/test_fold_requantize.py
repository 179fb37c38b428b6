"""fold_requantize: a requantization chain (scales, bias, Relu, Round, Clip, Cast to int8) in fewer
VXM ALU ops, and SaturatingCast, the one-op rounding saturating cast it ends in. Numerics against
onnxruntime running the unfolded chain."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import lpuc
from lpuc.ir.graph import LPUC_DOMAIN
from lpuc.ir.verify import verify_graph
from lpuc.kernels.registry import KernelContext, run_kernel
from lpuc.ops import expression_alu_ops
from lpuc.passes.fold_requantize import fold_requantize
from lpuc.passes.pipeline import PassContext
from lpuc.target import load_target
from tests.passes.helpers import imported, ops, rand

_N = helper.make_node
ROWS, COLS = 64, 32


def _folded(m: onnx.ModelProto, precision: str = "fp16"):
    """The imported model after fold_requantize in a build of `precision`."""
    graph = fold_requantize(imported(m), PassContext(load_target("tsp-v1"), precision))
    verify_graph(graph)
    return graph


def _chain_model(nodes, inits: dict, out_type: int = TensorProto.INT8) -> onnx.ModelProto:
    """x [64, 32] float -> nodes -> q (int8 unless said otherwise)."""
    graph = helper.make_graph(
        nodes,
        "fold",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [ROWS, COLS])],
        [helper.make_tensor_value_info("q", out_type, [ROWS, COLS])],
        [numpy_helper.from_array(np.asarray(v), n) for n, v in inits.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def _bounds(lo: float, hi: float) -> dict:
    return {"lo": np.array(lo, np.float32), "hi": np.array(hi, np.float32)}


def _requantize_model() -> onnx.ModelProto:
    """(x * s1[n] + bias[n]) -> Relu -> * s2 -> Round -> Clip(-127, 127) -> Cast int8: what
    quantize_int8 leaves between two convolutions (s1 = s_a s_w[n] per channel, s2 = 1 / s_next)."""
    nodes = [
        _N("Mul", ["x", "s1"], ["a"]),
        _N("Add", ["a", "bias"], ["b"]),
        _N("Relu", ["b"], ["r"]),
        _N("Mul", ["r", "s2"], ["m"]),
        _N("Round", ["m"], ["o"]),
        _N("Clip", ["o", "lo", "hi"], ["c"]),
        _N("Cast", ["c"], ["q"], to=TensorProto.INT8),
    ]
    rng = np.random.default_rng(3)
    inits = {
        "s1": rng.uniform(0.5, 2.0, COLS).astype(np.float32),
        "bias": rand(COLS, seed=4),
        "s2": np.array(37.0, np.float32),
        **_bounds(-127, 127),
    }
    return _chain_model(nodes, inits)


def _onnxruntime(m: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def _maps_alu_ops(program) -> list[int]:
    return [i.work.alu_ops for i in program.instructions if i.opcode == "vxm.map"]


def test_requantize_chain_folds_into_one_multiply_add_a_relu_and_a_saturating_cast():
    m = _requantize_model()
    graph = _folded(m)
    # (the clip's lower bound 0 is a Relu: a unary VXM op, with no bound to stream to the VXM)
    assert ops(graph) == ["Mul", "Add", "Relu", "SaturatingCast"]
    mul, add, low, cast = graph.nodes
    assert cast.domain == LPUC_DOMAIN and cast.attrs["to"] == TensorProto.INT8
    const = {i: graph.values[i].const for n in graph.nodes for i in n.inputs if graph.is_const(i)}
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    # One multiply by s1 * s2 (per channel), one add of bias * s2, Relu as the clip's lower bound 0.
    np.testing.assert_allclose(const[mul.inputs[1]], inits["s1"] * 37.0, rtol=1e-7)
    np.testing.assert_allclose(const[add.inputs[1]], inits["bias"] * 37.0, rtol=1e-7)
    assert low.inputs == (add.outputs[0],)
    # 8 ALU ops per element before (Clip is a Max and a Min), 4 after.
    program = lpuc.compile(m, precision="fp16")
    unfolded = lpuc.compile(m, precision="fp16", disable_passes=["fold_requantize"])
    assert _maps_alu_ops(program) == [4] and _maps_alu_ops(unfolded) == [8]


def test_folded_requantize_matches_onnxruntime_within_the_last_float_bit():
    """The folded multiply-add rounds once where the chain rounds three times: a value within a
    float32 ulp of a .5 tie may land on the neighbouring integer, nothing more."""
    m = _requantize_model()
    program = lpuc.compile(m, precision="fp16")
    for seed in range(3):
        x = rand(ROWS, COLS, seed=seed) * 3
        got, want = program.run({"x": x})["q"], _onnxruntime(m, x)
        assert got.dtype == np.int8
        diff = np.abs(got.astype(np.int32) - want.astype(np.int32))
        assert diff.max() <= 1 and np.mean(diff == 0) >= 0.999, (diff.max(), np.mean(diff == 0))
        assert (want == 0).any() and (want == 127).any()  # the Relu and the clip both act


def test_fp32_builds_fold_only_what_keeps_the_bits():
    """fp32 promises onnxruntime's results: the scales are not composed there, only Round, Clip and
    Cast become one SaturatingCast (the Relu stays), and the int8 result is onnxruntime's exactly."""
    m = _requantize_model()
    assert ops(_folded(m, "fp32")) == ["Mul", "Add", "Relu", "Mul", "Max", "SaturatingCast"]
    program = lpuc.compile(m, precision="fp32")
    for seed in range(3):
        x = rand(ROWS, COLS, seed=seed) * 3
        np.testing.assert_array_equal(program.run({"x": x})["q"], _onnxruntime(m, x))


@pytest.mark.parametrize(
    "low, folded", [(-128, ["Mul", "SaturatingCast"]), (-127, ["Mul", "Max", "SaturatingCast"])]
)
def test_input_quantize_folds_bit_exactly(low, folded):
    """x * (1 / s) -> Round -> Clip(low, 127) -> Cast: one multiply, as before, so the same bits:
    ties round half to even, values past the range saturate. quantize_int8's bounds are int8's own
    (-128): the saturating cast alone gives them; a bound inside the type's range takes a Max."""
    nodes = [
        _N("Mul", ["x", "inv"], ["m"]),
        _N("Round", ["m"], ["o"]),
        _N("Clip", ["o", "lo", "hi"], ["c"]),
        _N("Cast", ["c"], ["q"], to=TensorProto.INT8),
    ]
    m = _chain_model(nodes, {"inv": np.array(40.0, np.float32), **_bounds(low, 127)})
    assert ops(_folded(m, "fp32")) == folded  # the same bits: fp32 builds fold it too
    program = lpuc.compile(m, precision="fp32")
    x = rand(ROWS, COLS, seed=5)
    x[0, :8] = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 1000, -1000], np.float32) / 40  # ties, range
    got, want = program.run({"x": x})["q"], _onnxruntime(m, x)
    np.testing.assert_array_equal(got, want)
    assert want.min() == low and want.max() == 127
    assert _maps_alu_ops(program) == [len(folded)]


def test_a_relu_an_add_follows_stays_and_what_follows_it_folds():
    """relu(x) + c does not commute with the Relu: it stays, and the chain after it folds (exactly:
    one add, one multiply by a power of two)."""
    nodes = [
        _N("Relu", ["x"], ["r"]),
        _N("Add", ["r", "c"], ["a"]),
        _N("Mul", ["a", "s"], ["m"]),
        _N("Round", ["m"], ["o"]),
        _N("Clip", ["o", "lo", "hi"], ["k"]),
        _N("Cast", ["k"], ["q"], to=TensorProto.INT8),
    ]
    inits = {"c": np.array(-0.75, np.float32), "s": np.array(16.0, np.float32), **_bounds(-127, 127)}
    m = _chain_model(nodes, inits)
    assert ops(_folded(m)) == ["Relu", "Mul", "Add", "Max", "SaturatingCast"]
    x = rand(ROWS, COLS, seed=6) * 4
    np.testing.assert_array_equal(lpuc.compile(m, precision="fp16").run({"x": x})["q"], _onnxruntime(m, x))


def test_chains_it_cannot_fold_stay():
    """A clip bound that is not an integer, or a value with a second reader, leaves the chain as is."""
    nodes = [
        _N("Mul", ["x", "inv"], ["m"]),
        _N("Round", ["m"], ["o"]),
        _N("Clip", ["o", "lo", "hi"], ["c"]),
        _N("Cast", ["c"], ["q"], to=TensorProto.INT8),
    ]
    inits = {"inv": np.array(40.0, np.float32)}
    fractional = _chain_model(nodes, {**inits, **_bounds(-126.5, 127)})
    assert ops(_folded(fractional)) == ["Mul", "Round", "Clip", "Cast"]
    shared = _chain_model([*nodes, _N("Add", ["o", "o"], ["o2"])], {**inits, **_bounds(-127, 127)})
    shared.graph.output.append(helper.make_tensor_value_info("o2", TensorProto.FLOAT, [ROWS, COLS]))
    assert ops(_folded(shared))[:4] == ["Mul", "Round", "Clip", "Cast"]


def test_saturating_cast_is_onnx_quantize_linear_with_unit_scale():
    """SaturatingCast rounds half to even and saturates to the type's range: onnxruntime's
    QuantizeLinear(x, 1, 0) computes the same, for int8 and uint8. It is one ALU op."""
    x = np.concatenate([np.arange(-300, 300, 0.25), [-0.5, 0.5, 1.5, 2.5, 126.5, 127.5, -128.5]])
    x = x.astype(np.float32).reshape(1, -1)
    for code, zero in ((TensorProto.INT8, np.int8(0)), (TensorProto.UINT8, np.uint8(0))):
        graph = helper.make_graph(
            [_N("QuantizeLinear", ["x", "one", "zero"], ["q"])],
            "q",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
            [helper.make_tensor_value_info("q", code, list(x.shape))],
            [
                numpy_helper.from_array(np.array(1, np.float32), "one"),
                numpy_helper.from_array(np.array(zero), "zero"),
            ],
        )
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
        want = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            None, {"x": x}
        )[0]
        (got,) = run_kernel(KernelContext("SaturatingCast", {"to": code}, 1, 1, LPUC_DOMAIN), [x])
        np.testing.assert_array_equal(got, want)
        assert got.dtype == want.dtype
    assert expression_alu_ops([{"op": "SaturatingCast", "domain": LPUC_DOMAIN, "args": ["i0"]}]) == 1


def test_qlinear_requantization_with_a_zero_point_folds():
    """lower_quantized's QLinearMatMul requantization, Cast(acc + zero-point term) * m -> Round -> + z_y
    -> Clip(0, 255) -> Cast uint8 (8 ALU ops), becomes Cast(acc), one multiply-add (the int32 term
    and z_y in its offset) and a SaturatingCast (4), within one quantization step of onnxruntime."""
    rng = np.random.default_rng(2)
    a = rng.integers(0, 256, (6, 400)).astype(np.uint8)
    inits = {
        "as": np.float32(0.02),
        "az": np.array(120, np.uint8),
        # |w| <= 63: onnxruntime's uint8 x int8 kernel saturates pairs of products in int16 beyond.
        "w": rng.integers(-63, 64, (400, 12)).astype(np.int8),
        "ws": np.float32(0.01),
        "wz": np.array(0, np.int8),
        "ys": np.float32(2.0),
        "yz": np.array(100, np.uint8),
    }
    graph = helper.make_graph(
        [_N("QLinearMatMul", ["a", "as", "az", "w", "ws", "wz", "ys", "yz"], ["y"])],
        "qlinear",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [6, 400])],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, [6, 12])],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    apart = ["mxm_epilogues", "map_chains"]  # the requantization stays a map of its own, to count its ops
    program = lpuc.compile(m, disable_passes=apart)
    unfolded = lpuc.compile(m, disable_passes=[*apart, "fold_requantize"])
    assert _maps_alu_ops(program)[-1] == 4 and _maps_alu_ops(unfolded)[-1] == 8
    session = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    want = session.run(None, {"a": a})[0].astype(np.int64)
    for build in (program, lpuc.compile(m)):  # with the requantization fused into the matmul too
        got = build.run({"a": a})["y"]
        assert got.dtype == np.uint8 and np.abs(got.astype(np.int64) - want).max() <= 1
    assert len(np.unique(want)) > 20  # the values spread over the range, not all clipped
