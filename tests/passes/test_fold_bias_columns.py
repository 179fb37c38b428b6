"""fold_bias_columns: an int8 convolution's bias joins its accumulator (constant Im2Col columns times
weight rows of the bias's digits), so its epilogue reads one constant less. Numerics against fp32
onnxruntime and against the same build with the bias added on the VXM."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import lpuc
from lpuc.ir.graph import LPUC_DOMAIN
from lpuc.kernels.registry import KernelContext, run_kernel
from lpuc.passes.fold_bias_columns import DIGIT, _digits, _with_bias_rows
from tests.kernels.oracle import run_onnxruntime
from tests.similarity import cosine

SHAPE = (1, 8, 12, 12)


def _model(path: Path) -> Path:
    """Two 3x3 convolutions (K = 72 and 144: room for the columns in one K tile) and a 1x1 one, which
    reads the second's requantized result: that product writes the constant channels."""
    torch.manual_seed(5)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(8, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 24, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(24, 40, 1),
    ).eval()
    with torch.no_grad():
        for conv in (net[0], net[2], net[4]):
            conv.bias.uniform_(-2.0, 2.0)  # biases large enough to matter
        x = (torch.randn(*SHAPE),)
        torch.onnx.export(net, x, str(path), input_names=["x"], output_names=["y"], dynamo=False)
    return path


def test_digits_rebuild_the_bias_exactly_in_int8():
    beta = np.array([0, 1, -1, 63, -64, 127, 128, 16129 + 70, -(3 * 16129) - 5, 200_000], np.int64)
    rows = _digits(beta)
    assert all(r.dtype == np.int8 and np.abs(r.astype(int)).max() <= DIGIT for r in rows)
    values = [DIGIT] * (len(rows) - 1) + [1]
    rebuilt = sum(v * r.astype(np.int64) for v, r in zip(values, rows))
    np.testing.assert_array_equal(rebuilt, beta)


def test_packed_weights_get_each_groups_digit_rows_under_its_own_columns():
    """With p rows packed side by side, W is block diagonal [p K, p N]; each group's constant
    columns follow its K columns, so its digit rows follow its K rows, under its N columns only."""
    w = np.kron(np.eye(2, dtype=np.int8), np.arange(1, 7, dtype=np.int8).reshape(3, 2))  # K=3, N=2, p=2
    digits = [np.array([1, 2, 3, 4], np.int8), np.array([5, 6, 7, 8], np.int8)]
    out = _with_bias_rows(w, digits, pack=2)
    assert out.shape == (10, 4)
    np.testing.assert_array_equal(out[:3], w[:3])
    np.testing.assert_array_equal(out[3:5], [[1, 2, 0, 0], [5, 6, 0, 0]])
    np.testing.assert_array_equal(out[5:8], w[3:])
    np.testing.assert_array_equal(out[8:], [[0, 0, 3, 4], [0, 0, 7, 8]])


def test_im2col_appends_the_constant_columns_to_each_row_before_packing():
    x = np.arange(2 * 4 * 4, dtype=np.int8).reshape(1, 2, 4, 4)
    attrs = {"kernel_shape": [1, 1], "strides": [1, 1], "pads": [0, 0, 0, 0], "dilations": [1, 1]}

    def im2col(**more):
        ctx = KernelContext("Im2Col", {**attrs, **more}, domain=LPUC_DOMAIN)
        return run_kernel(ctx, [x])[0]

    plain = im2col()
    cols = im2col(const_columns=[127, 1])
    np.testing.assert_array_equal(cols[:, :2], plain)
    assert (cols[:, 2] == 127).all() and (cols[:, 3] == 1).all()
    packed = im2col(const_columns=[127, 1], pack_rows=2)
    np.testing.assert_array_equal(packed, cols.reshape(8, 8))


def test_a_packed_convolution_folds_its_bias(tmp_path, monkeypatch):
    """ResNet's stem shape, rows packed side by side (block-diagonal weights): the Im2Col appends
    its constant columns to each of the packed rows, and the result matches the unfolded build's."""
    import lpuc.passes.quantize_int8 as quantize_int8

    torch.manual_seed(4)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 7, stride=2, padding=3), torch.nn.ReLU()).eval()
    with torch.no_grad():
        net[0].bias.uniform_(-2.0, 2.0)
        x = (torch.randn(1, 3, 32, 32),)
        path = tmp_path / "stem.onnx"
        torch.onnx.export(net, x, str(path), input_names=["x"], output_names=["y"], dynamo=False)
    monkeypatch.setattr(quantize_int8, "PACK_MIN_ROWS", 64)
    folded = lpuc.compile(path, precision="int8", dump_ir=tmp_path / "ir")
    apart = lpuc.compile(path, precision="int8", disable_passes=["fold_bias_columns"])
    final = (tmp_path / "ir" / "99_final.graph.txt").read_text()
    assert "pack_rows=" in final and "const_columns=" in final
    # Each packed group's digit rows are left out, and the block-diagonal weights' zero blocks, folded
    # or not: the convolution's 256 result rows by 147 x 16.
    _assert_same_model_work(folded, apart, 256 * 147 * 16)
    proto = onnx.load(str(path))
    for seed in range(2):
        x = np.random.default_rng(seed).standard_normal((1, 3, 32, 32)).astype(np.float32)
        want = run_onnxruntime(proto, {"x": x})[0]
        got, ref = folded.run({"x": x})["y"], apart.run({"x": x})["y"]
        assert cosine(got, want) >= 0.999 and cosine(got, want) >= cosine(ref, want) - 1e-4


def _assert_same_model_work(folded, apart, model_macs: int) -> None:
    """Folded or not, the summary's MACs and the MXM bound are the model's work; the folded MMs
    stream more K lanes or result channels than they count."""
    for program in (folded, apart):
        assert program.summary["macs"] == model_macs
    assert folded.summary["lower_bound_cycles"]["mxm"] == apart.summary["lower_bound_cycles"]["mxm"]
    streamed = sum(
        a.nrows * a.nlanes * (i.attrs["lanes"] if i.attrs.get("keep") else i.writes[0].nlanes)
        for i in folded.instructions
        if i.opcode == "mxm.mm"
        for a in i.reads[:1]
    )
    assert streamed > model_macs


@pytest.mark.parametrize("symmetric", [False, True])
def test_bias_folds_into_the_products_and_keeps_the_accuracy(tmp_path, symmetric):
    """Also with symmetric activations: the map writing the constant channels then ends in a Relu."""
    path = _model(tmp_path / "convs.onnx")
    more = ["unsigned_activations"] if symmetric else []
    folded = lpuc.compile(path, precision="int8", dump_ir=tmp_path / "ir", disable_passes=more)
    apart = lpuc.compile(path, precision="int8", disable_passes=["fold_bias_columns", *more])
    final = (tmp_path / "ir" / "99_final.graph.txt").read_text()
    assert final.count("const_columns=") == 2  # the 3x3 convolutions' Im2Cols
    # The constant rows and channels are no model work: the MXM bound and the MACs count the three
    # convolutions' own multiply-accumulates, 144 pixels x (K x N), as the unfolded build does.
    model_macs = 144 * (72 * 16 + 144 * 24 + 24 * 40)
    _assert_same_model_work(folded, apart, model_macs)
    # The second product writes 24 channels and the constant ones the 1x1 product reads.
    second = [line for line in final.splitlines() if "MatMulInteger(" in line][1]
    assert ": i32[144," in second and ": i32[144,24]" not in second

    def epilogue_ops(program) -> list[list[str]]:
        return [
            [step["op"] for step in i.attrs["epilogue"]["expr"]]
            for i in program.instructions
            if i.opcode == "mxm.mm" and "epilogue" in i.attrs
        ]

    assert len(epilogue_ops(folded)) >= 3 and all("Add" not in ops for ops in epilogue_ops(folded))
    assert all("Add" in ops for ops in epilogue_ops(apart))
    rng = np.random.default_rng(9)
    proto = onnx.load(str(path))
    for _ in range(3):
        x = rng.standard_normal(SHAPE).astype(np.float32)
        want = run_onnxruntime(proto, {"x": x})[0]
        got, ref = folded.run({"x": x})["y"], apart.run({"x": x})["y"]
        assert cosine(got, want) >= 0.999 and cosine(got, want) >= cosine(ref, want) - 1e-4
        # The bias rounds to the accumulator's unit instead of adding in float32: the int8 result of
        # the first layer moves by at most one step, so the float output stays within a few of its
        # quantization steps of the unfolded build.
        assert np.max(np.abs(got - ref)) <= 0.05 * np.max(np.abs(want))
