"""critical_path(program): the chain of instructions that decides the program's length."""

from __future__ import annotations

import lpuc
from lpuc.program import Access, Instruction, Program, TileSlot
from lpuc.schedule.critical_path import critical_path
from lpuc.target import load_target


def _tile(i: int, kind: str, slice_: int) -> TileSlot:
    return TileSlot(
        id=i, tensor=f"t{i}", dtype="float32", rows=8, lanes=16, r0=0, c0=0, slice=slice_, addr=0, kind=kind
    )


def _rows(buf: int, slice_: int, row0: int, nrows: int) -> Access:
    return Access(buf=buf, slice=slice_, addr=row0 * 4, nrows=nrows, lane0=0, nlanes=16)  # fp32: 4 words/row


def _ins(i, opcode, unit, start, duration, reads=(), writes=(), **attrs) -> Instruction:
    return Instruction(
        id=i,
        opcode=opcode,
        units=(unit,),
        start=start,
        duration=duration,
        reads=tuple(reads),
        writes=tuple(writes),
        node=f"n{i}",
        attrs=attrs,
    )


def _program(instructions: list[Instruction]) -> Program:
    tiles = [_tile(0, "input", 0), _tile(1, "temp", 1), _tile(2, "temp", 2), _tile(3, "output", 3)]
    return Program(
        target=load_target("tsp-mini"),
        precision="fp32",
        model_name="hand",
        instructions=instructions,
        tiles=tiles,
        consts={},
        inputs=[],
        outputs=[],
    )


def test_follows_the_latest_finishing_predecessor():
    x, a, b, y = 0, 1, 2, 3
    prog = _program(
        [
            _ins(0, "sxm.kernel", "SXM0", 0, 10, [_rows(x, 0, 0, 8)], [_rows(a, 1, 0, 4)]),  # rows 0-3 of a
            _ins(1, "sxm.kernel", "SXM1", 0, 40, [_rows(x, 0, 0, 8)], [_rows(a, 1, 4, 4)]),  # rows 4-7: late
            _ins(2, "vxm.map", "VXM0", 0, 25, [_rows(x, 0, 0, 8)], [_rows(b, 2, 0, 8)]),
            # reads rows 0-3 of `a` only: the late write to rows 4-7 is not a predecessor; the previous
            # instruction on VXM0 (ends 25) finished after the write it reads (ends 10)
            _ins(3, "vxm.map", "VXM0", 41, 5, [_rows(a, 1, 0, 4)], [_rows(y, 3, 0, 4)]),
            _ins(4, "vxm.map", "VXM1", 46, 7, [_rows(y, 3, 0, 4), _rows(b, 2, 0, 8)], [_rows(y, 3, 4, 4)]),
        ]
    )
    assert [i.id for i in critical_path(prog)] == [2, 3, 4]


def test_data_dependency_beats_an_earlier_unit_predecessor():
    x, a, y = 0, 1, 3
    prog = _program(
        [
            _ins(0, "vxm.map", "VXM0", 0, 5, [_rows(x, 0, 0, 8)], [_rows(y, 3, 4, 4)]),
            _ins(1, "sxm.kernel", "SXM0", 0, 30, [_rows(x, 0, 0, 8)], [_rows(a, 1, 0, 8)]),
            _ins(2, "vxm.map", "VXM0", 30, 5, [_rows(a, 1, 0, 8)], [_rows(y, 3, 0, 4)]),
        ]
    )
    assert [i.id for i in critical_path(prog)] == [1, 2]


def test_mxm_install_waits_for_its_weight_load():
    x, w, y = 0, 1, 3
    prog = _program(
        [
            _ins(0, "mxm.lw", "MXM0.LW", 0, 50, [_rows(w, 1, 0, 8)], []),
            _ins(1, "vxm.map", "VXM0", 0, 20, [_rows(x, 0, 0, 8)], [_rows(2, 2, 0, 8)]),
            _ins(2, "mxm.mm", "MXM0", 50, 30, [_rows(2, 2, 0, 8)], [_rows(y, 3, 0, 8)], install=True),
        ]
    )
    assert [i.id for i in critical_path(prog)] == [0, 2]


def test_empty_program():
    assert critical_path(_program([])) == []


def _naive(program: Program) -> list[int]:
    """The definition, written out in quadratic time: the oracle for real schedules."""

    def overlap(a: Access, b: Access) -> bool:
        wpr = program.tiles[a.buf].np_dtype.itemsize
        rows = a.addr < b.addr + b.nrows * wpr and b.addr < a.addr + a.nrows * wpr
        return a.buf == b.buf and rows and a.lane0 < b.lane0 + b.nlanes and b.lane0 < a.lane0 + a.nlanes

    def preds(ins: Instruction) -> list[Instruction]:
        out = []
        for o in program.instructions:
            if o.id == ins.id or o.end > ins.start:
                continue
            writes_read = any(overlap(r, w) for r in ins.reads for w in o.writes)
            weights = (
                ins.opcode == "mxm.mm"
                and ins.attrs.get("install")
                and o.opcode == "mxm.lw"
                and o.unit.split(".")[0] == ins.unit.split(".")[0]
            )
            if writes_read or weights:
                out.append(o)
        for u in ins.units:
            queue = sorted((o for o in program.instructions if u in o.units), key=lambda o: (o.start, o.id))
            k = queue.index(ins)
            if k:
                out.append(queue[k - 1])
        return out

    ins = max(program.instructions, key=lambda i: (i.end, i.id))
    path = [ins.id]
    while found := preds(ins):
        ins = max(found, key=lambda o: (o.end, o.id))
        path.append(ins.id)
    return path[::-1]


def test_matches_the_definition_on_a_compiled_model(small_residual_onnx):
    program = lpuc.compile(small_residual_onnx, target="tsp-mini", precision="fp32")
    path = critical_path(program)
    assert [i.id for i in path] == _naive(program)
    assert path[-1].end == program.summary["cycles"]
    # Each step finished before the next began, except MMs pipelined on one plane (the next takes in
    # its rows while the previous one's results drain).
    assert all(
        a.end <= b.start or (a.opcode == b.opcode == "mxm.mm" and a.unit == b.unit and a.start < b.start)
        for a, b in zip(path, path[1:])
    )
