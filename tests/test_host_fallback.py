"""Host fallback: ops with no chip mapping run on the host behind costed PCIe transfers."""

from __future__ import annotations

import json

import numpy as np
import onnx
from click.testing import CliRunner
from onnx import TensorProto, helper

import lpuc
from lpuc.cli import main
from tests.models import ort_run


def _det_sandwich() -> onnx.ModelProto:
    """Relu (chip) -> Det (host) -> Mul (chip): data crosses PCIe out and back."""
    nodes = [
        helper.make_node("Relu", ["x"], ["a"]),
        helper.make_node("Det", ["a"], ["d"]),
        helper.make_node("Mul", ["d", "d"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def test_host_partition_is_costed_and_correct(tmp_path):
    path = tmp_path / "det.onnx"
    onnx.save(_det_sandwich(), str(path))
    program = lpuc.compile(path, precision="fp32")
    assert program.summary["host_ops"] == 1 and program.summary["host_nodes"] == ["Det_1"]
    (host,) = [i for i in program.instructions if i.opcode == "host.kernel"]
    assert host.unit == "HOST"
    # Two PCIe transfers (to the host and back), each at least the 10 us latency of the target.
    assert host.duration >= 2 * program.target.pcie_cycles(0)
    x = np.random.default_rng(0).standard_normal((4, 3, 3)).astype(np.float32)
    np.testing.assert_allclose(program.run({"x": x})["y"], ort_run(path, {"x": x})[0], rtol=1e-4, atol=1e-6)

    trace = tmp_path / "t.json"
    art = tmp_path / "det.lpu"
    program.save(art)
    assert CliRunner().invoke(main, ["run", str(art), "--trace", str(trace)]).exit_code == 0
    names = {
        e["args"]["name"] for e in json.loads(trace.read_text())["traceEvents"] if e["name"] == "thread_name"
    }
    assert "HOST" in names
    assert "host ops 1" in CliRunner().invoke(main, ["report", str(art)]).output


def test_host_results_read_only_on_the_host_stay_there(tmp_path):
    """NonZero -> Transpose: both on the host, the dynamic-shaped result never enters SRAM."""
    nodes = [helper.make_node("NonZero", ["x"], ["nz"]), helper.make_node("Transpose", ["nz"], ["y"])]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, ["n", 2])],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    program = lpuc.compile(m, precision="fp32")
    host = [i for i in program.instructions if i.opcode == "host.kernel"]
    assert len(host) == 2
    assert host[1].duration < program.target.pcie_cycles(0)  # no PCIe between the two host ops
    x = np.array([[0, 1, 0, 2], [3, 0, 0, 0], [0, 0, 4, 5]], dtype=np.float32)
    np.testing.assert_array_equal(program.run({"x": x})["y"], np.transpose(np.nonzero(x)))


def test_no_host_fallback_is_a_one_line_error(tmp_path):
    path = tmp_path / "det.onnx"
    onnx.save(_det_sandwich(), str(path))
    result = CliRunner().invoke(
        main, ["compile", str(path), "-o", str(tmp_path / "x.lpu"), "--no-host-fallback"]
    )
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.strip().splitlines()[-1].startswith("error: ") and "Det (Det_1)" in result.output
