"""Disabling graph passes by name: PassContext.disabled, lpuc.compile(disable_passes=...) and
`lpuc compile --disable-pass`."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

import lpuc
from lpuc.cli import main
from lpuc.errors import LpucError
from lpuc.passes.pipeline import PassContext, pass_names, run_pipeline
from lpuc.target import load_target
from tests.passes.helpers import imported, ops
from tests.passes.test_fuse_gelu import gelu_model


def test_run_pipeline_skips_disabled_passes():
    graph = imported(gelu_model())
    ctx = PassContext(load_target("tsp-v1"), "fp32")
    assert ops(run_pipeline(graph, ctx)) == ["Gelu"]
    skipped = PassContext(load_target("tsp-v1"), "fp32", disabled=frozenset({"fuse_gelu"}))
    assert ops(run_pipeline(graph, skipped)) == ["Fused"]  # the chain, fused as elementwise ops


def test_unknown_pass_is_a_one_line_error_listing_the_passes():
    with pytest.raises(
        LpucError,
        match=r"unknown pass or strategy 'fuse_gleu' \(passes and lowering strategies: fold_constants, .*fuse_gelu",
    ):
        lpuc.compile(gelu_model(), disable_passes=("fuse_gleu",))
    assert "fuse_layernorm" in pass_names() and len(pass_names()) == len(set(pass_names()))


def test_cli_disable_pass(tmp_path):
    model = tmp_path / "gelu.onnx"
    model.write_bytes(gelu_model().SerializeToString())
    out = tmp_path / "m.lpu"
    runner = CliRunner()
    ok = runner.invoke(
        main,
        [
            "compile",
            str(model),
            "-o",
            str(out),
            "--disable-pass",
            "fuse_gelu",
            "--disable-pass",
            "fuse_layernorm",
        ],
    )
    assert ok.exit_code == 0, ok.output
    plain = lpuc.load(out).summary["cycles"]
    assert runner.invoke(main, ["compile", str(model), "-o", str(out)]).exit_code == 0
    assert lpuc.load(out).summary["cycles"] < plain
    bad = runner.invoke(
        main, ["compile", str(model), "-o", str(tmp_path / "x.lpu"), "--disable-pass", "nope"]
    )
    assert bad.exit_code == 2
    assert (
        bad.output.startswith("error: unknown pass or strategy 'nope' (passes and lowering strategies: ")
        and bad.output.count("\n") == 1
    )
    assert not (tmp_path / "x.lpu").exists()
