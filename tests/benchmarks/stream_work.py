"""How much of an artifact's stream budget its instructions hold, by opcode and kind of node.

Every instruction holds its east and west stream ids for its whole duration (lpuc/cost.py
stream_needs); the scheduler never books more than the target's streams_per_direction in a cycle.
So the stream-cycles an artifact's instructions hold, over the streams a direction has, are a floor
under its schedule (for these durations): a chip whose planes wait while the streams are full is
stream-bound, not MXM-bound. Issue 9's int8 GEMM (2304x4096x320): its on-chip quantization of the
fp32 input alone holds 5,637 cycles of both directions' streams.

python -m tests.benchmarks.stream_work X.lpu [--top N]
"""

from __future__ import annotations

import argparse
from collections import Counter

from lpuc.api import load
from lpuc.program import Program
from tests.benchmarks.mxm_work import product_kind


def stream_work(program: Program) -> tuple[Counter, Counter]:
    """Stream-cycles held per direction ("E", "W"), and per (opcode, product kind, direction)."""
    per_direction: Counter = Counter()
    per_kind: Counter = Counter()
    for ins in program.instructions:
        held = ins.end - ins.start
        for unit in ins.units:
            if unit.startswith(("SE", "SW")):
                direction = unit[1]
                per_direction[direction] += held
                per_kind[(ins.opcode, product_kind(ins.node), direction)] += held
    return per_direction, per_kind


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args(argv)
    program = load(args.artifact)
    streams = program.target.streams_per_direction
    per_direction, per_kind = stream_work(program)
    both = per_direction["E"] + per_direction["W"]
    print(
        f"{program.summary['cycles']:,} cycles; stream-cycles east {per_direction['E']:,} "
        f"(floor {per_direction['E'] / streams:,.0f}), west {per_direction['W']:,} "
        f"(floor {per_direction['W'] / streams:,.0f}); both directions balanced: floor "
        f"{both / (2 * streams):,.0f} cycles ({streams} streams a direction)"
    )
    kinds: dict[tuple[str, str], Counter] = {}
    for (opcode, kind, direction), held in per_kind.items():
        kinds.setdefault((opcode, kind), Counter())[direction] += held
    print(f"{'opcode':8s} {'kind':44s} {'east':>10s} {'west':>10s} {'cycles of both':>15s}")
    for (opcode, kind), c in sorted(kinds.items(), key=lambda kv: -sum(kv[1].values()))[: args.top]:
        total = c["E"] + c["W"]
        print(f"{opcode:8s} {kind[-44:]:44s} {c['E']:10,} {c['W']:10,} {total / (2 * streams):15,.0f}")


if __name__ == "__main__":
    main()
