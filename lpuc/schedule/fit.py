"""Do a program's constants fit the target's SRAM? If not, a one-line error saying what is big and
what would help (true for this model: the precision or int8 size that would fit, else chip count)."""

from __future__ import annotations

import math
from collections import defaultdict

from lpuc.errors import DoesNotFitError
from lpuc.ir.tiled import Buffer, TiledProgram
from lpuc.report import human_bytes
from lpuc.schedule.packing import ConstPacking, const_words, pack_constants
from lpuc.target import Target

LARGEST_LISTED = 3


def check_constants_fit(
    tiled: TiledProgram, target: Target, where: str, packing: ConstPacking | None = None
) -> None:
    packing = packing or pack_constants(tiled, target.lanes)
    need = const_words(tiled, packing) * target.word_bytes
    if need <= target.sram_bytes:
        return
    raise DoesNotFitError(
        f"{where}: constants need {human_bytes(need)} of SRAM, target {target.name} has "
        f"{human_bytes(target.sram_bytes)} (over by {human_bytes(need - target.sram_bytes)}); "
        f"largest: {largest_constants(tiled, target)}; {_on_host(tiled)}{_advice(tiled, target, need)}"
    )


def _on_host(tiled: TiledProgram) -> str:
    tables = sorted({b.tensor for b in tiled.buffers if b.is_const and b.host})
    return f"already in host memory: {', '.join(tables)}; " if tables else ""


def _const_slots(tiled: TiledProgram) -> list[Buffer]:
    """One buffer per distinct SRAM constant tile (identical tiles share one)."""
    return list({b.const_key: b for b in tiled.buffers if b.is_const and not b.host}.values())


def _bytes(tiled: TiledProgram, target: Target, float_itemsize: int) -> int:
    """SRAM bytes of the constants with float ones stored at `float_itemsize` bytes, packed."""
    packing = pack_constants(tiled, target.lanes, float_itemsize)
    return const_words(tiled, packing, float_itemsize) * target.word_bytes


def largest_constants(tiled: TiledProgram, target: Target) -> str:
    """The largest constant tensors in SRAM: name [rows x cols dtype] size, comma-separated."""
    slots = _const_slots(tiled)
    size: dict[tuple[str, str], int] = defaultdict(int)
    rows: dict[tuple[str, str], int] = defaultdict(int)
    cols: dict[tuple[str, str], int] = defaultdict(int)
    for b in slots:
        key = (b.tensor, b.dtype.name)
        size[key] += b.words * target.word_bytes
        rows[key], cols[key] = max(rows[key], b.r0 + b.rows), max(cols[key], b.c0 + b.lanes)
    ranked = sorted(size, key=lambda k: (-size[k], k))[:LARGEST_LISTED]
    return ", ".join(f"{n} [{rows[k]}x{cols[k]} {d}] {human_bytes(size[k])}" for k in ranked for n, d in [k])


def _advice(tiled: TiledProgram, target: Target, need: int) -> str:
    fp16 = _bytes(tiled, target, 2)
    if tiled.precision == "fp32" and fp16 < need and fp16 <= target.sram_bytes:
        return f"try --precision fp16 (they would take {human_bytes(fp16)}) or a larger target"
    int8 = _bytes(tiled, target, 1)
    if int8 <= target.sram_bytes:
        return f"int8 weights would take {human_bytes(int8)} and fit; or use a larger target"
    chips = math.ceil(need / target.sram_bytes)
    chips_int8 = math.ceil(int8 / target.sram_bytes)
    return (
        f"they need at least {chips} {target.name} chips ({chips_int8} with int8 weights), or a larger target"
    )
