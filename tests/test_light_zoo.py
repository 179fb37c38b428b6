"""Issue 3 acceptance: the nine 'light' zoo models shipped in the onnx wheel compile with no host
fallback and match their shipped expected outputs (onnx's own tolerances: rtol 1e-3, atol 1e-7).

Inputs are what onnx's backend test runner feeds these models: arange(n) / n in each input's shape.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

import lpuc

DATA = Path(onnx.__file__).parent / "backend" / "test" / "data"
MODELS = [
    "bvlc_alexnet",
    "zfnet512",
    "vgg19",
    "resnet50",
    "inception_v1",
    "inception_v2",
    "densenet121",
    "shufflenet",
    "squeezenet",
]


def runner_inputs(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    initializers = {i.name for i in model.graph.initializer}
    feeds = {}
    for i in model.graph.input:
        if i.name not in initializers:
            shape = [d.dim_value if d.HasField("dim_value") else 1 for d in i.type.tensor_type.shape.dim]
            n = int(np.prod(shape))
            feeds[i.name] = (np.arange(n).reshape(shape) / n).astype(np.float32)
    return feeds


def tolerances(name: str) -> tuple[float, float]:
    spec = json.loads((DATA / "real" / f"test_{name}" / "data.json").read_text())
    return spec["rtol"], spec["atol"]


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_light_model(name):
    path = DATA / "light" / f"light_{name}.onnx"
    program = lpuc.compile(path, precision="fp32", host_fallback=False)
    assert program.summary["host_ops"] == 0
    model = onnx.load(str(path), load_external_data=False)
    outputs = program.run(runner_inputs(model))
    expected = onnx.numpy_helper.to_array(onnx.load_tensor(str(DATA / "light" / f"light_{name}_output_0.pb")))
    rtol, atol = tolerances(name)
    np.testing.assert_allclose(outputs[model.graph.output[0].name], expected, rtol=rtol, atol=atol)
