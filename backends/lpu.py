"""The .lpu artifact: a versioned, self-describing, checksummed container. No pickle anywhere.

    bytes 0-3    magic b"LPU\\0"
    bytes 4-7    format version (little-endian u32)
    bytes 8-15   header length H (little-endian u64)
    H bytes      header: JSON {format_version, target, precision, model, checksum, sections}
    payload      the sections, back to back; `checksum` is the SHA-256 of the payload

Sections: "program" (zlib-compressed JSON: target description, per-unit instruction queues, tile
slots, I/O bindings, summary, constant index) and "consts" (raw little-endian tile data). JSON is
written with sorted keys and fixed separators, so the same program always gives the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import sys
import zlib
from operator import attrgetter
from pathlib import Path
from typing import Any

import numpy as np

from lpuc.backends.lpu_check import check_body
from lpuc.cost import Work
from lpuc.dtypes import dtype_from_name, dtype_name
from lpuc.errors import ArtifactError
from lpuc.fileio import atomic_path
from lpuc.no_gc import no_cycle_collection
from lpuc.program import Access, Binding, HostGather, Instruction, Program, TileSlot
from lpuc.target import target_from_dict

if sys.byteorder != "little":  # constants are stored as raw little-endian bytes
    raise ImportError("lpuc artifacts need a little-endian host")

MAGIC = b"LPU\0"
# 2: instructions carry their work record; summaries are recomputed at load. 3: MXM accumulators
# (mm keep / from_acc), plane occupancy, LWs of several windows, mxm.acc_rows. 4: tiles carry their
# first lane (narrow constant tiles share words). 5: MMs with a fused map (attrs epilogue, work
# relay_words). 6: map operands stacked from several reads (attrs operands entries listing reads)
# and MMs writing their result rows over several windows.
FORMAT_VERSION = 6
_PREFIX = struct.Struct("<4sIQ")


# What json.dumps(obj, sort_keys=True, separators=(",", ":")) builds on every call, built once: an
# artifact dumps every instruction's attributes on its own (to share equal ones).
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"))


def _dumps(obj: Any) -> bytes:
    return _ENCODER.encode(obj).encode("utf-8")


# -- encode -------------------------------------------------------------------------------------
def encode_program(program: Program) -> bytes:
    return b"".join(encoded_parts(program))


def encoded_parts(program: Program) -> list[bytes | np.ndarray]:
    """The artifact as buffers to write back to back. The constants are views of the program's arrays,
    so saving a program copies none of its weights (they reach the file once)."""
    strings: dict[str, int] = {}
    attrs_table: dict[bytes, int] = {}
    units_table: dict[tuple[str, ...], list[int]] = {}  # few distinct unit lists, many instructions

    def s(text: str) -> int:
        return strings.setdefault(text, len(strings))

    def a(attrs: dict) -> int:
        return attrs_table.setdefault(_dumps(attrs), len(attrs_table))

    def units(names: tuple[str, ...]) -> list[int]:
        ids = units_table.get(names)
        if ids is None:  # its strings are numbered here, in order, as an uncached list would be
            ids = units_table[names] = [s(u) for u in names]
        return ids

    acc = attrgetter("buf", "slice", "addr", "nrows", "lane0", "nlanes")  # a tuple: JSON writes a list

    queues = {
        unit: [
            [
                i.id,
                s(i.opcode),
                units(i.units),
                i.start,
                i.duration,
                [acc(r) for r in i.reads],
                [acc(w) for w in i.writes],
                s(i.node),
                a(dict(i.attrs)),
                i.work.to_list(),
            ]
            for i in items
        ]
        for unit, items in program.queues().items()
    }
    tiles = [
        [
            t.id,
            s(t.tensor),
            t.dtype,
            t.rows,
            t.lanes,
            t.r0,
            t.c0,
            t.slice,
            t.addr,
            t.kind,
            t.const_key,
            t.lane,
        ]
        for t in program.tiles
    ]
    blobs, const_index, offset = [], [], 0
    for key in sorted(program.consts):
        data = np.ascontiguousarray(program.consts[key])
        raw = data.reshape(-1).view(np.uint8)  # its bytes, not a copy (hosts are little-endian)
        const_index.append(
            {
                "key": key,
                "dtype": dtype_name(data.dtype),
                "shape": list(data.shape),
                "offset": offset,
                "nbytes": raw.nbytes,
            }
        )
        blobs.append(raw)
        offset += raw.nbytes
    body = {
        "target": program.target.as_dict(),
        "precision": program.precision,
        "model": program.model_name,
        "strings": list(strings),
        "attrs": [json.loads(k) for k in attrs_table],
        "queues": queues,
        "tiles": tiles,
        "inputs": [_binding(b) for b in program.inputs],
        "outputs": [_binding(b) for b in program.outputs],
        "summary": program.summary,
        "host_gathers": [[g.rows, g.ids, g.table, g.const_key] for g in program.host_gathers],
        "consts": const_index,
    }
    sections = [("program", [zlib.compress(_dumps(body), 6)]), ("consts", blobs)]
    checksum, table, at = hashlib.sha256(), [], 0
    for name, parts in sections:
        nbytes = 0
        for part in parts:
            checksum.update(part)
            nbytes += len(part)
        table.append({"name": name, "offset": at, "nbytes": nbytes})
        at += nbytes
    header = _dumps(
        {
            "format_version": FORMAT_VERSION,
            "target": program.target.name,
            "precision": program.precision,
            "model": program.model_name,
            "checksum": checksum.hexdigest(),
            "sections": table,
        }
    )
    return [_PREFIX.pack(MAGIC, FORMAT_VERSION, len(header)) + header, *(p for _, ps in sections for p in ps)]


def _binding(b: Binding) -> dict:
    return {
        "name": b.name,
        "shape": None if b.shape is None else list(b.shape),
        "dtype": b.dtype,
        "tiles": list(b.tiles),
    }


def write_program(program: Program, path: str | os.PathLike) -> None:
    with no_cycle_collection():  # the body's many short-lived lists would set off full collections
        parts = encoded_parts(program)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        for part in parts:
            f.write(part)


# -- decode -------------------------------------------------------------------------------------
def read_program(path: str | os.PathLike, validate: bool = True) -> Program:
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ArtifactError(f"{path}: cannot read ({e.strerror})") from None
    return decode_program(data, str(path), validate=validate)


def decode_program(data: bytes, where: str = "<bytes>", validate: bool = True) -> Program:
    if len(data) < _PREFIX.size:
        raise ArtifactError(f"{where}: truncated .lpu file ({len(data)} bytes)")
    magic, version, header_len = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise ArtifactError(f"{where}: not a .lpu file (bad magic)")
    if version != FORMAT_VERSION:
        raise ArtifactError(
            f"{where}: .lpu format version {version}, this lpuc reads version {FORMAT_VERSION}"
        )
    start = _PREFIX.size + header_len
    if start > len(data):
        raise ArtifactError(f"{where}: truncated .lpu file (header)")
    try:
        header = json.loads(data[_PREFIX.size : start])
        payload = data[start:]
        if hashlib.sha256(payload).hexdigest() != header["checksum"]:
            raise ArtifactError(f"{where}: checksum mismatch (corrupt or truncated .lpu file)")
        sections = {s["name"]: payload[s["offset"] : s["offset"] + s["nbytes"]] for s in header["sections"]}
        body = json.loads(zlib.decompress(sections["program"]))
        check_body(body)  # field types and index ranges: one-line errors for edited files
        program = _program_from(body, sections["consts"])
    except ArtifactError:
        raise
    except (ValueError, KeyError, TypeError, IndexError, zlib.error) as e:
        raise ArtifactError(f"{where}: corrupt .lpu file ({type(e).__name__}: {e})") from None
    if validate:
        from lpuc.errors import ScheduleError

        try:
            program.validate()
        except ScheduleError as e:
            raise ArtifactError(f"{where}: {e}") from None
        _check_summary(program, where)
    program.origin = where
    return program


def _check_summary(program: Program, where: str) -> None:
    """The stored summary must be what the instructions give: figures are recomputed, never trusted."""
    from lpuc.schedule.summary import stored_facts, summarize

    stored = program.summary
    try:
        expected = summarize(program, stored_facts(stored))
    except (KeyError, TypeError, IndexError, ValueError) as e:
        raise ArtifactError(f"{where}: summary is incomplete ({type(e).__name__}: {e})") from None
    if stored != expected:
        key = next(k for k in sorted(set(stored) | set(expected)) if stored.get(k) != expected.get(k))
        raise ArtifactError(
            f"{where}: summary does not match the instructions (edited?): {key} is "
            f"{_short(stored.get(key))} in the file, {_short(expected.get(key))} recomputed"
        )


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 60 else text[:57] + "..."


def _program_from(body: dict, const_blob: bytes) -> Program:
    strings = body["strings"]
    attrs = body["attrs"]

    def acc(x: list[int]) -> Access:
        return Access(*[int(v) for v in x])

    instructions = []
    for items in body["queues"].values():
        for i_id, opcode, units, start, dur, reads, writes, node, attr, work in items:
            instructions.append(
                Instruction(
                    int(i_id),
                    strings[opcode],
                    tuple(strings[u] for u in units),
                    int(start),
                    int(dur),
                    tuple(acc(r) for r in reads),
                    tuple(acc(w) for w in writes),
                    strings[node],
                    attrs[attr],
                    Work.from_list(work),
                )
            )
    instructions.sort(key=lambda i: i.id)
    tiles = [TileSlot(t[0], strings[t[1]], *t[2:]) for t in body["tiles"]]
    consts = {}
    for c in body["consts"]:
        raw = const_blob[c["offset"] : c["offset"] + c["nbytes"]]
        consts[c["key"]] = np.frombuffer(raw, dtype=dtype_from_name(c["dtype"])).reshape(c["shape"])

    def binding(b: dict) -> Binding:
        shape = None if b["shape"] is None else tuple(b["shape"])
        return Binding(b["name"], shape, b["dtype"], tuple(b["tiles"]))

    return Program(
        target_from_dict(body["target"]),
        body["precision"],
        body["model"],
        instructions,
        tiles,
        consts,
        [binding(b) for b in body["inputs"]],
        [binding(b) for b in body["outputs"]],
        body["summary"],
        [HostGather(*g) for g in body.get("host_gathers", [])],
    )
