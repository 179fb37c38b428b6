"""Structural checks of a decoded .lpu program body, before any object is built from it.

The checksum only proves the file is what some writer produced; an edited (re-sealed) or buggy
file must still fail with a one-line error, never an exception deep in the validator or runtime.
Every problem raises ValueError naming the field (the codec turns it into an ArtifactError).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx

from lpuc.dtypes import dtype_from_name
from lpuc.kernels import get_kernel
from lpuc.target import PRECISIONS, target_from_dict

TILE_KINDS = ("const", "input", "output", "io", "temp", "host")


def check_body(body: Any) -> None:
    _expect(isinstance(body, dict), "program", "an object")
    _expect(body.get("precision") in PRECISIONS, "precision", f"one of {', '.join(PRECISIONS)}")
    _expect(isinstance(body.get("model"), str), "model", "a string")
    _expect(isinstance(body.get("summary"), dict), "summary", "an object")
    strings = body.get("strings")
    _expect(isinstance(strings, list) and all(isinstance(s, str) for s in strings), "strings", "strings")
    attrs = body.get("attrs")
    _expect(isinstance(attrs, list) and all(isinstance(a, dict) for a in attrs), "attrs", "objects")
    units = set(target_from_dict(body.get("target")).units())  # LpucError if the target is bad
    queues = body.get("queues")
    _expect(isinstance(queues, dict), "queues", "an object")
    for unit, items in sorted(queues.items()):
        _expect(isinstance(items, list), f"queues.{unit}", "a list")
        for k, item in enumerate(items):
            where = f"queues.{unit}[{k}]"
            _instruction(item, where, len(strings), len(attrs))
            for u in item[2]:
                _expect(strings[u] in units, f"{where} units", "units of the target")
            _attrs(strings[item[1]], attrs[item[8]], len(item[5]), len(item[6]), f"{where} attrs")
    tiles = body.get("tiles")
    _expect(isinstance(tiles, list), "tiles", "a list")
    for k, t in enumerate(tiles):
        _tile(t, f"tiles[{k}]", len(strings))
    consts = body.get("consts")
    _expect(isinstance(consts, list), "consts", "a list")
    keys = set()
    for k, c in enumerate(consts):
        where = f"consts[{k}]"
        _expect(isinstance(c, dict), where, "an object")
        _expect(isinstance(c.get("key"), str), f"{where}.key", "a string")
        _nat(c.get("offset"), f"{where}.offset")
        _nat(c.get("nbytes"), f"{where}.nbytes")
        _dtype(c.get("dtype"), f"{where}.dtype")
        _shape(c.get("shape"), f"{where}.shape")
        keys.add(c["key"])
    for k, t in enumerate(tiles):
        if t[9] == "const":
            _expect(t[10] in keys, f"tiles[{k}] const key", "a key of the constant index")
    for side in ("inputs", "outputs"):
        bindings = body.get(side)
        _expect(isinstance(bindings, list), side, "a list")
        for k, b in enumerate(bindings):
            where = f"{side}[{k}]"
            _expect(isinstance(b, dict) and isinstance(b.get("name"), str), where, "an object with a name")
            _dtype(b.get("dtype"), f"{where}.dtype")
            if b.get("shape") is not None:
                _shape(b["shape"], f"{where}.shape")
            ids = b.get("tiles")
            _expect(isinstance(ids, list), f"{where}.tiles", "a list")
            for i in ids:
                _index(i, len(tiles), f"{where}.tiles")
                if side == "inputs":
                    _expect(tiles[i][9] in ("input", "io", "host"), f"{where}.tiles", "input tiles")
            shape = b.get("shape")
            # A binding's tiles hold exactly its values: the runtime stores / loads them whole.
            if shape is not None and ids and tiles[ids[0]][9] != "host":
                covered = sum(tiles[i][3] * tiles[i][4] for i in ids)
                _expect(covered == math.prod(shape), f"{where}.tiles", f"tiles covering shape {shape}")
    _host_gathers(body.get("host_gathers", []), body["inputs"], keys)


def _host_gathers(gathers: Any, inputs: list, keys: set[str]) -> None:
    """Each names a program input it fills, the input it reads and a constant; an input with no
    tiles is one only the host reads (lpuc.lowering.input_gathers), so it must be such ids."""
    _expect(isinstance(gathers, list), "host_gathers", "a list")
    names = {b["name"] for b in inputs}
    for k, g in enumerate(gathers):
        where = f"host_gathers[{k}]"
        _expect(
            isinstance(g, list) and len(g) == 4 and all(isinstance(x, str) for x in g), where, "4 strings"
        )
        _expect(g[0] in names and g[1] in names, where, "inputs of the program")
        _expect(g[3] in keys, f"{where} const key", "a key of the constant index")
    host_ids = {g[1] for g in gathers}
    for k, b in enumerate(inputs):
        empty = b.get("shape") is not None and math.prod(b["shape"]) == 0  # (no values: no tiles)
        _expect(bool(b["tiles"]) or empty or b["name"] in host_ids, f"inputs[{k}].tiles", "tiles or host ids")


def _instruction(item: Any, where: str, n_strings: int, n_attrs: int) -> None:
    _expect(isinstance(item, list) and len(item) == 10, where, "a list of 10 fields")
    i_id, opcode, units, start, dur, reads, writes, node, attr, work = item
    _nat(i_id, f"{where} id")
    _index(opcode, n_strings, f"{where} opcode")
    _expect(isinstance(units, list) and units, f"{where} units", "a non-empty list")
    for u in units:
        _index(u, n_strings, f"{where} units")
    _int(start, f"{where} start")
    _int(dur, f"{where} duration")
    for label, windows in (("reads", reads), ("writes", writes)):
        _expect(isinstance(windows, list), f"{where} {label}", "a list")
        for w in windows:
            _expect(isinstance(w, list) and len(w) == 6, f"{where} {label}", "windows of 6 integers")
            for v in w:
                _int(v, f"{where} {label}")
    _index(node, n_strings, f"{where} node")
    _index(attr, n_attrs, f"{where} attrs")
    _expect(isinstance(work, list), f"{where} work", "a list")
    for v in work:
        _int(v, f"{where} work")


def _attrs(opcode: str, attrs: dict, n_reads: int, n_writes: int, where: str) -> None:
    """The fields of an instruction's attributes the runtime and validator read."""
    if opcode.startswith("mxm."):
        _expect(isinstance(attrs.get("precision"), str), f"{where}.precision", "a string")
        k = attrs.get("k")
        if k is not None:
            _expect(isinstance(k, list) and len(k) == 3, f"{where}.k", "3 integers")
            for v in k:
                _int(v, f"{where}.k")
    elif opcode == "vxm.map":
        operands, expr = attrs.get("operands"), attrs.get("expr")
        _expect(isinstance(operands, list), f"{where}.operands", "a list")
        for v in operands:
            stack = isinstance(v, list) and len(v) > 1 and all(_is_index(j, n_reads) for j in v)
            _expect(
                v is None or _is_index(v, n_reads) or stack,
                f"{where}.operands",
                f"read indices below {n_reads} (or lists of them)",
            )
        _expect(isinstance(expr, list) and expr, f"{where}.expr", "a non-empty list")
        for k, step in enumerate(expr):
            at = f"{where}.expr[{k}]"
            _expect(isinstance(step, dict), at, "an object")
            _kernel_name(step.get("op"), step.get("domain"), at)
            _expect(isinstance(step.get("attrs"), dict), f"{at}.attrs", "an object")
            _int(step.get("opset", 0), f"{at}.opset")
            args = step.get("args")
            _expect(isinstance(args, list), f"{at}.args", "a list")
            for a in args:
                ok = a == "-" or (
                    isinstance(a, str)
                    and a[:1] in ("i", "s")
                    and a[1:].isdigit()
                    and int(a[1:]) < (len(operands) if a[0] == "i" else k)
                )
                _expect(ok, f"{at}.args", "'-', i<operand> or s<earlier step>")
    elif opcode in ("vxm.kernel", "sxm.kernel", "host.kernel"):
        _kernel_name(attrs.get("kernel"), attrs.get("domain"), where)
        _expect(isinstance(attrs.get("attrs"), dict), f"{where}.attrs", "an object")
        _int(attrs.get("opset"), f"{where}.opset")
        _onnx_attr_types(attrs["kernel"], attrs["domain"], attrs["opset"], attrs["attrs"], f"{where}.attrs")
        opsets = attrs.get("opsets")
        _expect(isinstance(opsets, dict), f"{where}.opsets", "an object")
        for v in opsets.values():
            _int(v, f"{where}.opsets")
        for side, n in (("inputs", n_reads), ("outputs", n_writes)):
            descs = attrs.get(side)
            _expect(isinstance(descs, list), f"{where}.{side}", "a list")
            for d in descs:
                if d is None:
                    continue
                _expect(isinstance(d, dict), f"{where}.{side}", "objects")
                _nat(d.get("first"), f"{where}.{side}.first")
                _nat(d.get("count"), f"{where}.{side}.count")
                _expect(d["first"] + d["count"] <= n, f"{where}.{side}", f"windows below {n}")
                _dtype(d.get("dtype"), f"{where}.{side}.dtype")
                if d.get("shape") is not None:
                    _shape(d["shape"], f"{where}.{side}.shape")
                _int(d.get("row_offset", 0), f"{where}.{side}.row_offset")


_ATTR_CHECKS = {
    onnx.AttributeProto.INT: (lambda v: isinstance(v, int), "an integer"),
    onnx.AttributeProto.FLOAT: (lambda v: isinstance(v, (int, float)), "a number"),
    onnx.AttributeProto.STRING: (lambda v: isinstance(v, str), "a string"),
    onnx.AttributeProto.INTS: (
        lambda v: isinstance(v, list) and all(isinstance(x, int) for x in v),
        "integers",
    ),
    onnx.AttributeProto.FLOATS: (
        lambda v: isinstance(v, list) and all(isinstance(x, (int, float)) for x in v),
        "numbers",
    ),
}


def _onnx_attr_types(op: str, domain: str, opset: int, attrs: dict, where: str) -> None:
    """Attributes of ONNX ops must have the types their schema gives (values are the kernel's job)."""
    try:
        schema = onnx.defs.get_schema(op, opset, domain)
    except onnx.defs.SchemaError:
        return
    for name, value in attrs.items():
        spec = schema.attributes.get(name)
        check = _ATTR_CHECKS.get(spec.type) if spec is not None else None
        if check is not None:
            _expect(check[0](value), f"{where}.{name}", check[1])


def _kernel_name(op: Any, domain: Any, where: str) -> None:
    _expect(isinstance(op, str) and isinstance(domain, str), where, "an op and a domain")
    _expect(get_kernel(op, domain) is not None, where, f"an op lpuc has a kernel for, not {domain}::{op}")


def _is_index(v: Any, n: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < n


def _tile(t: Any, where: str, n_strings: int) -> None:
    _expect(isinstance(t, list) and len(t) == 12, where, "a list of 12 fields")
    _nat(t[0], f"{where} id")
    _index(t[1], n_strings, f"{where} tensor")
    _dtype(t[2], f"{where} dtype")
    for k, label in enumerate(("rows", "lanes", "r0", "c0", "slice", "addr"), start=3):
        _int(t[k], f"{where} {label}")
    _expect(t[9] in TILE_KINDS, f"{where} kind", f"one of {', '.join(TILE_KINDS)}")
    _expect(t[10] is None or isinstance(t[10], str), f"{where} const key", "a string or null")
    _nat(t[11], f"{where} lane")


def _expect(ok: bool, where: str, what: str) -> None:
    if not ok:
        raise ValueError(f"{where} must be {what}")


def _int(v: Any, where: str) -> None:
    _expect(isinstance(v, int) and not isinstance(v, bool), where, "an integer")


def _nat(v: Any, where: str) -> None:
    _expect(isinstance(v, int) and not isinstance(v, bool) and v >= 0, where, "an integer >= 0")


def _index(v: Any, n: int, where: str) -> None:
    _expect(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < n, where, f"an index below {n}")


def _shape(v: Any, where: str) -> None:
    _expect(isinstance(v, list), where, "a list of dims")
    for d in v:
        _nat(d, where)


def _dtype(v: Any, where: str) -> None:
    _expect(isinstance(v, str), where, "a dtype name")
    try:
        dt = dtype_from_name(v)
    except TypeError:
        dt = None
    _expect(isinstance(dt, np.dtype) and dt.kind in "biufV", where, "a numeric dtype name")
