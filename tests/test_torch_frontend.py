"""The PyTorch frontend: export_module (both exporters), factory specs, and `lpuc compile pkg.mod:fn`."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import lpuc
from lpuc.errors import LpucError
from lpuc.frontend import torch_export
from lpuc.frontend.torch_export import export_module, factory_from_spec
from tests.cli_helpers import assert_one_line_error, invoke

EXPORTERS = ("torchscript", "dynamo")


class MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(16, 32)
        self.fc2 = torch.nn.Linear(32, 8)

    def forward(self, x):
        return torch.softmax(self.fc2(torch.relu(self.fc1(x))), dim=-1)


class CNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.conv2 = torch.nn.Conv2d(8, 16, 3, stride=2)
        self.fc = torch.nn.Linear(16, 5)

    def forward(self, image):
        x = torch.relu(self.bn(self.conv1(image)))
        x = torch.nn.functional.max_pool2d(x, 2)
        x = torch.relu(self.conv2(x))
        return self.fc(x.mean(dim=(2, 3)))


class TwoInTwoOut(torch.nn.Module):
    def forward(self, x, bias):
        return x + bias, x * 2


class VarArgs(torch.nn.Module):
    def forward(self, *xs):
        return xs[0] - xs[1]


class Eigvals(torch.nn.Module):
    """aten::linalg_eigvals has no ONNX export in either exporter."""

    def forward(self, x):
        return torch.linalg.eigvals(x).real


def seeded(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Fixed, non-trivial weights and batch-norm statistics."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape) * 0.3)
        for b in module.buffers():
            if b.dtype.is_floating_point:
                b.copy_(torch.rand(b.shape) + 0.5)
    return module.eval()


def torch_output(module: torch.nn.Module, *inputs: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return module(*inputs).numpy()


def compile_module(module, example, exporter: str, **options) -> lpuc.Program:
    return lpuc.compile(module, precision="fp32", example_inputs=example, exporter=exporter, **options)


# -- numerics through lpuc.compile ----------------------------------------------------------------
@pytest.mark.parametrize("exporter", EXPORTERS)
def test_mlp_matches_torch_on_chip(exporter):
    module = seeded(MLP())
    x = torch.randn(4, 16, generator=torch.Generator().manual_seed(1))
    program = compile_module(module, (x,), exporter, host_fallback=False)
    got = program.run({"x": x.numpy()})
    assert list(got) == ["output_0"]
    np.testing.assert_allclose(got["output_0"], torch_output(module, x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_cnn_matches_torch(exporter):
    # Conv stays on the host until a Conv lowering pass lands, so host fallback stays on here.
    module = seeded(CNN())
    image = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    program = compile_module(module, image, exporter)
    got = program.run({"image": image.numpy()})
    np.testing.assert_allclose(got["output_0"], torch_output(module, image), rtol=1e-4, atol=1e-5)


# -- export_module --------------------------------------------------------------------------------
@pytest.mark.parametrize("exporter", EXPORTERS)
def test_names_follow_forward_signature(exporter):
    model = export_module(TwoInTwoOut(), (torch.ones(2, 3), torch.ones(2, 3)), exporter=exporter)
    assert [i.name for i in model.graph.input] == ["x", "bias"]
    assert [o.name for o in model.graph.output] == ["output_0", "output_1"]
    assert model.graph.name == "TwoInTwoOut"


def test_varargs_forward_gets_numbered_inputs():
    model = export_module(VarArgs(), (torch.ones(2, 3), torch.ones(2, 3)))
    assert [i.name for i in model.graph.input] == ["input_0", "input_1"]


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_export_is_deterministic(exporter):
    module = seeded(CNN())
    image = torch.zeros(2, 3, 16, 16)
    first = export_module(module, image, exporter=exporter).SerializeToString()
    assert export_module(module, image, exporter=exporter).SerializeToString() == first


def test_training_mode_is_restored():
    module = seeded(MLP()).train()
    export_module(module, torch.zeros(4, 16))
    assert module.training


def test_dynamo_external_data_is_loaded_inline(monkeypatch):
    """The dynamo exporter writes weights to model.onnx.data; the returned proto holds them."""
    written: list[str] = []
    real_load = onnx.load

    def spy(path, **kwargs):
        written.extend(sorted(p.name for p in Path(path).parent.iterdir()))
        return real_load(path, **kwargs)

    monkeypatch.setattr(torch_export.onnx, "load", spy)
    module = seeded(MLP())
    model = export_module(module, torch.zeros(4, 16), exporter="dynamo")
    assert written == ["model.onnx", "model.onnx.data"]
    weights = [init for init in model.graph.initializer if init.dims]
    assert weights and all(init.data_location == onnx.TensorProto.DEFAULT for init in weights)
    assert not any(init.external_data for init in model.graph.initializer)
    fc1 = next(init for init in weights if init.name == "fc1.weight")
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(fc1), module.fc1.weight.detach().numpy())


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.export's own deprecation notices
def test_dynamo_file_with_external_data_compiles_from_path(tmp_path):
    module = seeded(MLP())
    x = torch.randn(4, 16, generator=torch.Generator().manual_seed(3))
    path = tmp_path / "mlp.onnx"
    torch.onnx.export(
        module, (x,), str(path), dynamo=True, external_data=True, verbose=False, input_names=["x"]
    )
    assert (tmp_path / "mlp.onnx.data").is_file()
    program = lpuc.compile(path, precision="fp32", host_fallback=False)
    (got,) = program.run({"x": x.numpy()}).values()
    np.testing.assert_allclose(got, torch_output(module, x), rtol=1e-4, atol=1e-5)


# -- export errors --------------------------------------------------------------------------------
def assert_one_line(error: pytest.ExceptionInfo, *fragments: str) -> None:
    message = str(error.value)
    assert "\n" not in message and "\x1b" not in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_unexportable_op_is_one_line(exporter, capfd):
    with pytest.raises(LpucError) as error:
        export_module(Eigvals(), torch.randn(4, 4), exporter=exporter)
    assert_one_line(error, "cannot export Eigvals", f"the {exporter} exporter", "eig")
    captured = capfd.readouterr()
    assert "Torch IR graph" not in captured.out + captured.err  # exporter chatter is silenced


@pytest.mark.parametrize(
    ("example", "fragment"),
    [
        (None, "needs example inputs"),
        ((), "needs example inputs"),
        ({"x": 3}, "must be a tensor or a tuple of tensors, or a dict name -> tensor (got dict)"),
        ((torch.zeros(4, 16), 3), "must be a tensor or a tuple of tensors"),
    ],
)
def test_bad_example_inputs(example, fragment):
    with pytest.raises(LpucError) as error:
        export_module(MLP(), example)
    assert_one_line(error, "MLP", fragment)


def test_forward_failure_names_module_and_exporter():
    with pytest.raises(LpucError) as error:
        export_module(MLP(), torch.zeros(4, 7), exporter="dynamo")
    assert_one_line(error, "cannot export MLP with the dynamo exporter: forward raised RuntimeError")


def test_unknown_exporter():
    with pytest.raises(LpucError) as error:
        export_module(MLP(), torch.zeros(4, 16), exporter="fx")
    assert_one_line(error, "MLP: unknown exporter 'fx' (choose torchscript, dynamo)")


def test_compile_rejects_other_objects():
    with pytest.raises(LpucError) as error:
        lpuc.compile(42)
    assert_one_line(error, "cannot compile a int")


# -- factory specs and the CLI --------------------------------------------------------------------
FACTORY_SOURCE = """
import torch

class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(16, 4)

    def forward(self, x):
        return torch.tanh(self.fc(x))

def make():
    torch.manual_seed(0)
    return Net()

def broken():
    raise RuntimeError("no weights here\\nsecond line")

def not_a_module():
    return 42

NOT_CALLABLE = 3
"""


@pytest.fixture
def factory_dir(tmp_path, monkeypatch):
    """tmp_path as the cwd holding lpuc_test_factory.py; sys.path and sys.modules are restored."""
    (tmp_path / "lpuc_test_factory.py").write_text(textwrap.dedent(FACTORY_SOURCE))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield tmp_path
    sys.modules.pop("lpuc_test_factory", None)


@pytest.mark.parametrize("spec", ["lpuc_test_factory:make", "lpuc_test_factory.py:make"])
def test_factory_spec_builds_module(factory_dir, spec):
    module = factory_from_spec(spec)
    assert type(module).__name__ == "Net"


def test_cli_compiles_factory(factory_dir):
    result = invoke(
        "compile",
        "lpuc_test_factory:make",
        "--example-input",
        "2x16",
        "-o",
        "out.lpu",
        "--precision",
        "fp32",
        "--no-host-fallback",
    )
    assert result.exit_code == 0, result.output
    assert "wrote out.lpu" in result.output
    module = factory_from_spec("lpuc_test_factory:make").eval()
    x = torch.randn(2, 16, generator=torch.Generator().manual_seed(4))
    got = lpuc.load(factory_dir / "out.lpu").run({"x": x.numpy()})
    np.testing.assert_allclose(got["output_0"], torch_output(module, x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("spec", "fragments"),
    [
        ("no_such_module_xyz:make", ["cannot import module 'no_such_module_xyz'", "ModuleNotFoundError"]),
        ("missing_file.py:make", ["no such file 'missing_file.py'"]),
        ("lpuc_test_factory:nope", ["module 'lpuc_test_factory' has no attribute 'nope'"]),
        ("lpuc_test_factory:broken", ["the factory raised RuntimeError: no weights here"]),
        ("lpuc_test_factory:not_a_module", ["returned a int, not a torch.nn.Module"]),
        ("lpuc_test_factory:NOT_CALLABLE", ["NOT_CALLABLE is a int, not a callable factory"]),
        ("lpuc_test_factory:", ["expected a factory spec pkg.module:function"]),
    ],
)
def test_cli_bad_factory_specs_are_one_line(factory_dir, spec, fragments):
    result = invoke("compile", spec, "--example-input", "2x16", "-o", "out.lpu")
    assert_one_line_error(result, spec, *fragments, only=True)
    assert not (factory_dir / "out.lpu").exists()


def test_cli_factory_without_example_input(factory_dir):
    result = invoke("compile", "lpuc_test_factory:make", "-o", "out.lpu")
    assert_one_line_error(
        result, "Net: exporting a torch module needs example inputs", "--example-input", only=True
    )
