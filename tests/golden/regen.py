"""`make golden` (python -m tests.golden.regen): recompile the golden model set and rewrite
tests/golden/summaries/<name>.json. Prints the `lpuc diff` table (markdown) of the old summaries
against the new ones: paste it into the pull request that changes them."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import lpuc
from lpuc.diff import diff_summaries, render_markdown
from lpuc.fileio import atomic_write
from tests.golden import models

SUMMARIES = Path(__file__).resolve().parent / "summaries"
TARGET = "tsp-v1"
PRECISION = "fp16"


def compile_summary(path: Path) -> dict[str, Any]:
    return lpuc.compile(path, target=TARGET, precision=PRECISION).summary


def summary_path(name: str) -> Path:
    return SUMMARIES / f"{name}.json"


def read_golden(name: str) -> dict[str, Any] | None:
    path = summary_path(name)
    return json.loads(path.read_text()) if path.is_file() else None


def dumps(summary: dict[str, Any]) -> str:
    return json.dumps(summary, indent=2, sort_keys=True) + "\n"


def main() -> int:
    SUMMARIES.mkdir(exist_ok=True)
    old = {p.stem: json.loads(p.read_text()) for p in sorted(SUMMARIES.glob("*.json"))}
    new = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in models.names():
            new[name] = compile_summary(models.model_path(name, Path(tmp)))
            atomic_write(summary_path(name), dumps(new[name]))
    for stale in sorted(set(old) - set(new)):  # a model that left the set
        summary_path(stale).unlink()
    result = diff_summaries(old, new)
    changed = [m.name for m in result.models if m.changed or old.get(m.name) != new.get(m.name)]
    print(f"wrote {len(new)} summaries to {SUMMARIES}; changed: {', '.join(changed) or 'none'}")
    if changed:
        print(render_markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
