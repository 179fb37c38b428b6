"""Lower bounds on cycles from the model's work and the target alone: what no schedule can beat.

Never from this schedule's own critical path (that is reported apart, by the summary):
- mxm: the model's multiply-accumulates / (planes x MACs per cycle at the op's precision); an MM
  counts neither the zero blocks of packed rows nor constant rows a pass added (lpuc.ir.model_work)
- vxm: element operations (of maps fused into MMs too) / (lanes x ALUs per lane)
- sxm: vectors the model's own data-movement ops stream / SXM units, for those the graph passes keep
  (layout changes the compiler inserts are its choice, not the model's work; a model Transpose the
  passes cancel is not counted either, so this one is a bound on this compilation of the model)
- mem: every constant, input and output word crosses a MEM port at least once / (slices x banks)
- lw: every weight byte an MXM installs (each distinct window weight loads read, at the bytes its
  lanes hold, not padded words; of block-diagonal weights only the model's) reaches a plane once /
  (planes x words per cycle a weight load moves)
- host: host-fallback time, one host, serial (PCIe included)
- dependence_chain: the longest chain of the graph's nodes, each at its minimal latency (one vector
  through its unit, no transport)
The hardware bound is the largest; `bound_ratio` = cycles / bound.

`compile_facts` are computed once from the Tiled IR (they need the graph); `hardware_bounds` recomputes
the rest from the instructions, so a loaded artifact's bounds are checked, not trusted.
"""

from __future__ import annotations

import math
from collections.abc import Collection

from lpuc import cost
from lpuc.ir.tiled import TiledProgram
from lpuc.program import Program
from lpuc.target import Target


def compile_facts(
    tiled: TiledProgram, preds: list[set[int]], target: Target, model_nodes: Collection[str]
) -> dict:
    """The bound inputs only the compiler can see: the graph's dependence chain and the model's own
    SXM work."""
    sxm_vectors = sum(
        op.work.vectors for op in tiled.ops if op.unit_class == "SXM" and op.node in model_nodes
    )
    return {
        "dependence_chain": _dependence_chain(tiled, preds, target),
        "sxm": math.ceil(sxm_vectors / max(1, target.num_sxm)),
    }


def hardware_bounds(program: Program, facts: dict) -> dict[str, int]:
    target = program.target
    mxm = 0.0
    elem_ops = 0
    host = 0
    for ins in program.instructions:
        if ins.opcode == "mxm.mm":
            mxm += ins.work.macs / target.mxm_mode(ins.attrs["precision"]).macs_per_cycle
        elif ins.opcode == "host.kernel":
            host += cost.host_cycles(target, ins.work)
        vxm_work = ins.opcode.startswith("vxm.") or cost.has_epilogue(ins.opcode, ins.work)
        elem_ops += ins.work.elem_ops if vxm_work else 0
    once: dict[tuple[int, int], int] = {}  # identical constant tiles share a slot: count it once
    for t in program.tiles:
        if t.kind in ("const", "input", "output", "io"):
            once[(t.slice, t.addr) if t.kind == "const" else (-1 - t.id, 0)] = t.words
    bounds = {
        "mxm": math.ceil(mxm / target.num_mxm),
        "lw": math.ceil(
            _weight_bytes(program) / (target.word_bytes * target.lw_words_per_cycle * target.num_mxm)
        ),
        "vxm": math.ceil(elem_ops / (target.lanes * target.vxm_alus)),
        "sxm": int(facts["sxm"]),
        "mem": math.ceil(sum(once.values()) / (target.num_slices * target.mem_banks)),
        "host": host,
        "dependence_chain": int(facts["dependence_chain"]),
    }
    bounds["overall"] = max(bounds.values())
    return bounds


def _weight_bytes(program: Program) -> float:
    """Bytes of the distinct weight windows the program's weight loads read (a constant slot shared
    by identical tiles counts once); of block-diagonal weights (p packed rows), the 1 / p^2 that are
    the model's own weights (the rest are p - 1 copies and the zero blocks)."""
    loaded: dict[tuple[int, ...], float] = {}
    for ins in program.instructions:
        if ins.opcode != "mxm.lw":
            continue
        share = 1 / ins.attrs.get("block_diagonal", 1) ** 2
        for a in ins.reads:
            t = program.tiles[a.buf]
            where = (t.slice,) if t.kind == "const" else (-1 - t.id,)
            window = (*where, a.addr, a.nrows, a.lane0, a.nlanes)
            loaded[window] = a.nrows * a.nlanes * t.np_dtype.itemsize * share
    return sum(loaded.values())


def _dependence_chain(tiled: TiledProgram, preds: list[set[int]], target: Target) -> int:
    """Longest path through the graph's nodes, each costing its minimal latency. A node's tile ops may
    run in parallel, so a node costs its slowest op's minimal latency, once."""
    latency: dict[str, int] = {}
    node_preds: dict[str, set[str]] = {}
    order: list[str] = []
    for op in tiled.ops:  # program order is topological, and each node's ops are contiguous
        if op.node not in latency:
            order.append(op.node)
            latency[op.node] = 0
            node_preds[op.node] = set()
        precision = op.attrs.get("precision", tiled.precision)
        latency[op.node] = max(latency[op.node], cost.minimal_latency(target, op.opcode, op.work, precision))
        node_preds[op.node].update(tiled.ops[p].node for p in preds[op.id])
    finish: dict[str, int] = {}
    for node in order:
        ready = max((finish[p] for p in node_preds[node] if p != node and p in finish), default=0)
        finish[node] = ready + latency[node]
    return max(finish.values(), default=0)
