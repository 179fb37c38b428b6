"""`lpuc diff`: the CI regression gate over schedule summaries (exit 0 / 1 / 2, text, markdown, json)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import lpuc
from lpuc.cli import main
from lpuc.diff import compare, parse_tolerance
from lpuc.errors import LpucError

MLP = Path(__file__).resolve().parents[1] / "models" / "mlp.onnx"


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("diff") / "mlp.lpu"
    lpuc.compile(MLP).save(path)
    return path


@pytest.fixture
def summary(artifact) -> dict:
    """A fresh copy of the compiled MLP's summary, with round numbers for exact percentages."""
    s = copy.deepcopy(lpuc.load(artifact).summary)
    s["cycles"] = 1000
    return s


def _write(path: Path, summary: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2, sort_keys=True))
    return path


def _diff(*args):
    return CliRunner().invoke(main, ["diff", *[str(a) for a in args]])


def _row(output: str, metric: str) -> str:
    (line,) = [ln for ln in output.splitlines() if ln.split()[:1] == [metric]]
    return line


def test_identical_exits_0(artifact, tmp_path):
    as_json = tmp_path / "mlp.json"
    as_json.write_text(CliRunner().invoke(main, ["report", "--json", str(artifact)]).stdout)
    result = _diff(artifact, as_json)
    assert result.exit_code == 0, result.output
    assert "no regressions" in result.stdout
    assert "WORSE" not in result.stdout and "better" not in result.stdout
    assert _row(result.stdout, "cycles").split()[1:4] == [str(lpuc.load(artifact).summary["cycles"])] * 2 + [
        "0.00%"
    ]


def test_worse_metric_exits_1_and_shows_the_row(summary, tmp_path):
    old = _write(tmp_path / "old" / "mlp.json", summary)
    summary["cycles"] = 1100
    new = _write(tmp_path / "new" / "mlp.json", summary)
    result = _diff(old, new)
    assert result.exit_code == 1, result.output
    assert _row(result.stdout, "cycles").split() == ["cycles", "1000", "1100", "+10.00%", "WORSE"]
    assert "mlp: cycles 1000 -> 1100 (+10.00%)" in result.stdout
    assert "REGRESSION" in result.stdout


def test_improvement_exits_0_and_is_marked(summary, tmp_path):
    old = _write(tmp_path / "old.json", summary)
    summary["cycles"] = 900
    summary["sram_peak_bytes"] //= 2
    new = _write(tmp_path / "new.json", summary)
    result = _diff(old, new)
    assert result.exit_code == 0, result.output
    assert _row(result.stdout, "cycles").split() == ["cycles", "1000", "900", "-10.00%", "better"]
    assert _row(result.stdout, "sram_peak_bytes").endswith("better")
    assert "1 improved" in result.stdout


@pytest.mark.parametrize(
    ("new_cycles", "tolerance", "code"),
    [
        (1010, "1%", 0),  # exactly at the tolerance: allowed
        (1010, "1", 0),  # a bare number is percent too
        (1011, "1%", 1),
        (1005, "0.5", 0),
        (1005, "0.4%", 1),
        (1001, "0", 1),  # the default: any growth fails
    ],
)
def test_tolerance(summary, tmp_path, new_cycles, tolerance, code):
    old = _write(tmp_path / "old.json", summary)
    new = _write(tmp_path / "new.json", {**summary, "cycles": new_cycles})
    result = _diff(old, new, "--tolerance", tolerance)
    assert result.exit_code == code, result.output
    assert _row(result.stdout, "cycles").endswith("WORSE" if code else "within tolerance")


def test_parse_tolerance():
    assert parse_tolerance("1%") == parse_tolerance("1") == pytest.approx(0.01)
    assert parse_tolerance(" 2.5% ") == pytest.approx(0.025)
    for bad in ("-1", "abc", "nan", "", "1%%"):
        with pytest.raises(LpucError, match="--tolerance"):
            parse_tolerance(bad)


def test_new_opcode_counts_as_worse(summary):
    new = copy.deepcopy(summary)
    new["instructions_by_opcode"]["sxm.kernel"] = 2
    diff = compare("mlp", summary, new)
    (row,) = diff.worse
    assert (row.metric, row.old, row.new, row.pct) == ("instructions_by_opcode.sxm.kernel", 0, 2, None)


def test_keys_of_a_newer_summary_schema(summary):
    """Metrics present on one side only are shown, not counted; a dict lower bound is no metric."""
    summary = {k: v for k, v in summary.items() if k != "end_to_end_us"}
    new = {**summary, "schema_version": 2, "end_to_end_us": 20.5, "lower_bound_cycles": {"overall": 3}}
    diff = compare("mlp", summary, new)
    row = next(r for r in diff.rows if r.metric == "end_to_end_us")
    assert (row.old, row.new, row.worse, row.mark) == (None, 20.5, False, "only in NEW")
    assert not diff.worse
    worse = compare("mlp", new, {**new, "end_to_end_us": 21.0})
    assert [r.metric for r in worse.worse] == ["end_to_end_us"]


def test_target_and_precision_changes_are_notes(summary, tmp_path):
    old = _write(tmp_path / "old.json", summary)
    new = _write(tmp_path / "new.json", {**summary, "target": "tsp-mini", "precision": "fp32"})
    result = _diff(old, new)
    assert result.exit_code == 0, result.output
    assert "note: target differs: tsp-v1 -> tsp-mini" in result.stdout
    assert "note: precision differs: fp16 -> fp32" in result.stdout


def test_directories_with_added_and_removed_models(summary, artifact, tmp_path):
    _write(tmp_path / "base" / "mlp.json", summary)
    _write(tmp_path / "base" / "old_only.json", summary)
    _write(tmp_path / "head" / "mlp.json", summary)
    (tmp_path / "head" / "new_only.lpu").write_bytes(artifact.read_bytes())
    (tmp_path / "head" / "README.txt").write_text("not a summary: ignored")
    result = _diff(tmp_path / "base", tmp_path / "head")
    assert result.exit_code == 0, result.output
    assert "new_only: added (only in NEW)" in result.stdout
    assert "old_only: removed (only in OLD)" in result.stdout
    assert "1 added, 1 removed" in result.stdout

    _write(tmp_path / "head" / "mlp.json", {**summary, "host_ops": 1})
    result = _diff(tmp_path / "base", tmp_path / "head")
    assert result.exit_code == 1, result.output
    assert "mlp: host_ops 0 -> 1 (new)" in result.stdout


def _bad_inputs(tmp_path: Path, summary: dict, artifact: Path) -> dict[str, Path]:
    data = artifact.read_bytes()
    files = {
        "missing": tmp_path / "missing.json",
        "not_json": tmp_path / "garbage.json",
        "binary": tmp_path / "binary.json",
        "list": tmp_path / "list.json",
        "no_cycles": tmp_path / "no_cycles.json",
        "non_numeric": tmp_path / "non_numeric.json",
        "nan": tmp_path / "nan.json",
        "truncated_lpu": tmp_path / "truncated.lpu",
        "corrupt_lpu": tmp_path / "corrupt.lpu",
        "empty_dir": tmp_path / "empty",
    }
    files["not_json"].write_text("cycles: 12\n")
    files["binary"].write_bytes(b"\xff\xfe\x00junk")
    files["list"].write_text("[1, 2]")
    _write(files["no_cycles"], {k: v for k, v in summary.items() if k != "cycles"})
    _write(files["non_numeric"], {**summary, "latency_us": "fast"})
    _write(files["nan"], {**summary, "cycles": float("nan")})  # json.dumps writes NaN
    files["truncated_lpu"].write_bytes(data[: len(data) // 2])
    files["corrupt_lpu"].write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    files["empty_dir"].mkdir()
    return files


@pytest.mark.parametrize(
    "case",
    [
        "missing",
        "not_json",
        "binary",
        "list",
        "no_cycles",
        "non_numeric",
        "nan",
        "truncated_lpu",
        "corrupt_lpu",
        "empty_dir",
    ],
)
def test_bad_input_exits_2_with_one_line(case, summary, artifact, tmp_path):
    bad = _bad_inputs(tmp_path, summary, artifact)[case]
    good = _write(tmp_path / "good.json", summary)
    for args in ((bad, good), (good, bad)):
        result = _diff(*args)
        assert result.exit_code == 2, result.output
        assert result.stdout == ""
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and str(bad) in lines[0], result.stderr


def test_bad_tolerance_exits_2(summary, tmp_path):
    path = _write(tmp_path / "s.json", summary)
    result = _diff(path, path, "--tolerance", "lots")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: --tolerance") and len(result.stderr.splitlines()) == 1


def test_markdown_format(summary, tmp_path):
    _write(tmp_path / "base" / "mlp.json", summary)
    _write(tmp_path / "base" / "same.json", summary)
    _write(tmp_path / "head" / "mlp.json", {**summary, "cycles": 1200, "instructions": 1})
    _write(tmp_path / "head" / "same.json", summary)
    result = _diff(tmp_path / "base", tmp_path / "head", "--format", "markdown")
    assert result.exit_code == 1, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "### lpuc schedule diff"
    table = [ln for ln in lines if ln.startswith("|")]
    assert table[0] == "| metric | old | new | change | |"
    assert all(ln.count("|") == 6 for ln in table)  # five cells on every row
    assert "| `cycles` | 1000 | 1200 | +20.00% | **WORSE** |" in table
    assert any(ln.startswith("| `instructions` |") and ln.endswith("| better |") for ln in table)
    assert "Unchanged: `same`" in lines
    assert not any("`same`" in ln for ln in table)  # unchanged models get no table


def test_json_format(summary, tmp_path):
    old = _write(tmp_path / "old.json", summary)
    new = _write(tmp_path / "new.json", {**summary, "cycles": 1250, "bound_ratio": 0.5})
    result = _diff(old, new, "--format", "json", "--tolerance", "10%")
    assert result.exit_code == 1, result.output
    doc = json.loads(result.stdout)
    assert (doc["regressed"], doc["exit_code"], doc["tolerance"]) == (True, 1, pytest.approx(0.1))
    (model,) = doc["models"]
    assert model["status"] == "compared"
    assert model["metrics"]["cycles"] == {
        "old": 1000,
        "new": 1250,
        "pct": 25.0,
        "worse": True,
        "better": False,
    }
    assert model["metrics"]["bound_ratio"]["better"] is True
    assert model["metrics"]["bound_ratio"]["worse"] is False
    assert model["metrics"]["host_ops"] == {"old": 0, "new": 0, "pct": 0.0, "worse": False, "better": False}
    assert "instructions_by_opcode.mxm.mm" in model["metrics"]
