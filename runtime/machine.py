"""Machine state during execution: SRAM, MXM weight buffers, and tensor <-> tile conversion."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from lpuc.dtypes import dtype_from_name
from lpuc.errors import LpucError
from lpuc.lowering.builder import view_of
from lpuc.program import Access, Binding, Program, TileSlot
from lpuc.runtime.sram import Sram


@dataclass
class Plane:
    """One MXM plane: weights being loaded (shadow), weights in use (active), and the partial sum an
    accumulation chain keeps in its accumulators."""

    shadow: np.ndarray | None = None
    active: np.ndarray | None = None
    acc: np.ndarray | None = None


class Machine:
    def __init__(self, program: Program):
        self.program = program
        self.tiles = program.tiles
        self.sram = Sram(program.target)
        self.planes = {f"MXM{i}": Plane() for i in range(program.target.num_mxm)}
        self.host_memory: dict[int, np.ndarray] = {}  # host-resident tensors, by tile id
        self._load_constants()

    # -- tiles ----------------------------------------------------------------------------------
    def tile(self, a: Access) -> TileSlot:
        return self.tiles[a.buf]

    def read(self, a: Access) -> np.ndarray:
        return self.sram.read(a, self.tiles[a.buf].np_dtype)

    def write(self, a: Access, values: np.ndarray) -> None:
        self.sram.write(a, self.tiles[a.buf].np_dtype, values)

    def _whole(self, t: TileSlot) -> Access:
        return Access(t.id, t.slice, t.addr, t.rows, t.lane, t.lanes)

    def _load_constants(self) -> None:
        done: set[tuple[int, int, int]] = set()
        for t in self.tiles:
            if t.kind == "const" and (t.slice, t.addr, t.lane) not in done:
                done.add((t.slice, t.addr, t.lane))
                self.write(self._whole(t), self.program.consts[t.const_key])
        self.load_host_constants()

    def load_host_constants(self) -> None:
        """Constant tables kept in host memory (whole tensors), by their host tile's id."""
        for t in self.tiles:
            if t.kind == "host" and t.const_key is not None:
                self.host_memory[t.id] = self.program.consts[t.const_key]

    # -- tensors --------------------------------------------------------------------------------
    def store_tensor(self, value: np.ndarray, tiles: list[int], row_offset: int = 0) -> None:
        view = value.reshape(view_of(value.shape))
        for b in tiles:
            t = self.tiles[b]
            r = t.r0 - row_offset
            self.write(self._whole(t), view[r : r + t.rows, t.c0 : t.c0 + t.lanes])

    def load_tensor(
        self, shape: tuple[int, ...], dtype: np.dtype, tiles: list[int], row_offset: int = 0
    ) -> np.ndarray:
        rows, cols = view_of(tuple(shape))
        out = np.zeros((rows, cols), dtype=dtype)
        for b in tiles:
            t = self.tiles[b]
            r = t.r0 - row_offset
            out[r : r + t.rows, t.c0 : t.c0 + t.lanes] = self.read(self._whole(t))
        return out.reshape(shape)

    # -- I/O ------------------------------------------------------------------------------------
    def bind_inputs(self, inputs: dict[str, np.ndarray]) -> None:
        for b, value in self.coerced_inputs(inputs):
            self.store_tensor(value, list(b.tiles))

    def coerced_inputs(self, inputs: Mapping[str, np.ndarray]) -> list[tuple[Binding, np.ndarray]]:
        """Each program input's binding and value, checked and converted (raises LpucError)."""
        expected = {b.name: b for b in self.program.inputs}
        missing = sorted(set(expected) - set(inputs))
        extra = sorted(set(inputs) - set(expected))
        if missing or extra:
            raise LpucError(
                f"inputs do not match the program: missing {missing or 'none'}, unexpected {extra or 'none'} "
                f"(program inputs: {', '.join(expected)})"
            )
        return [(b, _coerce(name, inputs[name], b)) for name, b in expected.items()]

    def outputs(self) -> dict[str, np.ndarray]:
        out = {}
        for b in self.program.outputs:
            if b.tiles and self.tiles[b.tiles[0]].kind == "host":
                out[b.name] = self.host_memory[b.tiles[0]]
            else:
                out[b.name] = self.load_tensor(b.shape, dtype_from_name(b.dtype), list(b.tiles))
        return out


def _coerce(name: str, value, b: Binding) -> np.ndarray:
    arr = np.asarray(value)
    dtype = dtype_from_name(b.dtype)
    if tuple(arr.shape) != tuple(b.shape):
        raise LpucError(
            f"input '{name}' has shape {tuple(arr.shape)}, the program was compiled for {tuple(b.shape)}"
        )
    # No silent casts: onnxruntime refuses an input of another dtype, and so do we.
    if arr.dtype != dtype:
        raise LpucError(f"input '{name}' has dtype {arr.dtype}, the program expects {b.dtype}")
    return arr
