"""Lower bounds on cycles: what no schedule of this program on this target can beat.

- MXM: multiply-accumulates / (planes x MACs per cycle at the op's precision)
- VXM: element operations / (lanes x ALUs)
- SXM: vectors streamed through SXMs / number of SXMs
- MEM: bytes read and written / (slices x word bytes x banks) per cycle
- host: host-fallback time (one host, serial)
- critical path: the longest dependency chain with each op's own duration
The program's bound is the largest of these; reports show achieved / bound.
"""

from __future__ import annotations

import math

from lpuc.ir.tiled import TiledProgram
from lpuc.schedule.scheduler import Schedule
from lpuc.target import Target


def cycle_bounds(program: TiledProgram, sched: Schedule, target: Target) -> dict[str, int]:
    mxm = 0.0
    vxm_elem = 0
    sxm_vectors = 0
    moved_bytes = 0
    host = 0
    for op in program.ops:
        if op.unit_class == "MXM":
            mxm += op.macs / target.mxm_mode(op.attrs["precision"]).macs_per_cycle
        elif op.unit_class == "VXM":
            vxm_elem += op.elem_ops
        elif op.unit_class == "SXM":
            sxm_vectors += op.stream
        elif op.unit_class == "HOST":
            host += sched.slots[op.id].duration
        if op.unit_class != "HOST":
            for r in op.reads + op.writes:
                moved_bytes += r.nrows * program.buffers[r.buf].dtype.itemsize * target.word_bytes
    bounds = {
        "mxm": math.ceil(mxm / max(1, target.num_mxm)),
        "vxm": math.ceil(vxm_elem / (target.lanes * target.vxm_alus)),
        "sxm": math.ceil(sxm_vectors / max(1, target.num_sxm)),
        "mem": math.ceil(moved_bytes / (target.num_slices * target.word_bytes * target.mem_banks)),
        "host": host,
        "critical_path": _critical_path(program, sched),
    }
    bounds["overall"] = max(bounds.values())
    return bounds


def _critical_path(program: TiledProgram, sched: Schedule) -> int:
    finish = [0] * len(program.ops)
    lw_finish: dict[int, int] = {}
    for op in program.ops:  # program order is topological
        ready = max((finish[p] for p in sched.preds[op.id]), default=0)
        if op.unit_class == "MXM":
            ready = max(ready, lw_finish.get(op.group, 0))  # weights must be loaded first
        finish[op.id] = ready + sched.slots[op.id].duration
        if op.unit_class == "MXM.LW":
            lw_finish[op.group] = finish[op.id]
    return max(finish, default=0)
