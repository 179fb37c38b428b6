"""`--dump-ir` writes each graph stage as ONNX that loads and passes the checker (what Netron opens)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

import lpuc
from lpuc.ir.to_onnx import LARGE_CONST_BYTES, graph_to_onnx
from lpuc.passes.pipeline import PIPELINE
from tests.models import export


class ConvNet(torch.nn.Module):
    """Conv (-> Im2Col, lpuc domain), BatchNorm, an elementwise chain (-> Fused) and a >1 MiB weight."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.fc = torch.nn.Linear(8 * 8 * 8, 600)  # 512 x 600 fp32 = 1.17 MiB
        self.out = torch.nn.Linear(600, 10)

    def forward(self, x):
        y = torch.nn.functional.max_pool2d(torch.relu(self.bn(self.conv(x))), 2)
        return self.out(torch.nn.functional.gelu(self.fc(y.flatten(1))) * 2 + 1)


def _check_dumps(directory) -> dict[str, onnx.ModelProto]:
    models = {}
    for path in sorted(directory.glob("*.onnx")):
        model = onnx.load(path)
        onnx.checker.check_model(model, full_check=False)
        models[path.stem] = model
    return models


def test_every_stage_dumps_checkable_onnx(tmp_path):
    path = export(
        ConvNet(), (torch.zeros(2, 3, 16, 16),), tmp_path / "net.onnx", input_names=["x"], output_names=["y"]
    )
    dump = tmp_path / "dump"
    lpuc.compile(path, precision="fp32", dump_ir=dump)
    models = _check_dumps(dump)
    assert len(models) == len(PIPELINE) + 1  # the import and one per pass
    assert {p.stem for p in dump.glob("*.graph.txt")} >= {f"{s}.graph" for s in models}

    final = models[max(models)]
    ops = {(n.domain, n.op_type): n for n in final.graph.node}
    assert ("lpuc", "Im2Col") in ops and ("lpuc", "Fused") in ops
    im2col = {a.name: helper.get_attribute_value(a) for a in ops["lpuc", "Im2Col"].attribute}
    assert im2col["kernel_shape"] == [3, 3] and im2col["pads"] == [1, 1, 1, 1]
    expr = next(a for a in ops["lpuc", "Fused"].attribute if a.name == "expr")
    assert isinstance(json.loads(expr.s), list)  # not an ONNX type: kept as JSON text

    # the big weight is a shaped placeholder, small ones are initializers with their data
    omitted = [n for n in final.graph.node if n.op_type == "OmittedConstant"]
    assert len(omitted) == 1
    attrs = {a.name: helper.get_attribute_value(a) for a in omitted[0].attribute}
    assert sorted(attrs["shape"]) == [512, 600] and attrs["nbytes"] > LARGE_CONST_BYTES
    assert all(numpy_helper.to_array(t).nbytes <= LARGE_CONST_BYTES for t in final.graph.initializer)
    assert final.graph.initializer
    assert max(p.stat().st_size for p in dump.glob("*.onnx")) < LARGE_CONST_BYTES

    # every intermediate value carries its shape, as Netron shows it
    shaped = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim] for vi in final.graph.value_info}
    produced = {o for n in final.graph.node for o in n.output} - {o.name for o in final.graph.output}
    assert produced <= set(shaped)
    assert [d.dim_value for d in final.graph.output[0].type.tensor_type.shape.dim] == [2, 10]


def test_dynamic_values_and_subgraphs_export():
    """A host-resident NonZero result (no static shape) and an If with subgraphs still check."""
    then = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["t"])], "then", [], [helper.make_tensor_value_info("t", 1, [4])]
    )
    other = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["e"])], "else", [], [helper.make_tensor_value_info("e", 1, [4])]
    )
    nodes = [
        helper.make_node("NonZero", ["x"], ["nz"]),
        helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
        helper.make_node("Greater", ["s", "zero"], ["c"]),
        helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [4]),
            helper.make_tensor_value_info("nz", TensorProto.INT64, None),
        ],
        [numpy_helper.from_array(np.zeros((), np.float32), "zero")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    from lpuc.frontend.importer import import_model

    ir = import_model(model, "test")
    exported = graph_to_onnx(ir)
    onnx.checker.check_model(exported, full_check=False)
    nz = next(o for o in exported.graph.output if o.name == "nz")
    assert [d.dim_param for d in nz.type.tensor_type.shape.dim] == ["dynamic"]


def test_lpuc_attributes_on_standard_ops_go_to_the_doc_string(tmp_path):
    """fold_bias_columns marks its int8 products' model work (model_blocks, no ONNX attribute of
    MatMulInteger): the dump keeps it readable in the node's doc string and passes the checker."""
    torch.manual_seed(5)
    net = torch.nn.Sequential(torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU()).eval()
    path = export(
        net, (torch.zeros(1, 8, 12, 12),), tmp_path / "conv.onnx", input_names=["x"], output_names=["y"]
    )
    lpuc.compile(path, precision="int8", dump_ir=tmp_path / "dump")
    final = _check_dumps(tmp_path / "dump")
    products = [n for n in final[max(final)].graph.node if n.op_type == "MatMulInteger"]
    assert len(products) == 1 and "model_blocks" in products[0].doc_string
    assert all(a.name != "model_blocks" for a in products[0].attribute)
