"""The schedule summary stored in every artifact: what `lpuc report` shows and CI diffs."""

from __future__ import annotations

from collections import Counter
from typing import Any

from lpuc import __version__
from lpuc.ir.tiled import TiledProgram
from lpuc.program import Program
from lpuc.schedule.allocator import Allocation


def summarize(
    program: Program, tiled: TiledProgram, bounds: dict[str, int], alloc: Allocation, options: dict
) -> dict[str, Any]:
    target = program.target
    cycles = max((i.end for i in program.instructions), default=0)
    busy: Counter[str] = Counter()
    for ins in program.instructions:
        for u in ins.units:
            busy[u] += ins.duration
    # Every compute unit (idle ones too: an average over VXM ALUs must count all of them); the host
    # only when used.
    shown = [u for u in target.units() if not u.startswith("MEM") and (u != "HOST" or busy[u])]
    units = {u: round(100.0 * busy[u] / cycles, 2) if cycles else 0.0 for u in shown}
    const_words = sum({t.const_key: t.words for t in program.tiles if t.kind == "const"}.values())
    host_nodes = sorted({i.node for i in program.instructions if i.opcode == "host.kernel"})
    return {
        "compiler": f"lpuc {__version__}",
        "model": program.model_name,
        "target": target.name,
        "precision": program.precision,
        "options": dict(sorted(options.items())),
        "cycles": cycles,
        "latency_us": round(target.cycles_to_us(cycles), 3),
        "lower_bound_cycles": bounds,
        "bound_ratio": round(cycles / bounds["overall"], 3) if bounds["overall"] else 1.0,
        "sram_peak_bytes": alloc.peak_words * target.word_bytes,
        "sram_used_bytes": sum(alloc.slice_peak_words.values()) * target.word_bytes,
        "sram_const_bytes": const_words * target.word_bytes,
        "sram_capacity_bytes": target.sram_bytes,
        "units": units,
        "instructions": len(program.instructions),
        "instructions_by_opcode": dict(sorted(Counter(i.opcode for i in program.instructions).items())),
        "tiles": len(program.tiles),
        "host_ops": len(host_nodes),
        "host_cycles": sum(i.duration for i in program.instructions if i.opcode == "host.kernel"),
        "host_pcie_cycles": sum(i.attrs.get("pcie_cycles", 0) for i in program.instructions),
        "host_nodes": host_nodes,
        "macs": sum(op.macs for op in tiled.ops),
    }
