"""Unit tests of the core graph passes: the IR change each makes, what it leaves alone, and that
numerics are unchanged end to end (against onnxruntime)."""

from __future__ import annotations

import numpy as np
from onnx import helper

from lpuc.passes.canonicalize_matmul import canonicalize_matmul
from lpuc.passes.canonicalize_ops import canonicalize_ops
from lpuc.passes.eliminate_dead_code import eliminate_dead_code
from lpuc.passes.eliminate_identity import eliminate_identity
from lpuc.passes.fold_batchnorm import fold_batchnorm
from lpuc.passes.fold_constants import fold_constants
from lpuc.passes.fuse_elementwise import fuse_elementwise
from lpuc.passes.legalize_broadcast import legalize_broadcast, operand_mode
from lpuc.passes.lower_conv import lower_conv
from lpuc.passes.lower_gemm import lower_gemm
from tests.passes.helpers import assert_matches_onnxruntime, imported, model, ops, rand, run_pass

N = helper.make_node


def test_fold_constants_evaluates_constant_subgraphs():
    m = model(
        [N("Add", ["c1", "c2"], ["c3"]), N("Mul", ["x", "c3"], ["y"])],
        {"x": [4]},
        {"y": [4]},
        {"c1": np.ones(4, np.float32), "c2": np.full(4, 2, np.float32)},
    )
    g = imported(m)  # the importer already folds as it goes
    assert ops(g) == ["Mul"] and np.array_equal(g.values["c3"].const, np.full(4, 3, np.float32))
    assert run_pass(fold_constants, g).nodes == g.nodes  # nothing left to fold


def test_shape_of_static_value_is_folded():
    m = model([N("Shape", ["x"], ["s"]), N("Reshape", ["x", "s"], ["y"])], {"x": [2, 3]}, {"y": [2, 3]})
    assert ops(imported(m)) == ["Reshape"]


def test_eliminate_identity_and_inference_dropout():
    m = model(
        [N("Identity", ["x"], ["a"]), N("Dropout", ["a"], ["b"]), N("Relu", ["b"], ["y"])],
        {"x": [4]},
        {"y": [4]},
    )
    g = run_pass(eliminate_identity, imported(m))
    assert ops(g) == ["Relu"] and g.nodes[0].inputs == ("x",)


def test_eliminate_identity_removes_dropout_whose_named_mask_nothing_reads():
    # torch names Dropout's mask output even when nothing reads it (SqueezeNet's export)
    m = model([N("Dropout", ["x"], ["a", "mask"]), N("Relu", ["a"], ["y"])], {"x": [4]}, {"y": [4]})
    g = run_pass(eliminate_identity, imported(m))
    assert ops(g) == ["Relu"] and g.nodes[0].inputs == ("x",)
    assert_matches_onnxruntime(m, {"x": rand(4)})


def test_eliminate_identity_keeps_dropout_whose_mask_is_read():
    m = model(
        [N("Dropout", ["x"], ["a", "mask"]), N("Cast", ["mask"], ["m"], to=1), N("Add", ["a", "m"], ["y"])],
        {"x": [4]},
        {"y": [4]},
    )
    assert "Dropout" in ops(run_pass(eliminate_identity, imported(m)))


def test_eliminate_identity_keeps_graph_outputs():
    m = model([N("Identity", ["x"], ["y"])], {"x": [4]}, {"y": [4]})
    assert ops(run_pass(eliminate_identity, imported(m))) == ["Identity"]


def test_lower_gemm_folds_transpose_and_scales():
    m = model(
        [N("Gemm", ["x", "w", "c"], ["y"], transB=1, alpha=0.5, beta=2.0)],
        {"x": [3, 4]},
        {"y": [3, 5]},
        {"w": rand(5, 4), "c": rand(5, seed=1)},
    )
    g = run_pass(lower_gemm, imported(m))
    assert ops(g) == ["MatMul", "Add"]
    assert g.values[g.nodes[0].inputs[1]].shape == (4, 5)  # transposed and scaled at compile time
    assert_matches_onnxruntime(m, {"x": rand(3, 4, seed=2)})


def test_fuse_elementwise_merges_a_chain():
    m = model(
        [N("Mul", ["x", "s"], ["a"]), N("Add", ["a", "b"], ["c"]), N("Tanh", ["c"], ["y"])],
        {"x": [2, 8]},
        {"y": [2, 8]},
        {"s": rand(8), "b": rand(8, seed=1)},
    )
    g = run_pass(fuse_elementwise, imported(m))
    assert ops(g) == ["Fused"]
    assert [s["op"] for s in g.nodes[0].attrs["expr"]] == ["Mul", "Add", "Tanh"]
    assert_matches_onnxruntime(m, {"x": rand(2, 8, seed=3)})


def test_fuse_elementwise_stops_at_shared_values_and_broadcasts():
    m = model(
        [
            N("Exp", ["x"], ["a"]),
            N("Add", ["a", "a"], ["b"]),
            N("Relu", ["a"], ["c"]),
            N("Mul", ["b", "c"], ["y"]),
        ],
        {"x": [4]},
        {"y": [4]},
    )
    g = run_pass(fuse_elementwise, imported(m))
    assert "Exp" in ops(g)  # `a` has two consumers: computed once, not fused twice
    assert_matches_onnxruntime(m, {"x": rand(4)})


def test_legalize_broadcast_modes():
    assert operand_mode((2, 8), (2, 8)) == "tile"
    assert operand_mode((8,), (2, 8)) == "row"
    assert operand_mode((1,), (2, 8)) == "scalar"
    assert operand_mode((2, 1), (2, 8)) is None
    m = model([N("Add", ["x", "z"], ["y"])], {"x": [3, 8], "z": [3, 1]}, {"y": [3, 8]})
    g = run_pass(legalize_broadcast, imported(m))
    assert ops(g) == ["Expand", "Add"]
    assert_matches_onnxruntime(m, {"x": rand(3, 8), "z": rand(3, 1, seed=1)})


def test_legalize_broadcast_expands_a_shared_operand_once():
    # Like BERT's attention mask, read by every layer: one Expand, not one live copy per reader.
    m = model(
        [N("Add", ["x", "z"], ["a"]), N("Mul", ["a", "z"], ["y"])],
        {"x": [3, 8], "z": [3, 1]},
        {"y": [3, 8]},
    )
    g = run_pass(legalize_broadcast, imported(m))
    assert ops(g) == ["Expand", "Add", "Mul"]
    assert g.nodes[1].inputs[1] == g.nodes[2].inputs[1] == g.nodes[0].outputs[0]
    assert_matches_onnxruntime(m, {"x": rand(3, 8), "z": rand(3, 1, seed=1)})


def test_eliminate_dead_code():
    m = model([N("Relu", ["x"], ["unused"]), N("Neg", ["x"], ["y"])], {"x": [4]}, {"y": [4]})
    assert ops(run_pass(eliminate_dead_code, imported(m))) == ["Neg"]


def test_canonicalize_ops():
    m = model(
        [N("CastLike", ["x", "like"], ["a"]), N("Sum", ["a"], ["y"])],
        {"x": [4]},
        {"y": [4]},
        {"like": np.zeros(1, np.float32)},
    )
    g = run_pass(canonicalize_ops, imported(m))
    assert ops(g) == ["Cast", "Identity"] and g.nodes[0].attrs["to"] == 1


def test_canonicalize_matmul_vector_operands():
    m = model(
        [N("MatMul", ["v", "w"], ["a"]), N("MatMul", ["w2", "a"], ["y"])],
        {"v": [4]},
        {"y": [3]},
        {"w": rand(4, 5), "w2": rand(3, 5, seed=1)},
    )
    g = run_pass(canonicalize_matmul, imported(m))
    assert all(len(g.values[i].shape) >= 2 for n in g.nodes if n.op == "MatMul" for i in n.inputs)
    assert_matches_onnxruntime(m, {"v": rand(4, seed=2)})


def _conv_model(group=1, channels=8, out=8, stride=1, pad=1, bn=False):
    nodes = [
        N(
            "Conv",
            ["x", "w", "b"],
            ["c" if bn else "y"],
            kernel_shape=[3, 3],
            strides=[stride, stride],
            pads=[pad] * 4,
            group=group,
        )
    ]
    inits = {"w": rand(out, channels // group, 3, 3), "b": rand(out, seed=1)}
    if bn:
        nodes.append(N("BatchNormalization", ["c", "g", "beta", "mean", "var"], ["y"], epsilon=1e-3))
        inits.update(
            g=rand(out, seed=2) + 2,
            beta=rand(out, seed=3),
            mean=rand(out, seed=4),
            var=np.abs(rand(out, seed=5)) + 0.5,
        )
    size = (9 + 2 * pad - 3) // stride + 1
    return model(nodes, {"x": [1, channels, 9, 9]}, {"y": [1, out, size, size]}, inits)


def test_fold_batchnorm_into_conv():
    m = _conv_model(bn=True)
    g = run_pass(fold_batchnorm, imported(m))
    assert ops(g) == ["Conv"]
    assert_matches_onnxruntime(m, {"x": rand(1, 8, 9, 9, seed=9)})


def test_lower_conv_to_im2col_matmul():
    m = _conv_model(stride=2)
    g = run_pass(lower_conv, imported(m))
    assert ops(g) == ["Im2Col", "MatMul", "Add", "Reshape", "Transpose"]
    assert_matches_onnxruntime(m, {"x": rand(1, 8, 9, 9, seed=9)})


def test_lower_conv_grouped_uses_block_diagonal_weights():
    m = _conv_model(group=2, channels=16, out=8)
    g = run_pass(lower_conv, imported(m))
    w = g.values[g.nodes[1].inputs[1]].const
    assert w.shape == (16 * 9, 8) and not w[:72, 4:].any() and not w[72:, :4].any()
    assert_matches_onnxruntime(m, {"x": rand(1, 16, 9, 9, seed=9)})


def test_depthwise_conv_stays_on_the_vxm():
    m = _conv_model(group=8, channels=8, out=8)
    g = run_pass(lower_conv, imported(m))
    assert ops(g) == ["Conv"]
    program = assert_matches_onnxruntime(m, {"x": rand(1, 8, 9, 9, seed=9)})
    assert any(i.attrs.get("kernel") == "Conv" and i.opcode == "vxm.kernel" for i in program.instructions)


def test_lower_conv_transpose():
    m = model(
        [
            N(
                "ConvTranspose",
                ["x", "w", "b"],
                ["y"],
                strides=[2, 2],
                pads=[1, 1, 1, 1],
                output_padding=[1, 1],
            )
        ],
        {"x": [1, 4, 5, 5]},
        {"y": [1, 6, 10, 10]},
        {"w": rand(4, 6, 3, 3), "b": rand(6, seed=1)},
    )
    g = run_pass(lower_conv, imported(m))
    assert "MatMul" in ops(g) and "ConvTransposeScatter" in ops(g)
    assert_matches_onnxruntime(m, {"x": rand(1, 4, 5, 5, seed=2)})
