"""lower_einsum: Einsum -> Transpose / Reshape / Gather / ReduceSum / MatMul / Mul, checked on the chip."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

import lpuc
from lpuc.errors import UnsupportedError
from lpuc.frontend.importer import import_model
from lpuc.ir.graph import Graph, Node, Value
from lpuc.passes.lower_einsum import lower_einsum, parse_equation
from tests.conformance.cases import all_cases, assert_outputs_match, normalize
from tests.models import export, ort_run


def einsum_model(
    equation: str, shapes: list[tuple[int, ...]], dtype: int = TensorProto.FLOAT
) -> onnx.ModelProto:
    inputs = [helper.make_tensor_value_info(f"x{i}", dtype, list(s)) for i, s in enumerate(shapes)]
    out_shape = np.einsum(equation, *[np.zeros(s) for s in shapes]).shape
    node = helper.make_node(
        "Einsum", [f"x{i}" for i in range(len(shapes))], ["y"], equation=equation, name="es"
    )
    graph = helper.make_graph(
        [node], "einsum", inputs, [helper.make_tensor_value_info("y", dtype, out_shape)]
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def lowered_ops(equation: str, shapes: list[tuple[int, ...]]) -> list[str]:
    graph = lower_einsum(import_model(einsum_model(equation, shapes), "test"))
    return [n.op for n in graph.nodes]


# -- IR ------------------------------------------------------------------------------------------


def test_attention_scores_become_one_batched_matmul():
    graph = lower_einsum(import_model(einsum_model("bhqd,bhkd->bhqk", [(2, 3, 4, 8), (2, 3, 6, 8)]), "test"))
    assert [n.op for n in graph.nodes] == ["Transpose", "MatMul"]
    matmul = graph.nodes[1]
    # Batch dims first; contracted d last on A and first on B.
    assert graph.values[matmul.inputs[0]].shape == (2, 3, 4, 8)
    assert graph.values[matmul.inputs[1]].shape == (2, 3, 8, 6)
    assert matmul.outputs == ("y",)


def test_attention_context_needs_no_data_movement():
    assert lowered_ops("bhqk,bhkd->bhqd", [(2, 3, 4, 6), (2, 3, 6, 8)]) == ["MatMul"]


def test_chain_of_three_operands_is_two_matmuls():
    assert lowered_ops("ij,jk,kl->il", [(2, 3), (3, 4), (4, 5)]) == ["MatMul", "MatMul"]


def test_inner_product_is_a_matmul_of_a_row_and_a_column():
    assert lowered_ops("i,i", [(5,), (5,)]) == ["Reshape", "Reshape", "MatMul", "Reshape"]


def test_diagonal_is_a_gather_of_the_flattened_axes():
    assert lowered_ops("...ii->...i", [(3, 5, 5)]) == ["Reshape", "Gather"]


def test_trace_sums_the_diagonal():
    assert lowered_ops("ii", [(4, 4)]) == ["Reshape", "Gather", "ReduceSum"]


def test_sum_and_transpose():
    assert lowered_ops("ij->i", [(3, 4)]) == ["ReduceSum"]
    assert lowered_ops("ij->ji", [(3, 4)]) == ["Transpose"]


def test_products_without_contraction_are_a_broadcasting_mul():
    assert lowered_ops("i,j->ij", [(3,), (4,)]) == ["Reshape", "Reshape", "Mul"]
    assert lowered_ops("ij,ij->ij", [(3, 4), (3, 4)]) == ["Mul"]


def test_batch_broadcast_over_a_shared_matrix_needs_no_transpose():
    ops = lowered_ops("...ij,...jk->...ik", [(1, 2, 3), (5, 3, 4)])
    assert "Transpose" not in ops and ops.count("MatMul") == 1


def test_lowering_is_deterministic():
    model = einsum_model("abc,cd,de->abe", [(2, 3, 4), (4, 5), (5, 6)])
    first, second = (lower_einsum(import_model(model, "test")) for _ in range(2))
    assert first.nodes == second.nodes
    assert list(first.values) == list(second.values)


def test_empty_operand_stays_on_the_host():
    assert lowered_ops("ij,jk->ik", [(3, 0), (0, 4)]) == ["Einsum"]


def test_parse_equation_labels_ellipsis_right_aligned_and_implicit_output():
    inputs, output = parse_equation("...ij, j...", [4, 2])
    assert inputs == [("...0", "...1", "i", "j"), ("j", "...1")]
    assert output == ("...0", "...1", "i")
    assert parse_equation("ij,jk", [2, 2])[1] == ("i", "k")


def test_an_equation_that_does_not_fit_is_an_unsupported_error_naming_the_node():
    x = Value("x", (3, 4), np.dtype(np.float32))
    y = Value("y", (3,), np.dtype(np.float32))
    node = Node("Einsum", "bad_einsum", ("x",), ("y",), {"equation": "ijk->i"}, "", 13)
    graph = Graph("g", [node], {"x": x, "y": y}, ["x"], ["y"], {"": 13})
    with pytest.raises(UnsupportedError, match="Einsum node 'bad_einsum'"):
        lower_einsum(graph)


# -- numerics on the chip -----------------------------------------------------------------------

EQUATIONS = [
    # ONNX node tests (onnx/backend/test/case/node/einsum.py)
    ("ij->ji", [(3, 4)]),
    ("ij->i", [(3, 4)]),
    ("...ii ->...i", [(3, 5, 5)]),
    ("i,i", [(5,), (5,)]),
    ("bij, bjk -> bik", [(5, 2, 3), (5, 3, 4)]),
    ("->", [()]),
    # transformer-style
    ("bhqd,bhkd->bhqk", [(2, 3, 4, 8), (2, 3, 6, 8)]),
    ("bhqk,bhkd->bhqd", [(2, 3, 4, 6), (2, 3, 6, 8)]),
    ("bij,bjk->bik", [(3, 4, 5), (3, 5, 6)]),
    ("i,i->", [(7,), (7,)]),
    ("bsd,df->bsf", [(2, 5, 8), (8, 12)]),
    ("bid,bjd->bij", [(2, 3, 5), (2, 4, 5)]),
    # implicit output, traces, diagonals, broadcasting, three operands
    ("ij,jk", [(3, 4), (4, 5)]),
    ("ii", [(4, 4)]),
    ("iij->j", [(3, 3, 4)]),
    ("iii->i", [(3, 3, 3)]),
    ("ijk,ikj->i", [(2, 3, 4), (2, 4, 3)]),
    ("ij,kj->ik", [(3, 4), (5, 4)]),
    ("i,j->ij", [(3,), (4,)]),
    ("ij,ij->ij", [(3, 4), (3, 4)]),
    ("...ij,...jk->...ik", [(2, 1, 3, 4), (2, 5, 4, 6)]),
    ("...ij,...jk->...ik", [(1, 2, 3), (5, 3, 4)]),
    ("...ij,...jk->...ik", [(5, 2, 3), (1, 3, 4)]),
    ("...j,j...", [(2, 3), (3, 2)]),
    ("j,bjk->bk", [(3,), (2, 3, 4)]),
    ("ij,jk->", [(3, 4), (4, 5)]),
    ("ij,jk,kl->il", [(2, 3), (3, 4), (4, 5)]),
    ("abc,cd,de->abe", [(2, 3, 4), (4, 5), (5, 6)]),
    ("bn,anm,bm->ba", [(2, 3), (4, 3, 5), (2, 5)]),
]


@pytest.mark.parametrize(("equation", "shapes"), EQUATIONS, ids=[e for e, _ in EQUATIONS])
def test_matches_onnxruntime_on_the_chip(equation, shapes):
    model = einsum_model(equation, shapes)
    rng = np.random.default_rng(0)
    feeds = {f"x{i}": rng.standard_normal(s).astype(np.float32) for i, s in enumerate(shapes)}
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, feeds
    )[0]
    program = lpuc.compile(model, precision="fp32", host_fallback=False)
    np.testing.assert_allclose(program.run(feeds)["y"], want, rtol=1e-4, atol=1e-5)


ONNX_CASES = [c for c in all_cases() if c.model.graph.node[0].op_type == "Einsum"]


@pytest.mark.parametrize("case", ONNX_CASES, ids=[c.name for c in ONNX_CASES])
def test_onnx_node_cases_on_the_chip(case):
    """All of onnx's Einsum node tests (float64 and bfloat16 ones too) run with no host op."""
    program = lpuc.compile(case.model, precision="fp32", host_fallback=False)
    names = [i.name for i in case.model.graph.input]
    for inputs, expected in case.data_sets:
        outputs = program.run({n: normalize(x) for n, x in zip(names, inputs)})
        assert_outputs_match(case, [outputs[o.name] for o in case.model.graph.output], expected)


class EinsumAttention(torch.nn.Module):
    """Projections and attention written with einsum, as some exported transformers are."""

    def __init__(self, dim: int = 32, heads: int = 4):
        super().__init__()
        self.heads = heads
        self.qkv = torch.nn.Parameter(torch.zeros(3, heads, dim // heads, dim))
        self.out = torch.nn.Parameter(torch.zeros(dim, heads, dim // heads))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = torch.einsum("bsd,thed->tbhse", x, self.qkv).unbind(0)
        probs = torch.softmax(torch.einsum("bhqe,bhke->bhqk", q, k), dim=-1)
        context = torch.einsum("bhqk,bhke->bhqe", probs, v)
        return torch.einsum("bhse,fhe->bsf", context, self.out)


def test_torch_einsum_attention_block_on_the_chip(tmp_path):
    path = export(EinsumAttention(), (torch.zeros(2, 8, 32),), tmp_path / "einsum.onnx", input_names=["x"])
    model = onnx.load(path)
    assert "Einsum" in {n.op_type for n in model.graph.node}
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 8, 32)).astype(np.float32)}
    want = ort_run(path, feeds)[0]
    got = lpuc.compile(model, precision="fp32", host_fallback=False).run(feeds)
    np.testing.assert_allclose(got[model.graph.output[0].name], want, rtol=1e-4, atol=1e-5)
