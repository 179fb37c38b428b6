"""The target description: parsed once, every field checked, one-line errors naming file and field."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from lpuc.cli import main
from lpuc.errors import LpucError, TargetError
from lpuc.target import available_targets, load_target, load_target_file, target_from_dict

TARGETS = Path(__file__).resolve().parents[1] / "lpuc" / "targets"


def shipped(name: str = "tsp-v1") -> dict:
    return json.loads((TARGETS / f"{name}.json").read_text())


def write(tmp_path: Path, raw: dict, name: str = "my.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(raw))
    return path


def set_field(raw: dict, dotted: str, value) -> dict:
    raw = copy.deepcopy(raw)
    *parents, last = dotted.split(".")
    obj = raw
    for key in parents:
        obj = obj[key]
    if value is DELETE:
        del obj[last]
    else:
        obj[last] = value
    return raw


DELETE = object()


@pytest.mark.parametrize("name", available_targets())
def test_shipped_targets_round_trip(name):
    raw = shipped(name)
    t = load_target(name)
    assert t.as_dict() == raw
    # Same JSON text, so the hash names the file's content (900 stays 900, not 900.0).
    assert json.dumps(t.as_dict(), sort_keys=True) == json.dumps(raw, sort_keys=True)
    again = target_from_dict(t.as_dict())
    assert again == t and hash(again) == hash(t) and again.sha256 == t.sha256
    assert (
        len(t.sha256) == 64 and t.sha256 != load_target("tsp-mini" if name == "tsp-v1" else "tsp-v1").sha256
    )
    assert not hasattr(t, "raw")


def test_as_dict_is_a_copy():
    t = load_target("tsp-v1")
    d = t.as_dict()
    d["mem"]["banks"] = 99
    d["floorplan"][0][1] = 7
    assert t.mem_banks == 2 and t.num_mxm == 4


def test_specs_are_frozen():
    t = load_target("tsp-v1")
    with pytest.raises(AttributeError):
        t.mem.banks = 3
    with pytest.raises(TypeError):
        t.mxm.modes["fp16"] = t.mxm.modes["int8"]


def test_tsp_v1_numbers():
    """The published numbers (target-tsp.md) reach the public API."""
    t = load_target("tsp-v1")
    assert (t.name, t.clock_mhz, t.lanes, t.superlanes, t.word_bytes) == ("tsp-v1", 900, 320, 20, 320)
    assert (t.num_slices, t.num_mxm, t.num_sxm, t.vxm_alus, t.mem_banks) == (88, 4, 2, 16, 2)
    assert t.sram_bytes == 88 * 8192 * 320  # 220 MiB
    assert (t.instruction_queues, t.streams_per_direction, t.mem.banks) == (144, 32, 2)
    assert (t.mem.read_delay, t.mem.write_delay, t.delay("MEM")) == (1, 1, 2)
    assert t.stagger(320) == 19 and t.stagger(16) == 0
    fp16 = t.mxm_mode("fp16")
    assert (fp16.k_tile, fp16.n_tile, fp16.cycles_per_row) == (160, 320, 2)
    assert t.host.host_gflops == 50.0
    assert t.pcie_cycles(0) == 9000  # 10 us at 900 MHz
    # 600 ns hop + 15000 B over 4 lanes x 30 Gb/s = 15 GB/s (1000 ns): 1600 ns = 1440 cycles.
    assert (t.c2c.links, t.c2c_transfer_cycles(15000)) == (16, 1440)
    assert t.position("MXM0") == 0 and t.position("VXM3") == t.position("VXM0") == 47  # 2 MXM + SXM + 44 MEM
    with pytest.raises(LpucError, match="no MXM mode 'bf16'"):
        t.mxm_mode("bf16")


# (edit to tsp-v1.json, fragments the one-line error must contain)
DEFECTS = {
    "missing clock_mhz": ("clock_mhz", DELETE, "field clock_mhz is missing"),
    "alus_per_lane 0": ("vxm.alus_per_lane", 0, "field vxm.alus_per_lane = 0 must be >= 1"),
    "negative clock": ("clock_mhz", -900, "field clock_mhz = -900 must be > 0"),
    "nan clock": ("clock_mhz", float("nan"), "field clock_mhz = NaN must be a finite number"),
    "string clock": ("clock_mhz", "900", 'field clock_mhz = "900" must be a finite number'),
    "float count": ("superlanes", 20.0, "field superlanes = 20.0 must be an integer"),
    "bool count": ("mem.banks", True, "field mem.banks = true must be an integer"),
    "negative delay": ("sxm.delay", -1, "field sxm.delay = -1 must be >= 0"),
    "zero streams": ("streams_per_direction", 0, "field streams_per_direction = 0 must be >= 1"),
    "zero queues": ("instruction_queues", 0, "field instruction_queues = 0 must be >= 1"),
    "zero host gflops": ("host.host_gflops", 0.0, "field host.host_gflops = 0.0 must be > 0"),
    "n_tile > lanes": (
        "mxm.modes.fp16.n_tile",
        400,
        "field mxm.modes.fp16.n_tile = 400 exceeds the 320 lanes",
    ),
    "k_tile > rows": ("mxm.rows", 128, "field mxm.modes.int8.k_tile = 320 exceeds mxm.rows = 128"),
    "rows > lanes": ("mxm.rows", 640, "field mxm.rows = 640 exceeds the 320 lanes"),
    "word_bytes mismatch": ("mem.word_bytes", 256, "field mem.word_bytes = 256 must equal"),
    "unknown key": ("mem.bnaks", 2, "unknown field mem.bnaks (did you mean banks?)"),
    "unknown top key": ("transpose_group", 16, "unknown field transpose_group"),
    "odd key": ("vxm.a\nb", 1, 'unknown field vxm."a\\nb" (known: alus_per_lane, delay)'),
    "unknown mode": ("mxm.modes.bf16", {"k_tile": 1}, "unknown field mxm.modes.bf16"),
    "no fp16 mode": ("mxm.modes.fp16", DELETE, "field mxm.modes.fp16 is missing"),
    "mode not an object": ("mxm.modes.int8", 5, "field mxm.modes.int8 must be a JSON object"),
    "unknown floorplan kind": (
        "floorplan",
        [["MXM", 2], ["ALU", 1], ["MEM", 4], ["VXM", 1], ["SXM", 1]],
        'field floorplan[1] = ["ALU", 1] has unknown unit kind',
    ),
    "two VXM": (
        "floorplan",
        [["MXM", 1], ["SXM", 1], ["MEM", 4], ["VXM", 2]],
        "must have exactly one VXM column, not 2",
    ),
    "no MXM": ("floorplan", [["SXM", 1], ["MEM", 4], ["VXM", 1]], "must have at least one MXM column"),
    "bad floorplan entry": ("floorplan", [["MEM", 0]], 'field floorplan[0] = ["MEM", 0] must be a [kind'),
    "assumed typo": ("assumed", ["mem.read_dealy"], 'field assumed[0] = "mem.read_dealy" names no field'),
}


@pytest.mark.parametrize("case", DEFECTS, ids=list(DEFECTS))
def test_defect_is_one_line_error_naming_file_and_field(case, tmp_path):
    dotted, value, fragment = DEFECTS[case]
    path = write(tmp_path, set_field(shipped(), dotted, value))
    with pytest.raises(TargetError) as info:
        load_target(str(path))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: "), message
    assert fragment in message, message


def test_not_json_and_not_an_object(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(TargetError, match=r"bad\.json: not valid JSON"):
        load_target(str(bad))
    with pytest.raises(TargetError, match="the target must be a JSON object"):
        target_from_dict([1, 2])
    with pytest.raises(TargetError, match="cannot read target file"):
        load_target(str(tmp_path / "missing.json"))
    with pytest.raises(TargetError, match="unknown target 'tsp-v9'"):
        load_target("tsp-v9")


def test_cli_check_ok():
    result = CliRunner().invoke(main, ["targets", "--check", str(TARGETS / "tsp-v1.json")])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"{TARGETS / 'tsp-v1.json'}: ok (tsp-v1, 900 MHz, 320 lanes")


@pytest.mark.parametrize("case", ["missing clock_mhz", "string clock", "n_tile > lanes"])
def test_cli_check_bad_file(case, tmp_path):
    dotted, value, fragment = DEFECTS[case]
    path = write(tmp_path, set_field(shipped(), dotted, value))
    result = CliRunner().invoke(main, ["targets", "--check", str(path)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert lines == [f"error: {path}: {lines[0].split(': ', 2)[2]}"] and fragment in lines[0], result.output
    assert "Traceback" not in result.output


def test_cli_lists_targets():
    result = CliRunner().invoke(main, ["targets"])
    assert result.exit_code == 0 and "tsp-v1" in result.output and "tsp-mini" in result.output


def test_load_target_file_accepts_any_suffix(tmp_path):
    path = write(tmp_path, shipped("tsp-mini"), name="mini.target")
    assert load_target_file(path) == load_target("tsp-mini")
