"""NodeBuilder and replace_nodes: names, typed values, folding, output binding, opsets."""

from __future__ import annotations

import numpy as np

from lpuc.ir.graph import LPUC_DOMAIN, Graph, Node, Value, constant_value
from lpuc.ir.verify import verify_graph
from lpuc.passes.builder import EMITTED_OPSET, LPUC_OPSET, NodeBuilder, replace_nodes


def relu_graph() -> Graph:
    """x [2, 3] -> Relu "act" -> y, with a constant w [3, 4] on the side."""
    values = {
        "x": Value("x", (2, 3), np.dtype(np.float32)),
        "y": Value("y", (2, 3), np.dtype(np.float32)),
        "w": constant_value("w", np.ones((3, 4), np.float32)),
    }
    return Graph("g", [Node("Relu", "act", ("x",), ("y",))], values, ["x"], ["y"])


def builder() -> NodeBuilder:
    graph = relu_graph()
    return NodeBuilder(graph.copy(nodes=[]), graph.nodes[0])


def test_names_follow_the_node_the_scope_and_the_tag():
    b = builder()
    first = b.unary("Tanh", "x", "squash")
    second = b.unary("Tanh", "x", "squash")
    b.scope = "d0/t1"
    scoped = b.binary("Mul", "x", b.scalar(2.0, np.float32))
    assert (first, second, scoped) == ("act/squash", "act/squash_1", "act/d0/t1/mul")
    assert [n.name for n in b.nodes] == ["act/squash", "act/squash_1", "act/d0/t1/mul"]
    assert b.nodes[-1].inputs[1] == "act/scalar"  # scalars live outside scopes, one per value


def test_outputs_are_typed_from_the_inputs():
    b = builder()
    product = b.matmul("x", "w")
    flags = b.binary("Greater", product, b.scalar(0, np.float32), "positive", dtype=bool)
    assert (b.shape(product), b.dtype(product)) == ((2, 4), np.float32)
    assert (b.shape(flags), b.dtype(flags)) == ((2, 4), np.bool_)


def test_ops_on_constants_fold():
    b = builder()
    w_t = b.transpose("w", [1, 0], "w_t")
    assert b.nodes == [] and b.graph.is_const(w_t)
    np.testing.assert_array_equal(b.graph.values[w_t].const, np.ones((4, 3), np.float32))


def test_bind_output_renames_a_made_value_and_copies_anything_else():
    b = builder()
    b.bind_output(b.unary("Relu", "x"), "y")
    assert [(n.op, n.outputs) for n in b.nodes] == [("Relu", ("y",))]
    b.bind_output("x", "z")
    assert [(n.op, n.inputs, n.outputs) for n in b.nodes[1:]] == [("Identity", ("x",), ("z",))]


def test_split_names_its_outputs_by_index():
    b = builder()
    pieces = b.split("x", 1, [1, 2], "cut")
    assert pieces == ["act/cut_0", "act/cut_1"]
    assert [b.shape(p) for p in pieces] == [(2, 1), (2, 2)]


def test_emitted_opsets():
    b = builder()
    b.unary("Relu", "x")
    b.emit("Im2Col", ["x"], (2, 3), np.float32, domain=LPUC_DOMAIN, kernel_shape=[1])
    assert [(n.domain, n.opset) for n in b.nodes] == [("", EMITTED_OPSET), (LPUC_DOMAIN, LPUC_OPSET)]


def test_replace_nodes_swaps_in_what_the_build_emits():
    def relu_as_max(b: NodeBuilder) -> None:
        b.bind_output(b.binary("Max", b.node.inputs[0], b.scalar(0.0, np.float32)), b.node.outputs[0])

    out = replace_nodes(relu_graph(), lambda node, graph: node.op == "Relu", relu_as_max)
    verify_graph(out)
    assert [(n.op, n.name, n.outputs) for n in out.nodes] == [("Max", "act/max", ("y",))]
    assert "w" not in out.values  # values nothing reads are pruned


def test_replace_nodes_drops_a_node_the_build_leaves_empty():
    out = replace_nodes(relu_graph(), lambda node, graph: True, lambda b: None)
    assert out.nodes == []
