"""Every key of the schedule summary is documented in the README's summary table, and nothing more."""

from __future__ import annotations

import re
from pathlib import Path

import lpuc

README = Path(__file__).resolve().parents[1] / "README.md"


def _documented_keys(optional: bool = False) -> set[str]:
    """The keys of the README's summary table (optional=True: only those of rows saying "only
    when", which programs without the feature leave out)."""
    text = README.read_text()
    table = text[text.index("## The schedule summary") :]
    table = table[: table.index("\n## ")]
    keys = set()
    for line in table.splitlines():
        if line.startswith("| `") and (not optional or line.split("|")[2].strip().startswith("only when")):
            keys.update(re.findall(r"`([a-z_0-9]+)`", line.split("|")[1]))
    return keys


def test_every_summary_key_is_documented(mlp_onnx):
    summary = lpuc.compile(mlp_onnx).summary
    documented = _documented_keys()
    assert set(summary) - documented == set(), "summary keys missing from README"
    missing = documented - set(summary) - _documented_keys(optional=True)
    assert missing == set(), "README documents keys the summary does not have"
    assert summary["schema_version"] == 1
    assert summary["target"] == "tsp-v1" and summary["clock_mhz"] == 900
    assert re.fullmatch(r"[0-9a-f]{64}", summary["target_sha256"])
