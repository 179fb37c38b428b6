"""Golden schedule summaries: the fixed model set must compile to exactly the stored summaries.

Any difference fails, better or worse: an intended change is accepted by regenerating the goldens
(`make golden`) and showing the diff in the pull request. The `compiler` key (lpuc's version string)
is ignored: a version bump alone is no schedule change.
"""

from __future__ import annotations

import json

import pytest

from lpuc.diff import diff_summaries, render_text
from tests.golden import models, regen

IGNORED_KEYS = ("compiler",)
ADVICE = (
    "If the change is intended, run `make golden` and paste the `lpuc diff` table it prints into the "
    "pull request."
)


def _comparable(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k not in IGNORED_KEYS}


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("golden_models")


@pytest.mark.parametrize("name", models.names())
def test_schedule_summary_matches_golden(name, onnx_dir):
    stored = regen.read_golden(name)
    assert stored is not None, f"no golden summary {regen.summary_path(name)}. {ADVICE}"
    summary = regen.compile_summary(models.model_path(name, onnx_dir))
    result = diff_summaries({name: stored}, {name: summary}, tolerance=0.0)
    changed_keys = sorted(
        k for k in set(_comparable(stored)) | set(_comparable(summary)) if stored.get(k) != summary.get(k)
    )
    if result.regressed or changed_keys:
        other = [f"  {k}: {_short(stored.get(k))} -> {_short(summary.get(k))}" for k in changed_keys]
        pytest.fail(
            f"schedule summary of golden model {name!r} changed (keys: {', '.join(changed_keys)}):\n"
            f"{render_text(result)}\n" + "\n".join(other) + f"\n{ADVICE}",
            pytrace=False,
        )


def _short(value: object, limit: int = 160) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def test_no_stale_golden_summaries():
    stored = sorted(p.stem for p in regen.SUMMARIES.glob("*.json"))
    assert stored == models.names(), f"golden summaries and the golden model set differ. {ADVICE}"
