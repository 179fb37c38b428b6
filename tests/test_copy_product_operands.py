"""copy_product_operands (passes/copy_product_operands.py): in an fp16 build, a float32 value that
products and other ops both read (a post-LN block's LayerNorm result: the next product's input and
the residual sum's term) gets a copy only the products read, stored as fp16. Checked: the products
then read fp16 tiles (float32 without the pass, float32 in an fp32 build), the results match
onnxruntime, and a value narrower than two K chunks gets no copy. What it is worth in cycles is
measured on BERT-base (the transformer bench), not asserted here."""

from __future__ import annotations

import numpy as np
import torch

import lpuc
from tests.models import export, ort_run
from tests.similarity import cosine


class PostNormBlock(torch.nn.Module):
    """y = LN(x); out = LN(y + W2 gelu(W1 y)): y is read by a product and by the residual add."""

    def __init__(self, width: int = 384, hidden: int = 768) -> None:
        super().__init__()
        self.ln1 = torch.nn.LayerNorm(width)
        self.up = torch.nn.Linear(width, hidden)
        self.down = torch.nn.Linear(hidden, width)
        self.ln2 = torch.nn.LayerNorm(width)

    def forward(self, x):
        y = self.ln1(x)
        return self.ln2(y + self.down(torch.nn.functional.gelu(self.up(y))))


def _product_operand_dtypes(program, node_suffix: str) -> set[str]:
    return {
        program.tiles[i.reads[0].buf].dtype
        for i in program.instructions
        if i.opcode == "mxm.mm" and i.node.endswith(node_suffix)
    }


def test_products_read_an_fp16_copy(tmp_path):
    example = (torch.zeros(1, 128, 384),)
    path = export(PostNormBlock(), example, tmp_path / "post_norm.onnx", input_names=["x"])
    x = np.random.default_rng(0).standard_normal((1, 128, 384)).astype(np.float32)
    (want,) = ort_run(path, {"x": x})
    copied = lpuc.compile(path, precision="fp16", host_fallback=False)
    apart = lpuc.compile(
        path, precision="fp16", host_fallback=False, disable_passes=["copy_product_operands"]
    )
    exact = lpuc.compile(path, precision="fp32", host_fallback=False)
    for program in (copied, apart):
        (got,) = program.run({"x": x}).values()
        assert cosine(got, want) >= 0.999
    (got,) = exact.run({"x": x}).values()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    # The up projection reads y: an fp16 copy with the pass, y itself (float32) without it.
    up = "up/MatMul"
    assert _product_operand_dtypes(copied, up) == {"float16"}
    assert _product_operand_dtypes(apart, up) == {"float32"}
    assert _product_operand_dtypes(exact, up) == {"float32"}
    # The copy is one more map per tile; the residual add still reads y at float32.
    casts = [i for i in copied.instructions if i.opcode == "vxm.map" and i.node.endswith("/copy")]
    assert casts and all(copied.tiles[i.writes[0].buf].dtype == "float16" for i in casts)


def test_narrow_values_get_no_copy(tmp_path):
    """Rows of less than two K chunks (fp16: 320): the copy's map would only lengthen the path."""
    example = (torch.zeros(1, 128, 192),)
    path = export(PostNormBlock(192, 384), example, tmp_path / "narrow.onnx", input_names=["x"])
    program = lpuc.compile(path, precision="fp16", host_fallback=False)
    assert _product_operand_dtypes(program, "up/MatMul") == {"float32"}
