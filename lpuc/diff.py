"""`lpuc diff`: compare schedule summaries metric by metric, the CI regression gate.

OLD and NEW are each a `.lpu` artifact, a JSON summary (`lpuc report --json`) or a directory of
them, matched by file stem. For every metric higher is worse; a metric that grew by more than the
tolerance (relative to OLD) is a regression and makes the exit code 1. The metric list is read from
whatever keys a summary has, so summaries with more (or fewer) keys still compare.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lpuc.errors import LpucError

Summary = dict[str, Any]

# Compared metrics in display order; "instructions_by_opcode" is a dict shown one row per opcode.
METRICS = (
    "cycles",
    "latency_us",
    "end_to_end_us",
    "bound_ratio",
    "sram_peak_bytes",
    "instructions",
    "instructions_by_opcode",
    "host_ops",
)
# Dict metrics whose missing entries are counts of zero (an opcode that is not used).
COUNT_DICTS = frozenset({"instructions_by_opcode"})
# Keys that say what was compiled for; a change is a note, not a regression.
NOTE_KEYS = ("target", "precision", "target_sha256", "clock_mhz", "options")
REQUIRED_KEYS = ("cycles", "instructions")
FORMATS = ("text", "markdown", "json")
SUFFIXES = (".lpu", ".json")
LPU_MAGIC = b"LPU\0"


@dataclass(frozen=True)
class Row:
    """One metric of one model. `old`/`new` are None when a side lacks the metric."""

    metric: str
    old: float | None
    new: float | None
    worse: bool  # grew beyond the tolerance
    better: bool  # shrank

    @property
    def pct(self) -> float | None:
        """Change in percent of OLD; None when there is no finite percentage (missing or zero OLD)."""
        if self.old is None or self.new is None:
            return None
        if self.old == self.new:
            return 0.0
        if self.old == 0:
            return None
        return 100.0 * (self.new - self.old) / abs(self.old)

    @property
    def mark(self) -> str:
        if self.worse:
            return "WORSE"
        if self.better:
            return "better"
        if self.old is None or self.new is None:
            return "only in " + ("NEW" if self.old is None else "OLD")
        return "within tolerance" if self.new != self.old else ""


@dataclass(frozen=True)
class ModelDiff:
    name: str
    status: str  # "compared", "added" (only in NEW) or "removed" (only in OLD)
    rows: tuple[Row, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def worse(self) -> list[Row]:
        return [r for r in self.rows if r.worse]

    @property
    def better(self) -> list[Row]:
        return [r for r in self.rows if r.better]

    @property
    def changed(self) -> bool:
        return self.status != "compared" or bool(self.notes) or any(r.old != r.new for r in self.rows)


@dataclass(frozen=True)
class DiffResult:
    tolerance: float  # a fraction: 0.01 is 1%
    models: tuple[ModelDiff, ...] = field(default_factory=tuple)

    @property
    def regressed(self) -> bool:
        return any(m.worse for m in self.models)

    @property
    def exit_code(self) -> int:
        return 1 if self.regressed else 0


# -- inputs ---------------------------------------------------------------------------------------
def parse_tolerance(text: str) -> float:
    """'1%' or '1' (both percent) -> 0.01."""
    s = str(text).strip()
    number = s[:-1] if s.endswith("%") else s
    try:
        value = float(number)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise LpucError(f"--tolerance: expected a non-negative percentage such as 1% or 1, got {text!r}")
    return value / 100.0


def load_summaries(path: str | Path) -> dict[str, Summary]:
    """Summaries keyed by model (file stem): one file, or every .lpu / .json file of a directory."""
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix in SUFFIXES)
        if not files:
            raise LpucError(f"{p}: no .lpu or .json summaries in this directory")
        out: dict[str, Summary] = {}
        for f in files:
            if f.stem in out:
                raise LpucError(f"{p}: two summaries for model {f.stem!r} (.lpu and .json); keep one")
            out[f.stem] = load_summary(f)
        return out
    return {p.stem: load_summary(p)}


def load_summary(path: str | Path) -> Summary:
    """The summary of a .lpu artifact (loaded and validated by lpuc.load) or of a JSON file."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise LpucError(f"{p}: cannot read ({e.strerror})") from None
    if p.suffix == ".lpu" or data.startswith(LPU_MAGIC):
        import lpuc

        return check_summary(lpuc.load(p).summary, str(p))
    try:
        summary = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise LpucError(f"{p}: not a JSON summary or a .lpu artifact (binary data)") from None
    except json.JSONDecodeError as e:
        raise LpucError(f"{p}: not a JSON summary or a .lpu artifact (invalid JSON: {e})") from None
    return check_summary(summary, str(p))


def check_summary(summary: Any, where: str) -> Summary:
    """Reject JSON that is not an lpuc schedule summary, with a message that says why."""
    if not isinstance(summary, dict):
        raise LpucError(f"{where}: not an lpuc schedule summary (a JSON {type(summary).__name__})")
    missing = [k for k in REQUIRED_KEYS if k not in summary]
    if missing:
        raise LpucError(f"{where}: not an lpuc schedule summary (no {', '.join(missing)})")
    for key in METRICS:
        value = summary.get(key)
        values = value.values() if isinstance(value, dict) else [value]
        if key in summary and not all(_is_number(v) for v in values):
            raise LpucError(f"{where}: not an lpuc schedule summary ({key} is not a finite number)")
    return summary


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# -- comparison -----------------------------------------------------------------------------------
def diff_paths(old: str | Path, new: str | Path, tolerance: float = 0.0) -> DiffResult:
    """Compare two files (whatever their names) or two sets of summaries matched by model name."""
    olds, news = load_summaries(old), load_summaries(new)
    if not Path(old).is_dir() and not Path(new).is_dir():
        # Two single files are compared with each other even when their names differ.
        (old_name,), (new_name,) = olds, news
        name = new_name if old_name == new_name else f"{old_name} -> {new_name}"
        olds, news = {name: olds[old_name]}, {name: news[new_name]}
    return diff_summaries(olds, news, tolerance)


def diff_summaries(old: dict[str, Summary], new: dict[str, Summary], tolerance: float = 0.0) -> DiffResult:
    models = []
    for name in sorted(set(old) | set(new)):
        if name not in new:
            models.append(ModelDiff(name, "removed"))
        elif name not in old:
            models.append(ModelDiff(name, "added"))
        else:
            models.append(compare(name, old[name], new[name], tolerance))
    return DiffResult(tolerance, tuple(models))


def compare(name: str, old: Summary, new: Summary, tolerance: float = 0.0) -> ModelDiff:
    rows = []
    for metric, a, b in _metric_pairs(old, new):
        worse = a is not None and b is not None and b - a > tolerance * abs(a)
        better = a is not None and b is not None and b < a
        rows.append(Row(metric, a, b, worse, better))
    notes = tuple(
        f"{key} differs: {old.get(key, '(absent)')} -> {new.get(key, '(absent)')}"
        for key in NOTE_KEYS
        if (key in old or key in new) and old.get(key) != new.get(key)
    )
    return ModelDiff(name, "compared", tuple(rows), notes)


def _metric_pairs(old: Summary, new: Summary) -> list[tuple[str, float | None, float | None]]:
    pairs = []
    for key in METRICS:
        a, b = old.get(key), new.get(key)
        if a is None and b is None:
            continue
        if isinstance(a, dict) or isinstance(b, dict):
            a, b = (v if isinstance(v, dict) else {} for v in (a, b))
            default = 0 if key in COUNT_DICTS else None
            pairs += [(f"{key}.{k}", a.get(k, default), b.get(k, default)) for k in sorted(set(a) | set(b))]
        else:
            pairs.append((key, a, b))
    return pairs


# -- output ---------------------------------------------------------------------------------------
def render(result: DiffResult, fmt: str = "text") -> str:
    if fmt == "text":
        return render_text(result)
    if fmt == "markdown":
        return render_markdown(result)
    if fmt == "json":
        return render_json(result)
    raise LpucError(f"unknown format {fmt!r} (choose {', '.join(FORMATS)})")


def render_text(result: DiffResult) -> str:
    lines: list[str] = []
    for m in result.models:
        if m.status != "compared":
            lines += [f"{m.name}: {_status_text(m)}", ""]
            continue
        lines.append(f"{m.name}: {_counts(m)}")
        table = [("metric", "old", "new", "change", "")] + [_cells(r) for r in m.rows]
        widths = [max(len(row[i]) for row in table) for i in range(5)]
        for row in table:
            cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:4], widths[1:4])] + [row[4]]
            lines.append("  " + "  ".join(cells).rstrip())
        lines += [f"  note: {n}" for n in m.notes] + [""]
    regressions = [(m, r) for m in result.models for r in m.worse]
    if regressions:
        lines.append(f"regressions beyond tolerance {_pct_text(result.tolerance)}:")
        lines += [
            f"  {m.name}: {r.metric} {_num(r.old)} -> {_num(r.new)} ({_change(r)})" for m, r in regressions
        ]
    lines.append(_verdict(result))
    return "\n".join(lines)


def render_markdown(result: DiffResult) -> str:
    lines = ["### lpuc schedule diff", "", _verdict(result), ""]
    unchanged = [m.name for m in result.models if not m.changed]
    for m in result.models:
        if m.status != "compared":
            lines += [f"- **{m.name}**: {_status_text(m)}", ""]
        elif m.changed:
            lines += [
                f"#### {m.name}: {_counts(m)}",
                "",
                "| metric | old | new | change | |",
                "|---|--:|--:|--:|---|",
            ]
            for r in m.rows:
                metric, old, new, change, mark = _cells(r)
                mark = f"**{mark}**" if r.worse else mark
                lines.append(f"| `{metric}` | {old} | {new} | {change} | {mark} |")
            lines += [""] + [f"> note: {n}" for n in m.notes] + ([""] if m.notes else [])
    if unchanged:
        lines.append("Unchanged: " + ", ".join(f"`{n}`" for n in unchanged))
    return "\n".join(lines).rstrip() + "\n"


def render_json(result: DiffResult) -> str:
    models = []
    for m in result.models:
        metrics = {
            r.metric: {
                "old": r.old,
                "new": r.new,
                "pct": None if r.pct is None else round(r.pct, 4),
                "worse": r.worse,
                "better": r.better,
            }
            for r in m.rows
        }
        models.append({"name": m.name, "status": m.status, "notes": list(m.notes), "metrics": metrics})
    doc = {
        "tolerance": result.tolerance,
        "regressed": result.regressed,
        "exit_code": result.exit_code,
        "models": models,
    }
    return json.dumps(doc, indent=2)


def _cells(r: Row) -> tuple[str, str, str, str, str]:
    return (r.metric, _num(r.old), _num(r.new), _change(r), r.mark)


def _num(value: float | None) -> str:
    return "-" if value is None else str(value)


def _change(r: Row) -> str:
    if r.old is None or r.new is None:
        return "-"
    if r.old == r.new:
        return "0.00%"
    if r.pct is None:  # from zero: no percentage
        return "new"
    # Tiny changes still show a digit: at tolerance 0 they are regressions.
    return f"{r.pct:+.2f}%" if abs(r.pct) >= 0.01 else f"{r.pct:+.1e}%"


def _pct_text(fraction: float) -> str:
    return f"{fraction * 100:g}%"


def _status_text(m: ModelDiff) -> str:
    return "added (only in NEW)" if m.status == "added" else "removed (only in OLD)"


def _counts(m: ModelDiff) -> str:
    worse, better = len(m.worse), len(m.better)
    if not worse and not better and not any(r.old != r.new for r in m.rows):
        return "unchanged"
    return f"{worse} worse, {better} better"


def _verdict(result: DiffResult) -> str:
    by_status = {s: sum(m.status == s for m in result.models) for s in ("compared", "added", "removed")}
    regressed = sum(bool(m.worse) for m in result.models)
    improved = sum(bool(m.better) and not m.worse for m in result.models)
    compared = _plural(by_status["compared"], "model")
    head = (
        f"REGRESSION: {regressed} of {compared} got worse"
        if regressed
        else f"no regressions: {compared} compared"
    )
    return (
        f"{head} (tolerance {_pct_text(result.tolerance)}); {improved} improved, "
        f"{by_status['added']} added, {by_status['removed']} removed"
    )


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"
