"""What PyTorch users run into first: data-dependent branches, typed and named example inputs,
exporter suggestions, and checking an artifact compiled from a factory against its exported ONNX."""

from __future__ import annotations

import inspect
import sys
import textwrap

import numpy as np
import onnx
import pytest
import torch

import lpuc
from lpuc.errors import LpucError
from lpuc.frontend import torch_export
from lpuc.frontend.torch_export import example_tensors, export_module
from tests.cli_helpers import assert_one_line_error, invoke


class DataBranch(torch.nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # the value of x decides the branch
            return x * 2
        return x - 1


class ShapeBranch(torch.nn.Module):
    def forward(self, x):
        if x.shape[0] > 1:  # shapes are static: right for every input of the compiled shape
            return x * 2
        return x - 1


class EagerOnlyCheck(torch.nn.Module):
    """Like transformers' mask helpers: a data check skipped while tracing, plus a traced shape check."""

    def forward(self, x, mask):
        if not torch.jit.is_tracing() and bool(mask.all()):
            pass  # an eager-only shortcut: the trace never sees it
        if x.shape[-1] > 1:
            x = x * 2
        return x * mask


class Keywords(torch.nn.Module):
    """Token ids and an optional float mask, as text models take them."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(10, 8)
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, ids, mask=None, scale=None):
        h = self.embed(ids)
        if mask is not None:
            h = h * mask.unsqueeze(-1)
        if scale is not None:
            h = h * scale
        return self.fc(h)


def assert_one_line(error: pytest.ExceptionInfo, *fragments: str) -> None:
    message = str(error.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


# -- data-dependent control flow ------------------------------------------------------------------
def _branch_line(module: type) -> int:
    """Line of the `if` in `module.forward` (the error names where the branch is)."""
    lines, first = inspect.getsourcelines(module.forward)
    return first + next(k for k, line in enumerate(lines) if line.strip().startswith("if "))


def test_data_dependent_branch_is_refused():
    with pytest.raises(LpucError) as error:
        export_module(DataBranch(), torch.ones(2, 3))
    assert_one_line(
        error,
        "cannot export DataBranch with the torchscript exporter",
        f"test_torch_quirks.py:{_branch_line(DataBranch)} (forward)",
        "data-dependent control flow",
        "torch.cond",
        "--exporter dynamo",
    )


def test_shape_branch_compiles_and_is_right():
    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(0))
    program = lpuc.compile(ShapeBranch(), example_inputs=(x,), precision="fp32")
    np.testing.assert_allclose(program.run({"x": x.numpy()})["output_0"], (x * 2).numpy(), rtol=1e-6)


def test_check_skipped_while_tracing_is_not_refused():
    """Eager forward converts mask.all(), the trace does not: only traced conversions count."""
    model = export_module(EagerOnlyCheck(), (torch.ones(2, 3), torch.ones(2, 3)))
    assert [i.name for i in model.graph.input] == ["x", "mask"]


def test_torch_cond_with_dynamo_compiles():
    class Cond(torch.nn.Module):
        def forward(self, x):
            return torch.cond(x.sum() > 0, lambda a: a * 2, lambda a: a - 1, (x,))

    program = lpuc.compile(Cond(), example_inputs=(torch.ones(2, 3),), exporter="dynamo", precision="fp32")
    for x in (np.ones((2, 3), np.float32), -np.ones((2, 3), np.float32)):  # both branches
        expected = x * 2 if x.sum() > 0 else x - 1
        np.testing.assert_allclose(program.run({"x": x})["output_0"], expected)


# -- keyword and typed example inputs -------------------------------------------------------------
def test_keyword_example_inputs():
    torch.manual_seed(0)
    module = Keywords().eval()
    ids = torch.tensor([[1, 2, 3, 9]])
    scale = torch.full((1, 4, 8), 0.5)
    program = lpuc.compile(module, example_inputs={"scale": scale, "ids": ids}, precision="fp32")
    assert [b.name for b in program.inputs] == ["ids", "scale"]  # forward's order, not the dict's
    got = program.run({"ids": ids.numpy(), "scale": scale.numpy()})["output_0"]
    with torch.no_grad():
        np.testing.assert_allclose(got, module(ids, scale=scale).numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("example", "fragment"),
    [
        (
            {"idz": torch.ones(1, 4, dtype=torch.int64)},
            "forward has no parameter 'idz' (parameters: ids, mask",
        ),
        (
            (torch.ones(1, 4, dtype=torch.int64), {"ids": torch.ones(1, 4)}),
            "'ids' is given both positionally",
        ),
    ],
)
def test_bad_keyword_example_inputs(example, fragment):
    with pytest.raises(LpucError) as error:
        export_module(Keywords(), example)
    assert_one_line(error, "Keywords: ", fragment)


def test_example_tensors_parses_names_and_dtypes():
    args = example_tensors(["2x3", "ids=1x16:int64", "mask=1x16:bool"])
    positional, named = args[:-1], args[-1]
    assert [(tuple(t.shape), t.dtype) for t in positional] == [((2, 3), torch.float32)]
    assert {k: (tuple(t.shape), t.dtype) for k, t in named.items()} == {
        "ids": ((1, 16), torch.int64),
        "mask": ((1, 16), torch.bool),
    }
    assert example_tensors(["4x4"])[0].dtype == torch.float32
    assert isinstance(example_tensors(["a=1:int32"]), dict)


@pytest.mark.parametrize(
    ("specs", "fragment"),
    [
        (["x=1x16:complex64"], "unknown dtype 'complex64'"),
        (["x=1x16", "2x2"], "positional example inputs must come before named ones"),
        (["x=1x16", "x=1x8"], "input 'x' is given twice"),
        (["=1x16"], "expected [NAME=]D0xD1..[:DTYPE]"),
        (["x=1xq"], "dims must be integers"),
    ],
)
def test_bad_example_input_specs(specs, fragment):
    with pytest.raises(LpucError) as error:
        example_tensors(specs)
    assert_one_line(error, "--example-input", fragment)


# -- exporter suggestions -------------------------------------------------------------------------
def test_error_suggests_the_exporter_that_works():
    # torch 2.13's TorchScript exporter cannot export a bare TransformerEncoderLayer; dynamo can.
    layer = torch.nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
    with pytest.raises(LpucError) as error:
        export_module(layer, torch.randn(1, 4, 16))
    assert_one_line(
        error, "with the torchscript exporter", "; the dynamo exporter exports it (--exporter dynamo"
    )
    assert export_module(layer, torch.randn(1, 4, 16), exporter="dynamo").graph.node


def test_error_suggests_torchscript_when_dynamo_fails(monkeypatch):
    real = torch_export._export

    def dynamo_fails(call, exporter, path, torch):
        if exporter == "dynamo":
            raise RuntimeError("unsupported in this test")
        return real(call, exporter, path, torch)

    monkeypatch.setattr(torch_export, "_export", dynamo_fails)
    with pytest.raises(LpucError) as error:
        export_module(ShapeBranch(), torch.ones(2, 3), exporter="dynamo")
    assert_one_line(
        error, "with the dynamo exporter: RuntimeError: unsupported in this test", "--exporter torchscript"
    )


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_no_suggestion_when_the_other_exporter_is_wrong_too():
    """dynamo refuses the data-dependent branch; TorchScript's silently wrong trace is no alternative."""
    with pytest.raises(LpucError) as error:
        export_module(DataBranch(), torch.ones(2, 3), exporter="dynamo")
    assert_one_line(error, "with the dynamo exporter")
    assert "exports it" not in str(error.value)


# -- the CLI: named, typed inputs; ART.onnx for run --check ---------------------------------------
FACTORY_SOURCE = """
import torch

class Tagger(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(10, 8)
        self.fc = torch.nn.Linear(8, 3)

    def forward(self, ids, mask=None):
        h = self.embed(ids)
        if mask is not None:
            h = h * mask.unsqueeze(-1)
        return torch.softmax(self.fc(h), dim=-1)

class Branchy(torch.nn.Module):
    def forward(self, x):
        if x.mean() > 0:
            return x
        return -x

def make():
    torch.manual_seed(0)
    return Tagger()

def branchy():
    return Branchy()
"""


@pytest.fixture
def factory_dir(tmp_path, monkeypatch):
    (tmp_path / "lpuc_quirks_factory.py").write_text(textwrap.dedent(FACTORY_SOURCE))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield tmp_path
    sys.modules.pop("lpuc_quirks_factory", None)


def test_cli_named_typed_inputs_and_check_against_exported_onnx(factory_dir):
    result = invoke(
        "compile",
        "lpuc_quirks_factory:make",
        "--example-input",
        "ids=2x6:int64",
        "--example-input",
        "mask=2x6",
        "-o",
        "tagger.lpu",
        "--precision",
        "fp32",
    )
    assert result.exit_code == 0, result.output
    assert "and the exported ONNX tagger.lpu.onnx (for run --check)" in result.output
    exported = onnx.load(str(factory_dir / "tagger.lpu.onnx"))
    inputs = {
        i.name: (i.type.tensor_type.elem_type, [d.dim_value for d in i.type.tensor_type.shape.dim])
        for i in exported.graph.input
    }
    assert inputs == {"ids": (onnx.TensorProto.INT64, [2, 6]), "mask": (onnx.TensorProto.FLOAT, [2, 6])}
    checked = invoke("run", "tagger.lpu", "--check", "tagger.lpu.onnx")
    assert checked.exit_code == 0, checked.output
    assert checked.output.count(": ok") == 1


def test_cli_check_against_exported_onnx_can_fail(factory_dir):
    """--check on ART.onnx compares with onnxruntime: a different model is caught."""
    assert (
        invoke(
            "compile", "lpuc_quirks_factory:make", "--example-input", "ids=2x6:int64", "-o", "a.lpu"
        ).exit_code
        == 0
    )
    other = onnx.load(str(factory_dir / "a.lpu.onnx"))
    for init in other.graph.initializer:  # scale the weights: the softmax outputs change
        if init.data_type == onnx.TensorProto.FLOAT and len(init.dims) == 2:
            init.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(init) * 3.0, init.name))
    onnx.save(other, str(factory_dir / "other.onnx"))
    result = invoke("run", "a.lpu", "--check", "other.onnx")
    assert result.exit_code == 1, result.output


def test_cli_onnx_source_writes_no_copy(tmp_path):
    path = tmp_path / "m.onnx"
    torch.onnx.export(torch.nn.Linear(4, 2), (torch.ones(1, 4),), str(path), dynamo=False, input_names=["x"])
    result = invoke("compile", path, "-o", tmp_path / "m.lpu")
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "m.lpu.onnx").exists() and "exported ONNX" not in result.output


def test_cli_refuses_data_dependent_factory(factory_dir):
    result = invoke("compile", "lpuc_quirks_factory:branchy", "--example-input", "2x3", "-o", "b.lpu")
    assert_one_line_error(
        result, "Branchy", "data-dependent control flow", "torch.cond", "--exporter dynamo", only=True
    )
    assert not (factory_dir / "b.lpu").exists() and not (factory_dir / "b.lpu.onnx").exists()


def test_cli_bad_example_input_is_one_line(factory_dir):
    result = invoke("compile", "lpuc_quirks_factory:make", "--example-input", "ids=2x6:int65", "-o", "t.lpu")
    assert_one_line_error(result, "unknown dtype 'int65'", only=True)
    result = invoke("compile", "lpuc_quirks_factory:make", "--example-input", "idz=2x6:int64", "-o", "t.lpu")
    assert_one_line_error(result, "Tagger: forward has no parameter 'idz'", only=True)


def test_cli_hf_options_need_a_directory(factory_dir):
    result = invoke("compile", "lpuc_quirks_factory:make", "--seq-len", "16", "-o", "t.lpu")
    assert_one_line_error(
        result, "--seq-len and --batch are only for Hugging Face model directories", only=True
    )
