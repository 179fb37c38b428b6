"""Progress bars: drawn on a terminal for slow stages only; silent off a terminal and with --quiet."""

from __future__ import annotations

import io
import time

import pytest
from click.testing import CliRunner

from lpuc import progress
from lpuc.cli import main


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def fast_delay(monkeypatch):
    """Bars after 50 ms instead of a second, so the tests stay short."""
    monkeypatch.setattr(progress, "DELAY", 0.05)
    monkeypatch.setattr(progress, "TICK", 0.02)
    yield
    progress.set_stream(None)
    progress.set_quiet(False)


def test_slow_stage_draws_a_bar_on_a_terminal(fast_delay):
    term = FakeTerminal()
    progress.set_stream(term)
    with progress.stage("lowering"):
        time.sleep(0.3)
    assert "lpuc lowering" in term.getvalue()


def test_counted_stage_shows_its_count_and_label(fast_delay):
    term = FakeTerminal()
    progress.set_stream(term)
    with progress.stage("passes", total=4) as bar:
        for name in ("a", "b", "c", "dead_code"):
            bar.label(name)
            time.sleep(0.05)
            bar.advance()
    text = term.getvalue()
    assert "lpuc passes" in text and "/4" in text and "dead_code" in text


def test_nested_stage_of_the_same_name_shares_the_bar(fast_delay):
    term = FakeTerminal()
    progress.set_stream(term)
    with progress.stage("passes"), progress.stage("passes", total=2) as inner:
        time.sleep(0.15)
        inner.advance()
        time.sleep(0.1)
    assert "/2" in term.getvalue()
    assert term.getvalue().count("lpuc passes") >= 1 and "1/2" in term.getvalue()


def test_quick_stage_draws_nothing(fast_delay):
    term = FakeTerminal()
    progress.set_stream(term)
    with progress.stage("frontend"):
        pass
    assert term.getvalue() == ""


def test_not_a_terminal_draws_nothing(fast_delay):
    pipe = io.StringIO()  # isatty() is False
    progress.set_stream(pipe)
    assert not progress.enabled()
    with progress.stage("schedule"):
        time.sleep(0.2)
    assert pipe.getvalue() == ""


@pytest.mark.parametrize("quiet", [False, True])
def test_compile_quiet_flag(fast_delay, monkeypatch, mlp_onnx, tmp_path, quiet):
    import lpuc.api

    real = lpuc.api.run_pipeline

    def slow_pipeline(*args, **kwargs):
        time.sleep(0.3)
        return real(*args, **kwargs)

    monkeypatch.setattr(lpuc.api, "run_pipeline", slow_pipeline)
    term = FakeTerminal()
    progress.set_stream(term)
    args = ["compile", str(mlp_onnx), "-o", str(tmp_path / "m.lpu")] + (["--quiet"] if quiet else [])
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    if quiet:
        assert term.getvalue() == ""
    else:
        assert "lpuc passes" in term.getvalue()
    # run takes the flag too, and every invocation sets it afresh (no --quiet: progress is back on)
    result = CliRunner().invoke(main, ["run", str(tmp_path / "m.lpu"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert not progress.enabled(FakeTerminal())
    result = CliRunner().invoke(main, ["run", str(tmp_path / "m.lpu")])
    assert result.exit_code == 0, result.output
    assert progress.enabled(FakeTerminal())
