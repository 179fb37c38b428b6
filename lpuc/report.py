"""Human-readable schedule summary (`lpuc report`)."""

from __future__ import annotations

from typing import Any


def human_bytes(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(nbytes) < 1024 or unit == "GiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.2f} {unit}"
        nbytes /= 1024
    return f"{nbytes:.2f} GiB"


def bound_by(summary: dict[str, Any]) -> str:
    """The resource whose lower bound is the hardware bound (the largest; a tie: the later name)."""
    bounds = summary["lower_bound_cycles"]
    return max((k for k in bounds if k != "overall"), key=lambda k: (bounds[k], k))


def summary_text(s: dict[str, Any]) -> str:
    bounds = s["lower_bound_cycles"]
    binding = bound_by(s)
    path = s["critical_path"]
    lines = [
        f"model      {s['model']}  ({s['compiler']})",
        f"target     {s['target']} ({s['clock_mhz']:g} MHz, sha256 {s['target_sha256'][:12]}), "
        f"precision {s['precision']}",
        f"cycles     {s['cycles']}  = {s['latency_us']} us on the chip, {s['end_to_end_us']} us end to end "
        f"(model inputs and outputs over PCIe: {s['model_io_pcie_cycles']} cycles)",
        f"bound      {s['bound_ratio']}x the hardware bound of {bounds['overall']} cycles ({binding}); "
        + ", ".join(f"{k} {v}" for k, v in bounds.items() if k != "overall"),
        f"critical   {path['instructions']} instructions, {path['busy_cycles']} busy cycles; most: "
        + ", ".join(f"{t['node']} ({t['opcode']}) {t['cycles']}" for t in path["top"]),
        f"SRAM       peak {human_bytes(s['sram_peak_bytes'])} live, "
        f"{human_bytes(s['sram_used_bytes'])} addressed, "
        f"{human_bytes(s['sram_const_bytes'])} constants "
        f"({human_bytes(s['sram_const_padding_bytes'])} of it lane padding), "
        f"of {human_bytes(s['sram_capacity_bytes'])}",
        f"program    {s['instructions']} instructions, {s['tiles']} tiles, {s['macs']} MACs, "
        f"host ops {s['host_ops']}",
        "           " + ", ".join(f"{k} {v}" for k, v in s["instructions_by_opcode"].items()),
        "busy %     " + _units(s["units"]),
        f"           MEM ports {s['mem_ports_busy_pct']}, streams east {s['streams_busy_pct']['east']} "
        f"west {s['streams_busy_pct']['west']}",
    ]
    if s.get("host_tables"):
        tables = ", ".join(f"{n} {human_bytes(b)}" for n, b in s["host_tables"].items())
        lines.append(
            "host mem   tables kept in host memory (the program does not fit SRAM with them; only "
            f"gathered rows cross PCIe): {tables}"
        )
    if s.get("host_gathers"):
        tables = ", ".join(sorted(set(s["host_gathers"].values())))
        us = s["host_gather_cycles"] / s["clock_mhz"]
        lines.append(
            f"host mem   tables the host gathers from before the run (ids are model inputs; the rows "
            f"cross PCIe with the inputs): {tables}; {us:.1f} us on the host, in the end-to-end time"
        )
    if s.get("host_nodes"):
        us = s["latency_us"] / max(1, s["cycles"])  # microseconds per cycle
        lines.append(
            f"host       {s['host_ops']} ops, {s['host_cycles'] * us:.1f} us on the host "
            f"({s['host_pcie_cycles'] * us:.1f} us PCIe): " + ", ".join(s["host_nodes"])
        )
        if s.get("host_estimated_nodes"):
            lines.append(
                "           sizes depend on data, costed at their compile-time maximum: "
                + ", ".join(s["host_estimated_nodes"])
            )
    return "\n".join(lines)


def _units(units: dict[str, float]) -> str:
    vxm = [p for u, p in units.items() if u.startswith("VXM")]
    parts = [
        f"{u} {p:.1f}" for u, p in units.items() if not u.startswith("VXM") and (p or u.startswith("MXM"))
    ]
    if vxm:
        parts.append(f"VXM(avg of {len(vxm)} ALUs) {sum(vxm) / len(vxm):.1f}")
    return ", ".join(parts)
