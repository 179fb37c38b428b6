"""Map chains: a VXM map joined to the map (or the MM epilogue) that produces its input (lowering
strategy `map_chains`), so the values pass the VXM once and the tile between them is never stored.

Chiefly the maps that follow an MM's result when it cannot take them itself: the K-split sum of
partial results (lpuc/lowering/matmul.py) followed by a bias, a residual add or a dequantize.

Map m2 joins producer p (a map, or an MM with an epilogue, lpuc/lowering/epilogue.py) when p alone
writes the window m2 reads, exactly, and m2 alone reads that tile, once; both stream one 32-bit word
per value, row for row; p's expression computes the tile's own dtype (so m2 sees the very values it
read from SRAM before: no cast lies between them); m2's other operands are written before p's place
in program order (its weight group's start for an MM) and nothing between p and m2 touches m2's
result. The joined op keeps p's place; its expression is p's steps then m2's (m2's reference to the
tile becomes p's last step), its reads p's then m2's others, its work the sum of both.
"""

from __future__ import annotations

from dataclasses import replace

from lpuc.dtypes import dtype_name
from lpuc.ir.tiled import Ref, TiledProgram, TileOp, copy_with
from lpuc.lowering import epilogue
from lpuc.target import Target


def join_maps(tiled: TiledProgram, target: Target) -> TiledProgram:
    """The program with every map that can be joined to its producer joined (see module doc)."""
    ops = tiled.ops
    index = epilogue.AccessIndex(ops)
    group_start = epilogue.group_starts(ops)
    current = {op.id: op for op in ops}
    merged_into: dict[int, int] = {}
    freed: set[int] = set()
    for m in ops:
        if m.opcode != "vxm.map" or epilogue.has_stacked_operand(m):
            continue
        for j, r in enumerate(m.reads):
            p = _producer(tiled, target, index, group_start, current, merged_into, m, j, r)
            if p is not None:
                current[p.id] = _joined(p, m, j)
                merged_into[m.id] = p.id
                del current[m.id]
                freed.add(r.buf)
                break
    if not merged_into:
        return tiled
    new_ops = [copy_with(current[op.id], id=k) for k, op in enumerate(o for o in ops if o.id in current)]
    return epilogue.without_unused_tiles(replace(tiled, ops=new_ops), freed)


def _root(op_id: int, merged_into: dict[int, int]) -> int:
    while op_id in merged_into:
        op_id = merged_into[op_id]
    return op_id


def _expression(op: TileOp) -> tuple[list, list]:
    attrs = op.attrs["epilogue"] if op.opcode == "mxm.mm" else op.attrs
    return list(attrs["expr"]), list(attrs["operands"])


def _producer(tiled, target, index, group_start, current, merged_into, m: TileOp, j: int, r: Ref):
    """The op map m (whose read j is window r) can be joined to, or None."""
    buf = tiled.buffers[r.buf]
    writers, readers = index.writers[r.buf], index.readers[r.buf]
    if buf.kind != "temp" or len(writers) != 1 or len(readers) != 1 or readers[0][0] != m.id:
        return None
    p = current[_root(writers[0][0], merged_into)]
    fused_mm = p.opcode == "mxm.mm" and "epilogue" in p.attrs
    if not (p.opcode == "vxm.map" or fused_mm) or p.writes != (r,):
        return None
    if (
        m.work.vectors != r.nrows
        or p.work.vectors != r.nrows
        or len(m.writes) != 1
        or (m.writes[0].nrows, m.writes[0].nlanes) != (r.nrows, r.nlanes)
    ):
        return None
    steps, _ = _expression(p)
    if not steps or steps[-1].get("dtype") != dtype_name(buf.dtype):
        return None  # the map's values would be cast on their way through SRAM
    if fused_mm and not epilogue.pays(tiled, target, p, p.work.alu_ops + m.work.alu_ops):
        return None
    first = group_start[p.id] if p.opcode == "mxm.mm" else p.id
    for k, q in enumerate(m.reads):
        if k != j and index.touched(q, first, m.id, writes_only=True):
            return None
    if index.touched(m.writes[0], p.id + 1, m.id, writes_only=False):
        return None
    return p


def _joined(p: TileOp, m: TileOp, j: int) -> TileOp:
    """Producer p with map m (whose read j is p's result) applied after it."""
    steps, operands = _expression(p)
    m_operands = list(m.attrs["operands"])
    read_at = {k: len(p.reads) + k - (k > j) for k in range(len(m.reads)) if k != j}
    base, shift = len(operands), len(steps)  # m's operand k becomes operand base + k, step k step shift + k
    last = f"s{shift - 1}"
    for step in m.attrs["expr"]:
        args = []
        for a in step["args"]:
            if a == "-":
                args.append(a)
            elif a[0] == "i":
                k = int(a[1:])
                args.append(last if m_operands[k] == j else f"i{base + k}")
            else:
                args.append(f"s{int(a[1:]) + shift}")
        steps.append({**step, "args": args})
    operands += [None if o is None or o == j else read_at[o] for o in m_operands]
    expression = {"expr": steps, "operands": operands}
    if p.opcode == "mxm.mm":
        attrs = {**p.attrs, "epilogue": {**p.attrs["epilogue"], **expression}}
    else:
        attrs = {**p.attrs, **expression}
    work = replace(
        p.work, alu_ops=p.work.alu_ops + m.work.alu_ops, elem_ops=p.work.elem_ops + m.work.elem_ops
    )
    extra = tuple(q for k, q in enumerate(m.reads) if k != j)
    return replace(p, reads=p.reads + extra, writes=m.writes, work=work, attrs=attrs)
