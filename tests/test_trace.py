"""`--trace`: valid trace-event JSON, one track per unit that executed work, SRAM counter."""

from __future__ import annotations

import json

from click.testing import CliRunner

from lpuc.cli import main


def test_trace_is_valid_trace_event_json(residual_onnx, tmp_path):
    art, trace = tmp_path / "res.lpu", tmp_path / "trace.json"
    runner = CliRunner()
    assert runner.invoke(main, ["compile", str(residual_onnx), "-o", str(art)]).exit_code == 0
    result = runner.invoke(main, ["run", str(art), "--trace", str(trace)])
    assert result.exit_code == 0, result.output

    events = json.loads(trace.read_text())["traceEvents"]
    assert events
    for e in events:
        assert {"ph", "ts", "dur", "pid", "tid"} <= set(e), e
        assert isinstance(e["ts"], (int, float)) and isinstance(e["dur"], (int, float)) and e["dur"] >= 0

    names = {e["tid"]: e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    work = [e for e in events if e["ph"] == "X"]
    busy_tracks = {e["tid"] for e in work}
    assert busy_tracks == set(names), "every named track has work and every event sits on a named track"
    assert len(set(names.values())) == len(names), "one track per unit"
    assert any(n.startswith("MXM") for n in names.values()) and any(
        n.startswith("VXM") for n in names.values()
    )
    assert all(
        e["name"].split(" ", 1)[0] in {"mxm.lw", "mxm.mm", "vxm.map", "vxm.kernel", "sxm.kernel"}
        for e in work
    )
    assert any("/fc1/" in e["name"] or "fc1" in e["name"] for e in work), "events name their source node"
    counters = [e for e in events if e["ph"] == "C"]
    assert counters and max(e["args"]["bytes"] for e in counters) > 0
