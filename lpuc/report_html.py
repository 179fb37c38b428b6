"""`lpuc report ART --html out.html`: one self-contained page about a compiled program.

The page has no external resources (inline CSS, inline SVG drawn here) so it can be mailed or kept
as a CI artifact. It shows the summary table, per-unit utilization over time, SRAM occupancy over
time and the longest instructions on the critical path.
"""

from __future__ import annotations

import html
import os
from typing import Any

import numpy as np

from lpuc.fileio import atomic_write
from lpuc.program import Instruction, Program
from lpuc.report import human_bytes
from lpuc.schedule.critical_path import critical_path
from lpuc.schedule.validator import tile_lifetimes

BINS = 200  # time buckets of the charts
TOP = 20  # critical-path instructions listed

_CSS = """
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 24px 32px;
       color: #1d2330; background: #fff; max-width: 1400px; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 8px; }
.sub { color: #5b6475; margin-bottom: 16px; }
table { border-collapse: collapse; }
th { white-space: nowrap; }
td, th { padding: 3px 10px; border-bottom: 1px solid #e3e6ec; text-align: left; vertical-align: top; }
th { background: #f3f5f8; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
table.summary td:first-child { color: #5b6475; white-space: nowrap; }
.note { color: #5b6475; font-size: 13px; margin: 6px 0; }
svg { display: block; max-width: 100%; height: auto; }
svg text { font: 11px system-ui, sans-serif; fill: #39404f; }
.bar { background: #d9534f; height: 10px; display: inline-block; vertical-align: middle; }
code { font-size: 12px; }
"""


def write_report_html(program: Program, path: str | os.PathLike) -> None:
    """Render the page and write it atomically."""
    atomic_write(path, report_html(program))


def report_html(program: Program) -> str:
    s = program.summary
    cycles = int(s.get("cycles") or max((i.end for i in program.instructions), default=0))
    edges = np.linspace(0.0, float(max(cycles, 1)), min(BINS, max(cycles, 1)) + 1)
    rows = unit_utilization(program, edges)
    sram = sram_occupancy(program, edges)
    path = critical_path(program)
    title = f"lpuc report: {s.get('model', program.model_name)}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f'<div class="sub">{_e(s.get("target", ""))}, precision {_e(s.get("precision", ""))}, '
        f"{_e(s.get('compiler', ''))}</div>",
        "<h2>Summary</h2>",
        _summary_table(s),
        "<h2>Unit utilization over time</h2>",
        f'<p class="note">Busy fraction of each unit in {len(edges) - 1} buckets of '
        f"{_num(edges[1] - edges[0], 1)} cycles; VXM is the average over its ALUs.</p>",
        _heatmap_svg(rows, edges),
        "<h2>SRAM occupancy over time</h2>",
        '<p class="note">Peak live bytes in each bucket (a tile is live from its first write to its last '
        "use; constants, inputs and outputs as the allocator counts them).</p>",
        _occupancy_svg(sram, edges, int(s.get("sram_capacity_bytes", 0))),
        "<h2>Critical path</h2>",
        _critical_section(path, cycles),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


# -- data -----------------------------------------------------------------------------------------
def unit_utilization(program: Program, edges: np.ndarray) -> dict[str, np.ndarray]:
    """Busy fraction per bucket: one row per MXM plane and SXM, VXM (mean of ALUs), HOST."""
    units = program.target.units()
    intervals: dict[str, list[tuple[int, int]]] = {u: [] for u in units}
    for ins in program.instructions:
        for u in ins.units:
            intervals.setdefault(u, []).append((ins.start, ins.end))
    busy = {u: _busy_fraction(sorted(iv), edges) for u, iv in intervals.items()}
    rows = {u: busy[u] for u in units if u.startswith("MXM") and "." not in u}
    rows.update({u: busy[u] for u in units if u.startswith("SXM")})
    vxm = [busy[u] for u in units if u.startswith("VXM")]
    if vxm:
        rows["VXM"] = np.mean(vxm, axis=0)
    rows["HOST"] = busy.get("HOST", np.zeros(len(edges) - 1))
    return rows


def _busy_fraction(intervals: list[tuple[int, int]], edges: np.ndarray) -> np.ndarray:
    # A unit runs one instruction at a time, so its cumulative busy time is piecewise linear
    # through (start_k, C_k) and (end_k, C_k + d_k); sampling it at the edges gives busy per bucket.
    if not intervals:
        return np.zeros(len(edges) - 1)
    iv = np.asarray(intervals, dtype=np.float64)
    done = np.concatenate([[0.0], np.cumsum(iv[:, 1] - iv[:, 0])])
    xs = np.column_stack([iv[:, 0], iv[:, 1]]).ravel()
    ys = np.column_stack([done[:-1], done[1:]]).ravel()
    cum = np.interp(edges, xs, ys, left=0.0, right=done[-1])
    return np.clip(np.diff(cum) / np.diff(edges), 0.0, 1.0)


def sram_occupancy(program: Program, edges: np.ndarray) -> np.ndarray:
    """Peak live SRAM bytes in each bucket (identical constant tiles share one slot: counted once)."""
    life = tile_lifetimes(program)
    seen: set[tuple[int, int]] = set()
    events: list[tuple[int, int]] = []
    for t in program.tiles:
        if t.kind == "host" or not t.words:
            continue
        if t.const_key is not None:
            if (t.slice, t.addr) in seen:
                continue
            seen.add((t.slice, t.addr))
        start, end = life[t.id]
        events += [(start, t.words), (end, -t.words)]
    nbins = len(edges) - 1
    if not events:
        return np.zeros(nbins)
    events.sort()  # frees before allocations at the same cycle, as the allocator counts
    times = np.array([e[0] for e in events], dtype=np.float64)
    level = np.cumsum([e[1] for e in events]) * program.target.word_bytes
    # Level at each bucket's start (after all events up to it), then the max of events inside it.
    before = np.searchsorted(times, edges[:-1], side="right") - 1
    peak = np.where(before >= 0, level[np.maximum(before, 0)], 0).astype(np.float64)
    inside = np.clip(np.searchsorted(edges, times, side="right") - 1, 0, nbins - 1)
    np.maximum.at(peak, inside, level)
    return peak


# -- rendering ------------------------------------------------------------------------------------
def _summary_table(s: dict[str, Any]) -> str:
    bounds = s.get("lower_bound_cycles", {})
    units = s.get("units", {})
    vxm = [p for u, p in units.items() if u.startswith("VXM")]
    busy = [f"{u} {p:.1f}%" for u, p in units.items() if not u.startswith("VXM")]
    if vxm:
        busy.append(f"VXM (avg of {len(vxm)} ALUs) {sum(vxm) / len(vxm):.1f}%")
    rows = [
        ("cycles", f"{s.get('cycles', 0):,}"),
        ("latency", f"{s.get('latency_us', 0)} us"),
        ("lower bound", f"{bounds.get('overall', 0):,} cycles"),
        ("achieved / bound", f"{s.get('bound_ratio', 0)}x"),
        ("bounds", ", ".join(f"{k} {v:,}" for k, v in bounds.items() if k != "overall")),
        ("SRAM peak live", human_bytes(s.get("sram_peak_bytes", 0))),
        ("SRAM addressed", human_bytes(s.get("sram_used_bytes", 0))),
        ("SRAM constants", human_bytes(s.get("sram_const_bytes", 0))),
        ("SRAM constant lane padding", human_bytes(s.get("sram_const_padding_bytes", 0))),
        ("host-memory tables", human_bytes(sum(s.get("host_tables", {}).values()))),
        ("SRAM capacity", human_bytes(s.get("sram_capacity_bytes", 0))),
        ("instructions", f"{s.get('instructions', 0):,}"),
        ("by opcode", ", ".join(f"{k} {v:,}" for k, v in s.get("instructions_by_opcode", {}).items())),
        ("tiles", f"{s.get('tiles', 0):,}"),
        ("MACs", f"{s.get('macs', 0):,}"),
        ("host ops", f"{s.get('host_ops', 0):,}"),
        ("busy", ", ".join(busy)),
    ]
    body = "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in rows)
    return f'<table class="summary">{body}</table>'


_LEFT, _RIGHT, _TOP, _BOTTOM = 90, 20, 10, 36
_WIDTH = 1200


def _heatmap_svg(rows: dict[str, np.ndarray], edges: np.ndarray) -> str:
    n = len(edges) - 1
    row_h = 22
    plot_w = _WIDTH - _LEFT - _RIGHT
    height = _TOP + row_h * len(rows) + _BOTTOM
    cell_w = plot_w / n
    out = [_svg_open(_WIDTH, height, "unit utilization heatmap")]
    for r, (unit, frac) in enumerate(rows.items()):
        y = _TOP + r * row_h
        avg = float(frac.mean()) * 100 if n else 0.0
        out.append(f'<text x="{_LEFT - 8}" y="{y + row_h * 0.68:.1f}" text-anchor="end">{_e(unit)}</text>')
        out.append(
            f'<rect x="{_LEFT}" y="{y + 1}" width="{plot_w}" height="{row_h - 2}" fill="#f3f5f8">'
            f"<title>{_e(unit)}: {avg:.1f}% busy overall</title></rect>"
        )
        for k, f in enumerate(frac):
            if f <= 0.005:
                continue
            x = _LEFT + k * cell_w
            out.append(
                f'<rect x="{x:.2f}" y="{y + 1}" width="{cell_w + 0.3:.2f}" height="{row_h - 2}" '
                f'fill="{_blue(float(f))}"><title>{_e(unit)} cycles {int(edges[k])}-{int(edges[k + 1])}: '
                f"{f * 100:.0f}% busy</title></rect>"
            )
    out += _x_axis(edges, _TOP + row_h * len(rows), plot_w)
    out.append("</svg>")
    legend = (
        '<p class="note">Colour: busy fraction, from <span style="color:#9db7d8">light (low)</span> to '
        '<span style="color:#08306b">dark (100%)</span>; grey: idle.</p>'
    )
    return "\n".join(out) + legend


def _occupancy_svg(peak: np.ndarray, edges: np.ndarray, capacity: int) -> str:
    height = 260
    plot_w = _WIDTH - _LEFT - _RIGHT
    plot_h = height - _TOP - _BOTTOM
    top = float(peak.max()) * 1.1 if peak.size and peak.max() > 0 else 1.0
    base = _TOP + plot_h
    pts = [f"{_LEFT},{base}"]
    for k, v in enumerate(peak):
        x0 = _LEFT + plot_w * (edges[k] - edges[0]) / (edges[-1] - edges[0])
        x1 = _LEFT + plot_w * (edges[k + 1] - edges[0]) / (edges[-1] - edges[0])
        y = base - plot_h * float(v) / top
        pts += [f"{x0:.2f},{y:.2f}", f"{x1:.2f},{y:.2f}"]
    pts.append(f"{_LEFT + plot_w},{base}")
    out = [_svg_open(_WIDTH, height, "SRAM occupancy")]
    for frac in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = base - plot_h * frac
        out.append(
            f'<line x1="{_LEFT}" x2="{_LEFT + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e3e6ec"/>'
            f'<text x="{_LEFT - 8}" y="{y + 4:.1f}" text-anchor="end">{_e(human_bytes(top * frac))}</text>'
        )
    out.append(
        f'<polygon points="{" ".join(pts)}" fill="#74a9cf" fill-opacity="0.55" stroke="#0570b0" '
        'stroke-width="1.2"/>'
    )
    out += _x_axis(edges, base, plot_w)
    out.append("</svg>")
    peak_max = float(peak.max()) if peak.size else 0.0
    note = f"peak {human_bytes(peak_max)}"
    if capacity:
        note += f" of {human_bytes(capacity)} ({100 * peak_max / capacity:.2f}% of SRAM)"
    return "\n".join(out) + f'<p class="note">{_e(note)}</p>'


def _critical_section(path: list[Instruction], cycles: int) -> str:
    if not path:
        return '<p class="note">No instructions.</p>'
    on_path = sum(i.duration for i in path)
    intro = (
        f'<p class="note">{len(path):,} instructions; their durations add up to {on_path:,} of '
        f"{cycles:,} cycles ({100 * on_path / max(cycles, 1):.1f}%); the rest is waiting between "
        f"them. The {min(TOP, len(path))} longest:</p>"
    )
    top = sorted(path, key=lambda i: (-i.duration, i.start, i.id))[:TOP]
    longest = max(1, top[0].duration)
    head = (
        "<tr><th class='num'>#</th><th class='num'>id</th><th>opcode</th><th>unit</th><th>node</th>"
        "<th class='num'>start</th><th class='num'>cycles</th><th class='num'>% of total</th><th></th></tr>"
    )
    body = []
    for rank, ins in enumerate(top, start=1):
        width = 160 * ins.duration / longest
        body.append(
            f"<tr><td class='num'>{rank}</td><td class='num'>{ins.id}</td><td><code>{_e(ins.opcode)}</code>"
            f"</td><td>{_e(_units_label(ins.units))}</td><td>{_e(ins.node)}</td>"
            f"<td class='num'>{ins.start:,}</td><td class='num'>{ins.duration:,}</td>"
            f"<td class='num'>{100 * ins.duration / max(cycles, 1):.1f}</td>"
            f"<td><span class='bar' style='width:{width:.0f}px'></span></td></tr>"
        )
    return intro + f"<table>{head}{''.join(body)}</table>"


def _units_label(units: tuple[str, ...]) -> str:
    if len(units) <= 2:
        return " ".join(units)
    return f"{units[0]}..{units[-1]} ({len(units)} units)"  # a wide VXM map holds many ALUs


def _svg_open(width: int, height: int, label: str) -> str:
    return (
        f'<svg viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" role="img" aria-label="{_e(label)}" shape-rendering="crispEdges">'
    )


def _x_axis(edges: np.ndarray, y: float, plot_w: float) -> list[str]:
    span = edges[-1] - edges[0]
    out = [f'<line x1="{_LEFT}" x2="{_LEFT + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#8a93a3"/>']
    for frac in np.linspace(0.0, 1.0, 6):
        x = _LEFT + plot_w * frac
        anchor = "start" if frac == 0 else "end" if frac == 1 else "middle"
        out.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{y:.1f}" y2="{y + 4:.1f}" stroke="#8a93a3"/>'
            f'<text x="{x:.1f}" y="{y + 16:.1f}" text-anchor="{anchor}">'
            f"{int(round(edges[0] + span * frac)):,}</text>"
        )
    out.append(f'<text x="{_LEFT + plot_w / 2:.1f}" y="{y + 30:.1f}" text-anchor="middle">cycle</text>')
    return out


def _blue(f: float) -> str:
    # light to dark blue as the busy fraction grows
    lo, hi = np.array([0xC6, 0xDB, 0xEF]), np.array([0x08, 0x30, 0x6B])
    r, g, b = (lo + (hi - lo) * min(max(f, 0.0), 1.0)).round().astype(int)
    return f"#{r:02x}{g:02x}{b:02x}"


def _num(x: float, digits: int) -> str:
    return f"{x:,.{digits}f}"


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)
