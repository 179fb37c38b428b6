"""All transformer passes together on a small GPT (tests/zoo.py) exported at opset 14, where torch
writes LayerNorm and GELU (erf and tanh) as chains of small ops: what reaches lowering, and that
the compiled model still matches onnxruntime."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
import torch

import lpuc
from lpuc.frontend.importer import import_model
from lpuc.passes.pipeline import run_pipeline
from tests import zoo
from tests.models import export, ort_run
from tests.passes.helpers import CTX

CONTEXT = 32


@pytest.fixture(scope="module")
def gpt_opset14(tmp_path_factory):
    path = tmp_path_factory.mktemp("gpt") / "gpt_opset14.onnx"
    ids = torch.zeros(1, CONTEXT, dtype=torch.int64)
    return export(zoo.GPT(context=CONTEXT), (ids,), path, input_names=["ids"], opset_version=14)


def test_norms_gelus_and_heads_are_fused(gpt_opset14):
    model = onnx.load(gpt_opset14)
    exported = Counter(n.op_type for n in model.graph.node)
    assert exported["ReduceMean"] == 10 and exported["Erf"] == 1 and exported["Tanh"] == 1
    graph = run_pipeline(import_model(model, "gpt"), CTX)
    ops = Counter(n.op for n in graph.nodes)
    assert ops["LayerNormalization"] == 5 and "ReduceMean" not in ops
    gelus = [s["attrs"] for n in graph.nodes if n.op == "Fused" for s in n.attrs["expr"] if s["op"] == "Gelu"]
    assert sorted(a["approximate"] for a in gelus) == ["none", "tanh"]
    # Per block: Q @ K^T and probs @ V address heads; K^T is the one transpose; no Split or head
    # Reshape moves data.
    assert ops["HeadMatMul"] == 4 and ops["Transpose"] == 2 and "Split" not in ops


def test_gpt_matches_onnxruntime(gpt_opset14):
    ids = np.random.default_rng(0).integers(0, 96, (1, CONTEXT)).astype(np.int64)
    (want,) = ort_run(gpt_opset14, {"ids": ids})
    program = lpuc.compile(gpt_opset14, precision="fp32", host_fallback=False)
    (got,) = program.run({"ids": ids}).values()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    moves = sorted(i.attrs["kernel"] for i in program.instructions if i.opcode == "sxm.kernel")
    assert moves == ["Gather", "Transpose", "Transpose"]  # the token embedding, each block's K^T
