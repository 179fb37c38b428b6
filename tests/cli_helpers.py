"""Driving the `lpuc` command line in tests, and what a user error must look like there."""

from __future__ import annotations

from click.testing import CliRunner, Result

from lpuc.cli import main


def invoke(*args) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_line_error(result: Result, *fragments: str, code: int = 2, only: bool = False) -> None:
    """Exit `code`, a last line `error: ...` holding every fragment, no traceback and no internal error;
    `only`: that line is all the command printed."""
    assert result.exit_code == code, result.output
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith("error: "), result.output
    if only:
        assert len(lines) == 1, result.output
    for f in fragments:
        assert f in lines[-1], (f, lines[-1])
    assert "Traceback" not in result.output and "internal error" not in result.output
