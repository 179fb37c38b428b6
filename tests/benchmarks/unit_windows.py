"""When each unit is busy: an artifact's busy cycles per unit over windows of its schedule.

`lpuc report` gives each unit's busy share of the whole run; a unit that is saturated in one stage
and idle in the next averages to a middling share. Per window, a stage bound by one kind of unit
shows it near 100% while the others idle. With --stages, the cycle at which the last instruction of
each node-name prefix ends (where a network's stages hand over). Issue 8 (ResNet-50 v1.5 int8,
80,681 cycles): both SXMs over 90% busy in cycles 0-10k, yet with every SXM kernel charged a tenth
of its vectors layer1 still ends at 24.7k instead of 28.2k (MXM chains bound it after that).

python -m tests.benchmarks.unit_windows X.lpu [--window 5000] [--stages /layers/layers.2/ ...]
"""

from __future__ import annotations

import argparse

from lpuc.api import load
from lpuc.program import Program
from lpuc.schedule.summary import held_until

# The units shown: the compute units and their weight-load queues (VXM ALUs as one average).
_KINDS = ("MXM", "SXM", "VXM")


def unit_windows(program: Program, window: int) -> dict[str, list[int]]:
    """Unit -> busy cycles in each window [k * window, (k + 1) * window) of the schedule. An MM
    holds its plane only while its rows stream in (as in lpuc report), everything else until its end."""
    if window <= 0:
        raise ValueError(f"window must be positive, got {window}")
    cycles = max((i.end for i in program.instructions), default=0)
    count = max(1, -(-cycles // window))
    busy: dict[str, list[int]] = {u: [0] * count for u in program.target.units() if u.startswith(_KINDS)}
    for ins in program.instructions:
        own = held_until(program, ins, ins.unit) if ins.units else ins.end
        for u in ins.units:
            if u not in busy:
                continue
            start, end = ins.start, own if u == ins.unit else ins.end
            for k in range(start // window, (end - 1) // window + 1 if end > start else 0):
                busy[u][k] += min(end, (k + 1) * window) - max(start, k * window)
    return busy


def stage_ends(program: Program, prefixes: list[str]) -> dict[str, int]:
    """Prefix -> the cycle at which the last instruction whose node name starts with it ends (0: none)."""
    ends = dict.fromkeys(prefixes, 0)
    for ins in program.instructions:
        for p in prefixes:
            if ins.node.startswith(p) or f"+{p}" in ins.node:  # (a fused op names all its nodes)
                ends[p] = max(ends[p], ins.end)
    return ends


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact")
    parser.add_argument("--window", type=int, default=5000)
    parser.add_argument("--stages", nargs="*", default=[], help="node-name prefixes")
    args = parser.parse_args(argv)
    program = load(args.artifact)
    busy = unit_windows(program, args.window)
    alus = [u for u in busy if u.startswith("VXM")]
    shown = [u for u in busy if not u.startswith("VXM")]
    print(f"{program.summary['cycles']:,} cycles; busy % per {args.window}-cycle window (VXM: ALU average)")
    print("  window " + " ".join(f"{u:>8s}" for u in [*shown, "VXM"]))
    for k in range(len(busy[shown[0]]) if shown else 0):
        width = min(args.window, program.summary["cycles"] - k * args.window)
        pct = [100 * busy[u][k] / width for u in shown]
        pct.append(100 * sum(busy[u][k] for u in alus) / (width * max(1, len(alus))))
        print(f"  {k * args.window:>6d} " + " ".join(f"{p:8.0f}" for p in pct))
    for prefix, end in stage_ends(program, args.stages).items():
        print(f"  {prefix}: last instruction ends at {end:,}")


if __name__ == "__main__":
    main()
