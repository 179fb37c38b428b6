"""The target description: the only place that knows the chip's numbers.

A target is a JSON file in `lpuc/targets/`. This module loads it into an immutable `Target` and
derives what every stage asks for: unit names and floorplan positions, SRAM geometry, MXM tile
sizes per precision, and the cost of host transfers.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any

from lpuc.errors import LpucError

DEFAULT_TARGET = "tsp-v1"
PRECISIONS = ("fp16", "fp32")


@dataclass(frozen=True)
class MxmMode:
    """How one MXM plane multiplies at a given precision."""

    k_tile: int  # input-vector length consumed per row (weights rows installed)
    n_tile: int  # output columns produced per row
    cycles_per_row: int  # cycles between successive input rows

    @property
    def macs_per_cycle(self) -> float:
        return self.k_tile * self.n_tile / self.cycles_per_row


@dataclass(frozen=True)
class Target:
    name: str
    raw: dict[str, Any] = field(repr=False, compare=False, hash=False)

    # -- identity ---------------------------------------------------------------------------
    @property
    def description(self) -> str:
        return self.raw.get("description", "")

    @property
    def clock_mhz(self) -> float:
        return float(self.raw["clock_mhz"])

    def cycles_to_us(self, cycles: float) -> float:
        return cycles / self.clock_mhz

    # -- vectors and lanes --------------------------------------------------------------------
    @property
    def lanes(self) -> int:
        return int(self.raw["superlanes"]) * int(self.raw["lanes_per_superlane"])

    @property
    def superlanes(self) -> int:
        return int(self.raw["superlanes"])

    def stagger(self, lanes_used: int) -> int:
        """Extra cycles until an instruction has reached the last superlane it uses."""
        used = max(1, math.ceil(lanes_used / int(self.raw["lanes_per_superlane"])))
        return (used - 1) * int(self.raw["stagger_cycles_per_superlane"])

    # -- SRAM ---------------------------------------------------------------------------------
    @property
    def word_bytes(self) -> int:
        return int(self.raw["mem"]["word_bytes"])

    @property
    def addresses_per_slice(self) -> int:
        return int(self.raw["mem"]["addresses_per_slice"])

    @property
    def num_slices(self) -> int:
        return sum(n for kind, n in self.raw["floorplan"] if kind == "MEM")

    @property
    def slice_bytes(self) -> int:
        return self.addresses_per_slice * self.word_bytes

    @property
    def sram_bytes(self) -> int:
        return self.num_slices * self.slice_bytes

    @property
    def mem_banks(self) -> int:
        return int(self.raw["mem"]["banks"])

    # -- functional units ---------------------------------------------------------------------
    @property
    def num_mxm(self) -> int:
        return sum(n for kind, n in self.raw["floorplan"] if kind == "MXM")

    @property
    def num_sxm(self) -> int:
        return sum(n for kind, n in self.raw["floorplan"] if kind == "SXM")

    @property
    def vxm_alus(self) -> int:
        return int(self.raw["vxm"]["alus_per_lane"])

    def delay(self, unit_class: str) -> int:
        """Functional delay (cycles from first input to first output) of a unit class."""
        if unit_class == "VXM":
            return int(self.raw["vxm"]["delay"])
        if unit_class == "SXM":
            return int(self.raw["sxm"]["delay"])
        if unit_class == "MXM":
            return int(self.raw["mxm"]["result_delay"])
        if unit_class == "MEM":
            return int(self.raw["mem"]["read_delay"]) + int(self.raw["mem"]["write_delay"])
        return 0

    def mxm_mode(self, precision: str) -> MxmMode:
        modes = self.raw["mxm"]["modes"]
        if precision not in modes:
            raise LpucError(f"target {self.name} has no MXM mode {precision!r} (has {', '.join(modes)})")
        m = modes[precision]
        return MxmMode(int(m["k_tile"]), int(m["n_tile"]), int(m["cycles_per_row"]))

    @property
    def lw_words_per_cycle(self) -> int:
        return int(self.raw["mxm"]["lw_words_per_cycle"])

    @property
    def iw_cycles(self) -> int:
        return int(self.raw["mxm"]["iw_cycles"])

    def units(self) -> list[str]:
        """Every schedulable resource, in a fixed order (west to east, then by index)."""
        names = [f"MXM{i}" for i in range(self.num_mxm)] + [f"MXM{i}.LW" for i in range(self.num_mxm)]
        names += [f"SXM{i}" for i in range(self.num_sxm)]
        names += [f"VXM{i}" for i in range(self.vxm_alus)]
        names += [f"MEM{i}" for i in range(self.num_slices)]
        names += ["HOST"]
        return names

    def position(self, unit: str) -> int:
        """Floorplan column of a unit (west = 0); streams move one column per cycle."""
        return self._positions[unit.split(".")[0]]

    @cached_property
    def _positions(self) -> dict[str, int]:
        positions, counters, col = {}, {"MXM": 0, "SXM": 0, "MEM": 0}, 0
        for kind, count in self.raw["floorplan"]:
            for _ in range(count):
                if kind == "VXM":
                    positions.update({f"VXM{a}": col for a in range(self.vxm_alus)})
                else:
                    positions[f"{kind}{counters[kind]}"] = col
                    counters[kind] += 1
                col += 1
        positions["HOST"] = col // 2  # host DMA enters at the chip's centre (PCIe)
        return positions

    def distance(self, unit: str, slice_index: int) -> int:
        return abs(self.position(unit) - self.position(f"MEM{slice_index}"))

    # -- host link ----------------------------------------------------------------------------
    def pcie_cycles(self, nbytes: int) -> int:
        """One PCIe transfer: fixed latency plus bytes over bandwidth (GroqFlow's estimator)."""
        h = self.raw["host"]
        seconds = h["pcie_latency_us"] * 1e-6 + nbytes / (h["pcie_gbytes_per_s"] * 1e9)
        return math.ceil(seconds * self.clock_mhz * 1e6)

    def host_compute_cycles(self, nbytes: int) -> int:
        """Assumed host cost of a fallback op: bytes touched over host memory bandwidth."""
        seconds = nbytes / (self.raw["host"]["host_gbytes_per_s"] * 1e9)
        return math.ceil(seconds * self.clock_mhz * 1e6)

    def as_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(self.raw))


def available_targets() -> list[str]:
    files = resources.files("lpuc.targets")
    return sorted(p.name[: -len(".json")] for p in files.iterdir() if p.name.endswith(".json"))


def load_target(name_or_path: str | Target = DEFAULT_TARGET) -> Target:
    """Load a shipped target by name, or a target JSON file by path."""
    if isinstance(name_or_path, Target):
        return name_or_path
    path = Path(name_or_path)
    if path.suffix == ".json" and path.exists():
        text = path.read_text()
    else:
        res = resources.files("lpuc.targets") / f"{name_or_path}.json"
        if not res.is_file():
            known = ", ".join(available_targets())
            raise LpucError(f"unknown target {name_or_path!r} (known: {known})")
        text = res.read_text()
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise LpucError(f"target {name_or_path}: not valid JSON ({e})") from None
    return target_from_dict(raw)


def target_from_dict(raw: dict[str, Any]) -> Target:
    raw = json.loads(json.dumps(raw))  # private copy: a Target never changes
    if raw["mem"]["word_bytes"] != raw["superlanes"] * raw["lanes_per_superlane"]:
        raise LpucError(f"target {raw.get('name')}: a MEM word must hold one byte per lane")
    return Target(name=raw["name"], raw=raw)
