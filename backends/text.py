"""A program as text: one line per instruction in issue order, for dumps, reviews and diffs.

cycle  +dur  unit      opcode        reads -> writes                          # node
   12   +57  MXM2      mxm.mm        t4[s3@0 x8 l0:64] -> t9[s7@0 x8 l0:128]  # /fc1/MatMul
"""

from __future__ import annotations

from lpuc.program import Access, Program


def _access(a: Access) -> str:
    return f"t{a.buf}[s{a.slice}@{a.addr} x{a.nrows} l{a.lane0}:{a.lane0 + a.nlanes}]"


def program_text(program: Program) -> str:
    s = program.summary
    lines = [
        f"program {program.model_name} target={program.target.name} precision={program.precision}",
        f"cycles={s.get('cycles')} latency_us={s.get('latency_us')} "
        f"bound={s.get('lower_bound_cycles', {}).get('overall')} "
        f"sram_peak_bytes={s.get('sram_peak_bytes')} instructions={len(program.instructions)}",
    ]
    for ins in sorted(program.instructions, key=lambda i: (i.start, i.id)):
        units = ins.unit if len(ins.units) == 1 else f"{ins.unit}+{len(ins.units) - 1}"
        reads = " ".join(_access(a) for a in ins.reads[:4]) + (" ..." if len(ins.reads) > 4 else "")
        writes = " ".join(_access(a) for a in ins.writes[:4]) + (" ..." if len(ins.writes) > 4 else "")
        lines.append(
            f"{ins.start:>9} +{ins.duration:<6} {units:<9} {ins.opcode:<12} {reads} -> {writes}  # {ins.node}"
        )
    lines.append("tiles:")
    for t in program.tiles:
        lines.append(
            f"  t{t.id} {t.kind:<6} {t.tensor}[{t.r0}:{t.r0 + t.rows}, {t.c0}:{t.c0 + t.lanes}] "
            f"{t.dtype} s{t.slice}@{t.addr}+{t.words}" + (f" lanes {t.lane}+" if t.lane else "")
        )
    return "\n".join(lines) + "\n"
