"""Where an artifact's MXM plane time goes beyond the MXM bound, by product kind.

Per kind of product (a node's name with numbers folded: every layer's `mlp.#/MatMul` together): its
MMs, the plane cycles they take in rows (iw_cycles when installing + rows x cycles_per_row, the
cost model's rate: lpuc/cost.py unit_cycles), the cycles their MACs would take at the plane's full
rate (the MXM bound's share, lpuc/schedule/bounds.py), the excess and the ratio, and the cycles
their weight loads hold the planes' LW units. Then each plane's MM and LW totals: the busiest
plane's MM total is a floor under the schedule, however well it overlaps.

python -m tests.benchmarks.mxm_work X.lpu [--top N]
"""

from __future__ import annotations

import argparse
import re
from collections import Counter

from lpuc import cost
from lpuc.api import load
from lpuc.program import Program


def product_kind(node: str) -> str:
    """The last two parts of the product's node name (of a fused node, its first), numbers as #."""
    return re.sub(r"\d+", "#", "/".join(node.split("+")[0].split("/")[-2:]))


def mxm_work(program: Program) -> tuple[dict[str, dict[str, float]], Counter, Counter]:
    """Per product kind: mms, busy (plane cycles), ideal (MAC cycles), lw (LW unit cycles); and per
    plane the MM busy cycles and LW cycles."""
    target = program.target
    kinds: dict[str, dict[str, float]] = {}
    planes: Counter = Counter()
    loads: Counter = Counter()
    for ins in program.instructions:
        if ins.opcode not in ("mxm.mm", "mxm.lw"):
            continue
        row = kinds.setdefault(product_kind(ins.node), {"mms": 0, "busy": 0, "ideal": 0.0, "lw": 0})
        if ins.opcode == "mxm.lw":
            row["lw"] += ins.end - ins.start
            loads[ins.unit] += ins.end - ins.start
            continue
        precision = ins.attrs["precision"]
        install = target.iw_cycles if ins.attrs.get("install") else 0
        busy = install + cost.unit_cycles(target, ins.opcode, ins.work, precision)
        row["mms"] += 1
        row["busy"] += busy
        row["ideal"] += ins.work.macs / target.mxm_mode(precision).macs_per_cycle
        planes[ins.unit] += busy
    return kinds, planes, loads


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact")
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args(argv)
    program = load(args.artifact)
    kinds, planes, loads = mxm_work(program)
    busy = sum(r["busy"] for r in kinds.values())
    ideal = sum(r["ideal"] for r in kinds.values())
    print(
        f"{program.summary['cycles']:,} cycles; MM plane cycles {busy:,.0f}, at full rate {ideal:,.0f} "
        f"({ideal / max(1, len(planes)):,.0f} a plane: the MXM bound), excess {busy - ideal:,.0f}"
    )
    print("planes  MM " + "  ".join(f"{u} {c:,}" for u, c in sorted(planes.items())))
    print("        LW " + "  ".join(f"{u} {c:,}" for u, c in sorted(loads.items())))
    head = ("MMs", 6), ("busy", 9), ("ideal", 9), ("excess", 9), ("ratio", 5), ("LW", 8)
    print(f"{'product kind':44s} " + " ".join(f"{name:>{width}s}" for name, width in head))
    for kind, r in sorted(kinds.items(), key=lambda kv: -kv[1]["busy"])[: args.top]:
        ratio = r["ideal"] / r["busy"] if r["busy"] else 0.0
        print(
            f"{kind[-44:]:44s} {r['mms']:6.0f} {r['busy']:9,.0f} {r['ideal']:9,.0f} "
            f"{r['busy'] - r['ideal']:9,.0f} {ratio:5.2f} {r['lw']:8,.0f}"
        )


if __name__ == "__main__":
    main()
