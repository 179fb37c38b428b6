"""Errors a user can cause. Each carries a one-line message and the CLI exit code.

The CLI prints `error: <message>` and exits with `exit_code`; a Python traceback is shown only with
`--debug`. Internal bugs stay ordinary exceptions so they are never mistaken for bad input.
"""

from __future__ import annotations


class LpucError(Exception):
    """Bad input or an impossible request: a clear message and exit code 2."""

    exit_code = 2


class ModelError(LpucError):
    """The model file cannot be read, is not ONNX, or is not valid ONNX."""


class TargetError(LpucError):
    """A target description file is missing a field, has a wrong or out-of-range value, or is inconsistent."""


class UnsupportedError(LpucError):
    """The model uses operators or features lpuc cannot compile."""


class ShapeError(LpucError):
    """A shape is not static (unbound dynamic dim) or cannot be inferred."""


class DoesNotFitError(LpucError):
    """The program needs more SRAM than the target has."""


class ArtifactError(LpucError):
    """A .lpu file is corrupt, truncated, of another version, or fails validation."""


class ScheduleError(LpucError):
    """A schedule breaks a hardware rule (found by the validator)."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(f"invalid schedule: {problems[0]}{more}")


class CheckFailed(LpucError):
    """`lpuc run --check`: outputs differ from onnxruntime beyond tolerance."""

    exit_code = 1
