"""`lpuc compile DIR` for a local Hugging Face model directory (a tiny BERT saved offline)."""

from __future__ import annotations

import sys

import numpy as np
import onnx
import pytest
import torch

import lpuc
from tests.cli_helpers import assert_one_line_error, invoke

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    config = transformers.BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    model = transformers.BertModel(config).eval()
    directory = tmp_path_factory.mktemp("tiny-bert")
    model.save_pretrained(directory)
    return directory


def graph_inputs(path) -> dict[str, tuple[int, list[int]]]:
    model = onnx.load(str(path))
    return {
        i.name: (i.type.tensor_type.elem_type, [d.dim_value for d in i.type.tensor_type.shape.dim])
        for i in model.graph.input
    }


def test_compile_dir_and_check_against_onnxruntime(bert_dir, tmp_path):
    artifact = tmp_path / "bert.lpu"
    result = invoke("compile", bert_dir, "-o", artifact, "--seq-len", "16", "--precision", "fp32")
    assert result.exit_code == 0, result.output
    assert f"and the exported ONNX {artifact}.onnx" in result.output
    int64 = onnx.TensorProto.INT64
    assert graph_inputs(f"{artifact}.onnx") == {
        "input_ids": (int64, [1, 16]),
        "attention_mask": (int64, [1, 16]),
    }

    checked = invoke("run", artifact, "--check", f"{artifact}.onnx")
    assert checked.exit_code == 0, checked.output
    assert checked.output.count(": ok") == 2  # last_hidden_state, pooler_output

    # The whole chain against transformers itself, on real ids and a padded mask.
    model = transformers.BertModel.from_pretrained(bert_dir, local_files_only=True).eval()
    ids = torch.randint(0, 64, (1, 16), generator=torch.Generator().manual_seed(5))
    mask = torch.ones(1, 16, dtype=torch.int64)
    mask[0, 12:] = 0
    got = lpuc.load(artifact).run({"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).last_hidden_state.numpy()
    np.testing.assert_allclose(got["output_0"], expected, rtol=1e-4, atol=1e-4)


def test_batch_and_seq_len(bert_dir, tmp_path):
    artifact = tmp_path / "b.lpu"
    result = invoke("compile", bert_dir, "-o", artifact, "--batch", "2", "--seq-len", "8")
    assert result.exit_code == 0, result.output
    assert {b.name: b.shape for b in lpuc.load(artifact).inputs} == {
        "input_ids": (2, 8),
        "attention_mask": (2, 8),
    }


def test_missing_transformers_is_one_line(bert_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` fail
    result = invoke("compile", bert_dir, "-o", tmp_path / "x.lpu")
    assert_one_line_error(result, "needs transformers (pip install 'lpuc[torch]')", only=True)


def test_directory_without_config(tmp_path):
    result = invoke("compile", tmp_path, "-o", tmp_path / "x.lpu")
    assert_one_line_error(
        result, "a directory MODEL must be a Hugging Face model (no config.json)", only=True
    )


def test_bad_seq_len(bert_dir, tmp_path):
    result = invoke("compile", bert_dir, "-o", tmp_path / "x.lpu", "--seq-len", "0")
    assert_one_line_error(result, "--batch and --seq-len must be >= 1", only=True)
    result = invoke("compile", bert_dir, "-o", tmp_path / "x.lpu", "--seq-len", "65")
    assert_one_line_error(result, "--seq-len 65 exceeds the model's max_position_embeddings 64", only=True)


def test_default_inputs_fit_the_model(bert_dir, tmp_path):
    """1x128 by default, shortened to max_position_embeddings (64 here); via the Python API."""
    program = lpuc.compile(bert_dir, precision="fp32")
    assert {b.name: (b.shape, b.dtype) for b in program.inputs} == {
        "input_ids": ((1, 64), "int64"),
        "attention_mask": ((1, 64), "int64"),
    }


def test_example_input_replaces_the_defaults(bert_dir, tmp_path):
    artifact = tmp_path / "ids.lpu"
    result = invoke("compile", bert_dir, "-o", artifact, "--example-input", "input_ids=1x8:int64")
    assert result.exit_code == 0, result.output
    assert {b.name: b.shape for b in lpuc.load(artifact).inputs} == {"input_ids": (1, 8)}
    both = invoke(
        "compile", bert_dir, "-o", artifact, "--example-input", "input_ids=1x8:int64", "--seq-len", "8"
    )
    assert_one_line_error(both, "give either example inputs or --batch/--seq-len, not both", only=True)
