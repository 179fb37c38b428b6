"""fuse_gelu: decomposed GELU (erf and tanh forms) -> one Gelu op, checked against onnxruntime on the
original (unfused) model."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import lpuc
from lpuc.frontend.importer import import_model
from lpuc.passes.fuse_gelu import fuse_gelu, match_gelus
from tests.models import export, ort_run
from tests.passes.helpers import assert_matches_onnxruntime, imported, ops, rand, run_pass

SHAPE = [4, 96]
_N = helper.make_node

# The outer product x * 0.5 * p, p = 1 + Erf/Tanh(...), in several associations and orders.
PRODUCTS = {
    "(x*p)*half": [_N("Mul", ["x", "p"], ["xp"], "m1"), _N("Mul", ["xp", "half"], ["y"], "m2")],
    "half*(p*x)": [_N("Mul", ["p", "x"], ["px"], "m1"), _N("Mul", ["half", "px"], ["y"], "m2")],
    "(x*half)*p": [_N("Mul", ["x", "half"], ["xh"], "m1"), _N("Mul", ["xh", "p"], ["y"], "m2")],
    "x*(half*p)": [_N("Mul", ["half", "p"], ["hp"], "m1"), _N("Mul", ["x", "hp"], ["y"], "m2")],
    "(x/2)*p": [_N("Div", ["x", "two"], ["xh"], "m1"), _N("Mul", ["p", "xh"], ["y"], "m2")],
    "(x*p)/2": [_N("Mul", ["x", "p"], ["xp"], "m1"), _N("Div", ["xp", "two"], ["y"], "m2")],
}


def gelu_model(
    form: str = "erf",
    product: str = "(x*p)*half",
    scale: str = "div",
    cube: str = "pow",
    opset: int = 17,
    consts: dict | None = None,
    dtype: int = TensorProto.FLOAT,
    extra_outputs: tuple[str, ...] = (),
) -> onnx.ModelProto:
    if form == "erf":
        nodes = [
            _N("Div", ["x", "sqrt2"], ["u"], "scale")
            if scale == "div"
            else _N("Mul", ["rsqrt2", "x"], ["u"], "scale"),
            _N("Erf", ["u"], ["e"], "erf"),
        ]
    else:
        cube_nodes = (
            [_N("Pow", ["x", "three"], ["x3"], "cube")]
            if cube == "pow"
            else [_N("Mul", ["x", "x"], ["x2"], "square"), _N("Mul", ["x2", "x"], ["x3"], "cube")]
        )
        nodes = cube_nodes + [
            _N("Mul", ["c", "x3"], ["cx3"], "mul_c"),
            _N("Add", ["x", "cx3"], ["inner"], "add_inner"),
            _N("Mul", ["inner", "k"], ["u"], "scale"),
            _N("Tanh", ["u"], ["e"], "tanh"),
        ]
    nodes += [_N("Add", ["one", "e"], ["p"], "one_plus"), *PRODUCTS[product]]
    np_dtype = helper.tensor_dtype_to_np_dtype(dtype)
    values = {
        "sqrt2": math.sqrt(2),
        "rsqrt2": math.sqrt(0.5),
        "three": 3.0,
        "c": 0.044715,
        "k": math.sqrt(2 / math.pi),
        "one": 1.0,
        "half": 0.5,
        "two": 2.0,
        **(consts or {}),
    }
    inits = [numpy_helper.from_array(np.array(v, np_dtype), k) for k, v in values.items()]
    outputs = [helper.make_tensor_value_info(n, dtype, SHAPE) for n in ("y", *extra_outputs)]
    graph = helper.make_graph(
        nodes, "gelu", [helper.make_tensor_value_info("x", dtype, SHAPE)], outputs, inits
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize("product", sorted(PRODUCTS))
@pytest.mark.parametrize("form", ["erf", "tanh"])
def test_every_association_fuses_and_matches_onnxruntime(form, product):
    m = gelu_model(form, product)
    fused = run_pass(fuse_gelu, imported(m))
    assert ops(fused) == ["Gelu"]
    assert fused.nodes[0].attrs == {"approximate": "none" if form == "erf" else "tanh"}
    assert fused.nodes[0].outputs == ("y",)
    assert_matches_onnxruntime(m, {"x": rand(*SHAPE) * 3})


@pytest.mark.parametrize("form, variant", [("erf", {"scale": "mul"}), ("tanh", {"cube": "mul"})])
def test_other_spellings_fuse(form, variant):
    m = gelu_model(form, **variant)
    assert ops(run_pass(fuse_gelu, imported(m))) == ["Gelu"]
    assert_matches_onnxruntime(m, {"x": rand(*SHAPE) * 3})


def test_two_operand_sum_counts_as_add():
    """ONNX's own Gelu function body writes 1 + Erf(...) as Sum."""
    m = gelu_model("tanh")
    for n in m.graph.node:
        if n.op_type == "Add":
            n.op_type = "Sum"
    assert ops(run_pass(fuse_gelu, imported(m))) == ["Gelu"]
    assert_matches_onnxruntime(m, {"x": rand(*SHAPE) * 3})


def test_rounded_constants_within_1e_3_fuse():
    m = gelu_model(consts={"sqrt2": 1.4142, "rsqrt2": 0.7071})
    assert ops(run_pass(fuse_gelu, imported(m))) == ["Gelu"]
    m = gelu_model(scale="mul", consts={"rsqrt2": 0.7071})
    assert ops(run_pass(fuse_gelu, imported(m))) == ["Gelu"]


@pytest.mark.parametrize("form", ["erf", "tanh"])
def test_float16_fuses(form):
    m = gelu_model(form, dtype=TensorProto.FLOAT16)
    assert ops(run_pass(fuse_gelu, imported(m))) == ["Gelu"]
    assert_matches_onnxruntime(m, {"x": rand(*SHAPE).astype(np.float16)}, rtol=2e-2, atol=1e-3)


def test_nothing_to_do():
    # An Erf and a Tanh that are not part of a GELU: no candidate, no refusal.
    graph = helper.make_graph(
        [
            _N("Erf", ["x"], ["e"], "erf"),
            _N("Tanh", ["e"], ["t"], "tanh"),
            _N("Add", ["t", "x"], ["y"], "add"),
        ],
        "plain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, SHAPE)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, SHAPE)],
    )
    g = imported(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert match_gelus(g) == ([], [])
    assert fuse_gelu(g) is g


@pytest.mark.parametrize(
    "kwargs, anchor, reason",
    [
        ({"extra_outputs": ("e",)}, "erf", "intermediate 'e' is a graph output"),
        ({"consts": {"half": 0.6}}, "erf", "factor 'half' of the product is neither x nor 0.5"),
        ({"consts": {"one": 2.0}}, "erf", "Add 'one_plus' does not add 1 to the Erf"),
        ({"form": "tanh", "consts": {"c": 0.05}}, "tanh", "Add 'add_inner' is not x + 0.044715 * x^3"),
        ({"dtype": TensorProto.DOUBLE}, "erf", "'x' is float64: only float32 and float16 are fused"),
    ],
)
def test_refusals_keep_the_graph_and_say_why(kwargs, anchor, reason):
    m = gelu_model(**kwargs)
    graph = imported(m)
    fusions, refusals = match_gelus(graph)
    assert fusions == []
    assert [(r.anchor, r.reason) for r in refusals] == [(anchor, reason)]
    assert ops(run_pass(fuse_gelu, graph)) == ops(graph)
    if "dtype" not in kwargs:
        assert_matches_onnxruntime(m, {"x": rand(*SHAPE)})


def test_shared_intermediate_is_refused():
    m = gelu_model()
    m.graph.node.append(_N("Neg", ["p"], ["neg_p"], "other_user"))
    m.graph.output.append(helper.make_tensor_value_info("neg_p", TensorProto.FLOAT, SHAPE))
    fusions, refusals = match_gelus(imported(m))
    assert fusions == []
    assert [(r.anchor, r.reason) for r in refusals] == [
        ("erf", "intermediate 'p' is also read by Neg 'other_user'")
    ]


def test_product_with_another_value_is_refused():
    m = gelu_model()
    m.graph.input.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, SHAPE))
    for n in m.graph.node:
        if n.name == "m1":
            n.input[0] = "z"  # z * 0.5 * (1 + erf(x / sqrt2)): not a GELU of x
    _, refusals = match_gelus(imported(m))
    assert refusals[0].reason == "factor 'z' of the product is neither x nor 0.5"


def test_model_below_opset_20_still_gets_gelu(tmp_path):
    """Gelu is opset 20; the fused node records the passes' opset and its kernel reads none, so a
    model importing opset 13 compiles, and the dumped IR passes the ONNX checker."""
    m = gelu_model(opset=13)
    program = assert_matches_onnxruntime(m, {"x": rand(*SHAPE)}, dump_ir=tmp_path)
    assert program.summary["instructions_by_opcode"]
    dumped = onnx.load(sorted(tmp_path.glob("*_fuse_gelu.onnx"))[0])
    onnx.checker.check_model(dumped)
    assert [n.op_type for n in dumped.graph.node] == ["Gelu"]


class ExplicitGelus(torch.nn.Module):
    """Both GELU forms the way model code writes them, between two projections."""

    def __init__(self, width: int = 64):
        super().__init__()
        self.fc1 = torch.nn.Linear(width, width)
        self.fc2 = torch.nn.Linear(width, width)

    def forward(self, x):
        h = self.fc1(x)
        h = 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * torch.pow(h, 3))))
        return torch.nn.functional.gelu(self.fc2(h))


@pytest.fixture(scope="module")
def explicit_gelus_onnx(tmp_path_factory):
    path = tmp_path_factory.mktemp("gelus") / "gelus.onnx"
    return export(ExplicitGelus(), (torch.zeros(2, 16, 64),), path, input_names=["x"], opset_version=17)


def test_torch_exported_gelus_fuse_and_are_cheaper(explicit_gelus_onnx):
    model = onnx.load(explicit_gelus_onnx)
    assert model.opset_import[0].version == 17
    fusions, refusals = match_gelus(import_model(model, "gelus"))
    assert sorted(f.attrs["approximate"] for f in fusions) == ["none", "tanh"]
    assert refusals == []
    x = rand(2, 16, 64, seed=7)
    want = ort_run(explicit_gelus_onnx, {"x": x})[0]
    fused = lpuc.compile(explicit_gelus_onnx, precision="fp32", host_fallback=False)
    np.testing.assert_allclose(next(iter(fused.run({"x": x}).values())), want, rtol=1e-4, atol=1e-5)
    plain = lpuc.compile(explicit_gelus_onnx, precision="fp32", disable_passes=("fuse_gelu",))
    assert fused.summary["cycles"] < plain.summary["cycles"]
    # As many instructions: without fuse_gelu the bias add stays apart from the GELU pieces; it fuses
    # into its MM (mxm_epilogues) or joins their map (map_chains). Only without both is it an extra map.
    assert fused.summary["instructions"] <= plain.summary["instructions"]
    alone = ("mxm_epilogues", "map_chains")
    apart = lpuc.compile(explicit_gelus_onnx, precision="fp32", disable_passes=("fuse_gelu", *alone))
    with_gelus = lpuc.compile(explicit_gelus_onnx, precision="fp32", disable_passes=alone)
    assert with_gelus.summary["instructions"] < apart.summary["instructions"]


def test_broadcasting_constant_is_refused():
    m = gelu_model()
    for init in m.graph.initializer:
        if init.name == "half":
            init.CopyFrom(numpy_helper.from_array(np.full((1, 1, 1), 0.5, np.float32), "half"))
    m.graph.output[0].type.tensor_type.shape.dim.insert(0, onnx.TensorShapeProto.Dimension(dim_value=1))
    _, refusals = match_gelus(imported(m))
    assert [r.reason for r in refusals] == ["the result 'y' (1, 4, 96) is not shaped like 'x' (4, 96)"]
