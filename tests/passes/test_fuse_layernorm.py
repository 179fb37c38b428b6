"""fuse_layernorm: decomposed LayerNorm / RMSNorm -> one row-wise kernel, checked against onnxruntime
on the original (unfused) model."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import lpuc
from lpuc.frontend.importer import import_model
from lpuc.passes.fuse_layernorm import fuse_layernorm, match_norms
from tests.models import export, ort_run
from tests.passes.helpers import assert_matches_onnxruntime, imported, ops, rand, run_pass

SHAPE = [2, 8, 64]
EPS = 1e-5


def _mean(name: str, x: str, opset: int, axes=(-1,), keepdims: int = 1) -> list:
    """ReduceMean with axes as an attribute (opset < 18) or a constant input."""
    if opset < 18:
        return [helper.make_node("ReduceMean", [x], [name], name, axes=list(axes), keepdims=keepdims)]
    axes_name = f"{name}_axes"
    const = helper.make_node(
        "Constant", [], [axes_name], f"{name}_c", value=numpy_helper.from_array(np.array(axes, np.int64))
    )
    return [const, helper.make_node("ReduceMean", [x, axes_name], [name], name, keepdims=keepdims)]


def layernorm_model(
    opset: int = 18,
    square: str = "pow",
    divide: str = "div",
    gamma: bool = True,
    beta: bool = True,
    axes=(-1,),
    mean_also_output: bool = False,
    gamma_input: bool = False,
    dtype: int = TensorProto.FLOAT,
) -> onnx.ModelProto:
    np_dtype = helper.tensor_dtype_to_np_dtype(dtype)
    nodes = _mean("mean", "x", opset, axes)
    nodes.append(helper.make_node("Sub", ["x", "mean"], ["d"], "sub"))
    if square == "pow":
        nodes.append(helper.make_node("Pow", ["d", "two"], ["sq"], "pow"))
    else:
        nodes.append(helper.make_node("Mul", ["d", "d"], ["sq"], "square"))
    nodes += _mean("var", "sq", opset, axes)
    nodes.append(helper.make_node("Add", ["eps", "var"], ["ve"], "add_eps"))  # eps first: commuted
    nodes.append(helper.make_node("Sqrt", ["ve"], ["std"], "sqrt"))
    if divide == "div":
        nodes.append(helper.make_node("Div", ["d", "std"], ["y"], "div"))
    elif divide == "reciprocal":
        nodes.append(helper.make_node("Reciprocal", ["std"], ["inv"], "reciprocal"))
        nodes.append(helper.make_node("Mul", ["inv", "d"], ["y"], "mul_inv"))
    else:  # 1 / std
        nodes.append(helper.make_node("Div", ["one", "std"], ["inv"], "one_over"))
        nodes.append(helper.make_node("Mul", ["d", "inv"], ["y"], "mul_inv"))
    out = "y"
    if gamma:
        nodes.append(helper.make_node("Mul", ["gamma", out], ["scaled"], "mul_gamma"))
        out = "scaled"
    if beta:
        nodes.append(helper.make_node("Add", [out, "beta"], ["shifted"], "add_beta"))
        out = "shifted"
    nodes.append(helper.make_node("Identity", [out], ["out"], "out"))
    rng = np.random.default_rng(3)
    inits = {
        "two": np.array(2, np_dtype),
        "eps": np.array(EPS, np_dtype),
        "one": np.array(1, np_dtype),
        "beta": rng.standard_normal(SHAPE[-1]).astype(np_dtype),
    }
    inputs = [helper.make_tensor_value_info("x", dtype, SHAPE)]
    if gamma_input:
        inputs.append(helper.make_tensor_value_info("gamma", dtype, [SHAPE[-1]]))
    else:
        inits["gamma"] = rng.standard_normal(SHAPE[-1]).astype(np_dtype)
    outputs = [helper.make_tensor_value_info("out", dtype, SHAPE)]
    if mean_also_output:
        outputs.append(helper.make_tensor_value_info("mean", dtype, [*SHAPE[:-1], 1]))
    graph = helper.make_graph(
        nodes,
        "ln",
        inputs,
        outputs,
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def rms_model(square: str = "mul", gamma: bool = True, opset: int = 18) -> onnx.ModelProto:
    nodes = [
        helper.make_node("Mul", ["x", "x"], ["sq"], "square")
        if square == "mul"
        else helper.make_node("Pow", ["x", "two"], ["sq"], "pow")
    ]
    nodes += _mean("ms", "sq", opset)
    nodes += [
        helper.make_node("Add", ["ms", "eps"], ["ve"], "add_eps"),
        helper.make_node("Sqrt", ["ve"], ["rms"], "sqrt"),
        helper.make_node("Reciprocal", ["rms"], ["inv"], "reciprocal"),
        helper.make_node("Mul", ["x", "inv"], ["y"], "normalize"),
    ]
    if gamma:
        nodes.append(helper.make_node("Mul", ["y", "gamma"], ["out"], "mul_gamma"))
    else:
        nodes.append(helper.make_node("Identity", ["y"], ["out"], "out"))
    inits = {
        "two": np.array(2, np.float32),
        "eps": np.array(1e-6, np.float32),
        "gamma": rand(SHAPE[-1], seed=4),
    }
    graph = helper.make_graph(
        nodes,
        "rms",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, SHAPE)],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, SHAPE)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _fused(m: onnx.ModelProto):
    return run_pass(fuse_layernorm, imported(m))


@pytest.mark.parametrize(
    "opset, square, divide, gamma, beta",
    [
        (18, "pow", "div", True, True),
        (18, "mul", "reciprocal", True, False),
        (17, "mul", "one_over", False, True),
        (13, "pow", "div", False, False),
    ],
)
def test_layernorm_variants_fuse_and_match_onnxruntime(opset, square, divide, gamma, beta):
    m = layernorm_model(opset, square, divide, gamma, beta)
    fused = _fused(m)
    assert ops(fused) == ["LayerNormalization", "Identity"]
    node = fused.nodes[0]
    assert node.attrs["axis"] == -1 and node.attrs["epsilon"] == pytest.approx(EPS)
    assert len(node.inputs) == (3 if beta else 2)
    if not gamma:
        np.testing.assert_array_equal(fused.values[node.inputs[1]].const, np.ones(SHAPE[-1], np.float32))
    assert_matches_onnxruntime(m, {"x": rand(*SHAPE) * 3 + 1})


def test_opset13_attribute_axes_in_the_ir():
    """The frontend converts old models to opset 21; a node still at opset 13 reads axes as an
    attribute, and the rule reads them the same way."""
    graph = imported(layernorm_model(18))
    old = []
    for n in graph.nodes:
        if n.op == "ReduceMean":
            axes = [int(a) for a in graph.values[n.inputs[1]].const]
            n = n.with_(inputs=n.inputs[:1], attrs={"axes": axes, "keepdims": 1}, opset=13)
        old.append(n)
    fused = run_pass(fuse_layernorm, graph.copy(nodes=old).prune_values())
    assert ops(fused) == ["LayerNormalization", "Identity"]


def test_rmsnorm_fuses_to_rmsnormalization_and_matches_onnxruntime():
    m = rms_model()
    fused = _fused(m)
    assert ops(fused) == ["RMSNormalization"]
    assert fused.nodes[0].opset == 23
    assert fused.nodes[0].attrs["epsilon"] == pytest.approx(1e-6)
    assert_matches_onnxruntime(m, {"x": rand(*SHAPE)})
    assert ops(_fused(rms_model("pow", gamma=False))) == ["RMSNormalization", "Identity"]


def test_float16_layernorm_fuses():
    m = layernorm_model(dtype=TensorProto.FLOAT16)
    fused = _fused(m)
    assert ops(fused) == ["LayerNormalization", "Identity"]
    assert fused.values[fused.nodes[0].inputs[1]].dtype == np.float16
    # The fused kernel standardizes in float32, the decomposed chain in float16: fp16 tolerances.
    assert_matches_onnxruntime(m, {"x": rand(*SHAPE).astype(np.float16)}, rtol=2e-2, atol=1e-2)


def test_nothing_to_do():
    # A mean and a centered value, but no variance: no candidate, no refusal.
    nodes = _mean("mean", "x", 18) + [helper.make_node("Sub", ["x", "mean"], ["y"], "sub")]
    graph = imported(_plain_model(nodes))
    assert match_norms(graph) == ([], [])
    assert fuse_layernorm(graph) is graph


def _plain_model(nodes) -> onnx.ModelProto:
    return helper.make_model(
        helper.make_graph(
            nodes,
            "plain",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, SHAPE)],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, SHAPE)],
        ),
        opset_imports=[helper.make_opsetid("", 18)],
    )


@pytest.mark.parametrize(
    "kwargs, reason",
    [
        ({"mean_also_output": True}, "intermediate 'mean' is a graph output"),
        ({"axes": (1,)}, "reduces axes [1], not only the last axis"),
        ({"axes": (1, 2)}, "reduces axes [1, 2], not only the last axis"),
        ({"dtype": TensorProto.DOUBLE}, "only float32 and float16 are fused"),
    ],
)
def test_refusals_keep_the_graph_and_say_why(kwargs, reason):
    m = layernorm_model(**kwargs)
    graph = imported(m)
    fusions, refusals = match_norms(graph)
    assert fusions == []
    assert [r.anchor for r in refusals] == ["var"]
    assert reason in refusals[0].reason
    assert ops(run_pass(fuse_layernorm, graph)) == ops(graph)
    if kwargs.get("dtype") is None:
        assert_matches_onnxruntime(m, {"x": rand(*SHAPE)})


def test_shared_intermediate_is_refused():
    m = layernorm_model()
    m.graph.node.append(helper.make_node("Neg", ["d"], ["neg_d"], "other_user"))
    m.graph.output.append(helper.make_tensor_value_info("neg_d", TensorProto.FLOAT, SHAPE))
    fusions, refusals = match_norms(imported(m))
    assert fusions == []
    assert refusals[0].reason == "intermediate 'd' is also read by Neg 'other_user'"


def test_non_constant_gamma_is_kept_as_a_mul():
    m = layernorm_model(gamma_input=True)
    graph = imported(m)
    fusions, refusals = match_norms(graph)
    assert len(fusions) == 1 and fusions[0].op == "LayerNormalization"
    assert [(r.anchor, r.reason) for r in refusals] == [
        ("mul_gamma", "scale 'gamma' is not a constant: Mul 'mul_gamma' kept")
    ]
    fused = run_pass(fuse_layernorm, graph)
    # The norm is fused without gamma; the Add of beta no longer follows it directly.
    assert ops(fused) == ["LayerNormalization", "Mul", "Add", "Identity"]
    feeds = {"x": rand(*SHAPE), "gamma": rand(SHAPE[-1], seed=5)}
    assert_matches_onnxruntime(m, feeds)


def test_epsilon_must_be_a_constant():
    m = layernorm_model()
    m.graph.input.append(helper.make_tensor_value_info("eps_in", TensorProto.FLOAT, []))
    for n in m.graph.node:
        if n.name == "add_eps":
            n.input[0] = "eps_in"
    _, refusals = match_norms(imported(m))
    assert "does not add a constant scalar epsilon" in refusals[0].reason


class ExplicitNorms(torch.nn.Module):
    """LayerNorm and RMSNorm written out as formulas, the way model code often does."""

    def __init__(self, width: int = 64):
        super().__init__()
        self.gamma = torch.nn.Parameter(torch.ones(width))
        self.beta = torch.nn.Parameter(torch.zeros(width))
        self.proj = torch.nn.Linear(width, width)

    def forward(self, x):
        mean = x.mean(-1, keepdim=True)
        y = (x - mean) / torch.sqrt(x.var(-1, keepdim=True, unbiased=False) + 1e-5)
        y = self.proj(y * self.gamma + self.beta)
        return y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + 1e-6)


@pytest.fixture(scope="module")
def explicit_norms_onnx(tmp_path_factory):
    path = tmp_path_factory.mktemp("norms") / "norms.onnx"
    return export(ExplicitNorms(), (torch.zeros(2, 16, 64),), path, input_names=["x"], opset_version=17)


def test_torch_exported_norms_fuse_and_are_cheaper(explicit_norms_onnx):
    model = onnx.load(explicit_norms_onnx)
    assert model.opset_import[0].version == 17
    fusions, refusals = match_norms(import_model(model, "norms"))
    assert sorted(f.op for f in fusions) == ["LayerNormalization", "RMSNormalization"]
    assert refusals == []
    x = rand(2, 16, 64, seed=7)
    want = ort_run(explicit_norms_onnx, {"x": x})[0]
    fused = lpuc.compile(explicit_norms_onnx, precision="fp32", host_fallback=False)
    np.testing.assert_allclose(next(iter(fused.run({"x": x}).values())), want, rtol=1e-4, atol=1e-5)
    plain = lpuc.compile(explicit_norms_onnx, precision="fp32", disable_passes=("fuse_layernorm",))
    np.testing.assert_allclose(next(iter(plain.run({"x": x}).values())), want, rtol=1e-4, atol=1e-5)
    assert fused.summary["instructions"] < plain.summary["instructions"]
    assert fused.summary["cycles"] < plain.summary["cycles"]


def test_dumped_ir_with_fused_norms_passes_the_onnx_checker(tmp_path):
    lpuc.compile(rms_model(), precision="fp32", dump_ir=tmp_path)
    stage = sorted(tmp_path.glob("*_fuse_layernorm.onnx"))[0]
    dumped = onnx.load(stage)
    onnx.checker.check_model(dumped)
    assert "RMSNormalization" in [n.op_type for n in dumped.graph.node]
