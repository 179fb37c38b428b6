"""The host's part of a run before the program starts: the input-fed gathers
(lpuc.lowering.input_gathers): each gathered rows input from the host's copy of its table."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from lpuc.dtypes import dtype_from_name
from lpuc.errors import LpucError
from lpuc.program import Program


def gathered_inputs(program: Program, inputs: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
    """`inputs` plus the rows the host gathers for the program (unchanged if it gathers none)."""
    if not program.host_gathers:
        return inputs
    bindings = {b.name: b for b in program.inputs}
    out = dict(inputs)
    for g in program.host_gathers:
        if g.ids not in inputs:
            continue  # reported as a missing input by the executor
        table = program.consts[g.const_key]
        ids = np.asarray(inputs[g.ids])
        if ids.dtype.kind not in "iu":
            raise LpucError(f"input '{g.ids}' has dtype {ids.dtype}, the program expects integer ids")
        n = table.shape[0]
        if ids.size and (ids.min() < -n or ids.max() >= n):
            raise LpucError(f"input '{g.ids}': an id is outside [-{n}, {n}) (the rows of '{g.table}')")
        rows = bindings[g.rows]
        out[g.rows] = np.take(table, ids, axis=0).astype(dtype_from_name(rows.dtype)).reshape(rows.shape)
    return out
