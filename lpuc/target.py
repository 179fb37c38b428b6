"""The target description: the only place that knows the chip's numbers.

A target is a JSON file in `lpuc/targets/`. This module parses it once into frozen, validated
dataclasses and derives what every stage asks for: unit names and floorplan positions, SRAM
geometry, MXM tile sizes per precision, and the cost of host and chip-to-chip transfers. A bad file
fails here with one line naming the file and the field, never later as a KeyError or a division by 0.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any

from lpuc.errors import LpucError, TargetError

DEFAULT_TARGET = "tsp-v1"
PRECISIONS = ("fp16", "fp32")
UNIT_KINDS = ("MXM", "SXM", "MEM", "VXM")
MXM_MODES = ("int8", "fp16", "fp32")


# -- reading one JSON object ----------------------------------------------------------------------
class _Fields:
    """One JSON object of a target file, read field by field; every error names file and field."""

    def __init__(self, obj: Any, path: str, source: str, spec: type | tuple[str, ...]) -> None:
        self.path, self.source = path, source
        if not isinstance(obj, dict):
            raise TargetError(f"{source}: {self._where()} must be a JSON object, not {_show(obj)}")
        known = spec if isinstance(spec, tuple) else tuple(f.name for f in dataclasses.fields(spec))
        for key in obj:  # unknown keys first: a typo must not surface as "x is missing"
            if key not in known:
                near = difflib.get_close_matches(str(key), known, n=1)
                hint = f"did you mean {near[0]}?" if near else f"known: {', '.join(known)}"
                shown = key if key.isidentifier() else json.dumps(key)  # one line, always
                raise TargetError(f"{source}: unknown field {self.name(shown)} ({hint})")
        self.obj = obj

    def _where(self) -> str:
        return f"field {self.path}" if self.path else "the target"

    def name(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def error(self, key: str, problem: str) -> TargetError:
        return TargetError(f"{self.source}: field {self.name(key)} = {_show(self.obj[key])} {problem}")

    def get(self, key: str) -> Any:
        if key not in self.obj:
            raise TargetError(f"{self.source}: field {self.name(key)} is missing")
        return self.obj[key]

    def integer(self, key: str, minimum: int) -> int:
        """A count (minimum 1) or a delay in cycles (minimum 0)."""
        value = self.get(key)
        if not _is_int(value):
            raise self.error(key, "must be an integer")
        if value < minimum:
            raise self.error(key, f"must be >= {minimum}")
        return value

    def number(self, key: str, positive: bool = True) -> float:
        """A finite number, > 0 (rates, clock) or >= 0 (latencies); kept as written (900 stays int)."""
        value = self.get(key)
        finite = _is_int(value) or (isinstance(value, float) and math.isfinite(value))
        if not finite:  # JSON admits NaN and Infinity; a clock of NaN is no clock
            raise self.error(key, "must be a finite number")
        if value < 0 or (positive and value == 0):
            raise self.error(key, "must be > 0" if positive else "must be >= 0")
        return value

    def text(self, key: str, nonempty: bool = False) -> str:
        value = self.get(key)
        if not isinstance(value, str) or (nonempty and not value.strip()):
            raise self.error(key, "must be a non-empty string" if nonempty else "must be a string")
        return value

    def texts(self, key: str) -> tuple[str, ...]:
        value = self.get(key)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error(key, "must be a list of strings")
        return tuple(value)

    def sub(self, key: str, spec: type | tuple[str, ...]) -> _Fields:
        return _Fields(self.get(key), self.name(key), self.source, spec)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true is not a count


def _show(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


# -- the specs ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MxmMode:
    """How one MXM plane multiplies at a given precision."""

    k_tile: int  # input-vector length consumed per row (weights rows installed)
    n_tile: int  # output columns produced per row
    cycles_per_row: int  # cycles between successive input rows

    @property
    def macs_per_cycle(self) -> float:
        return self.k_tile * self.n_tile / self.cycles_per_row

    @classmethod
    def parse(cls, f: _Fields) -> MxmMode:
        return cls(f.integer("k_tile", 1), f.integer("n_tile", 1), f.integer("cycles_per_row", 1))


@dataclass(frozen=True)
class MemSpec:
    addresses_per_slice: int
    word_bytes: int
    banks: int
    read_delay: int
    write_delay: int

    @classmethod
    def parse(cls, f: _Fields) -> MemSpec:
        return cls(
            addresses_per_slice=f.integer("addresses_per_slice", 1),
            word_bytes=f.integer("word_bytes", 1),
            banks=f.integer("banks", 1),
            read_delay=f.integer("read_delay", 0),
            write_delay=f.integer("write_delay", 0),
        )


@dataclass(frozen=True)
class VxmSpec:
    alus_per_lane: int
    delay: int

    @classmethod
    def parse(cls, f: _Fields) -> VxmSpec:
        return cls(alus_per_lane=f.integer("alus_per_lane", 1), delay=f.integer("delay", 0))


@dataclass(frozen=True)
class SxmSpec:
    delay: int

    @classmethod
    def parse(cls, f: _Fields) -> SxmSpec:
        return cls(delay=f.integer("delay", 0))


@dataclass(frozen=True)
class MxmSpec:
    rows: int
    cols: int
    result_delay: int
    iw_cycles: int  # 0 allowed: installing weights may be free
    lw_words_per_cycle: int
    # Rows of results a plane's accumulators hold: a matmul whose K spans several weight tiles sums
    # its partial products there (one row segment at a time) and writes only the total.
    acc_rows: int
    # Read-only view, left out of the hash (a mappingproxy has none; equality still compares it).
    modes: Mapping[str, MxmMode] = field(hash=False)

    @classmethod
    def parse(cls, f: _Fields) -> MxmSpec:
        rows, cols = f.integer("rows", 1), f.integer("cols", 1)
        m = f.sub("modes", MXM_MODES)
        m.get("fp16")  # every model can fall back to fp16; int8 and fp32 are optional
        modes = {name: MxmMode.parse(m.sub(name, MxmMode)) for name in m.obj}
        return cls(
            rows=rows,
            cols=cols,
            result_delay=f.integer("result_delay", 0),
            iw_cycles=f.integer("iw_cycles", 0),
            lw_words_per_cycle=f.integer("lw_words_per_cycle", 1),
            acc_rows=f.integer("acc_rows", 1),
            modes=types.MappingProxyType(modes),
        )


@dataclass(frozen=True)
class HostSpec:
    pcie_latency_us: float
    pcie_gbytes_per_s: float
    host_gbytes_per_s: float
    host_gflops: float

    @classmethod
    def parse(cls, f: _Fields) -> HostSpec:
        return cls(
            pcie_latency_us=f.number("pcie_latency_us", positive=False),
            pcie_gbytes_per_s=f.number("pcie_gbytes_per_s"),
            host_gbytes_per_s=f.number("host_gbytes_per_s"),
            host_gflops=f.number("host_gflops"),
        )


@dataclass(frozen=True)
class C2cSpec:
    """Chip-to-chip links: `links` per chip, each `lanes_per_link` serial lanes."""

    links: int
    lanes_per_link: int
    gbits_per_lane: float
    hop_ns: float

    @classmethod
    def parse(cls, f: _Fields) -> C2cSpec:
        return cls(
            links=f.integer("links", 1),
            lanes_per_link=f.integer("lanes_per_link", 1),
            gbits_per_lane=f.number("gbits_per_lane"),
            hop_ns=f.number("hop_ns", positive=False),
        )

    @property
    def link_gbytes_per_s(self) -> float:
        """One link, one direction (the file has no encoding overhead, so this is the line rate)."""
        return self.lanes_per_link * self.gbits_per_lane / 8


@dataclass(frozen=True)
class Target:
    """A validated target; field names and nesting are exactly those of the JSON file."""

    name: str
    description: str
    sources: tuple[str, ...]
    assumed: tuple[str, ...]  # field paths whose numbers were not published (or "everything")
    clock_mhz: float
    superlanes: int
    lanes_per_superlane: int
    stagger_cycles_per_superlane: int
    instruction_queues: int
    streams_per_direction: int  # per lane, in each of the two directions
    floorplan: tuple[tuple[str, int], ...]  # (unit kind, columns), west to east
    mem: MemSpec
    vxm: VxmSpec
    sxm: SxmSpec
    mxm: MxmSpec
    host: HostSpec
    c2c: C2cSpec

    # -- identity ---------------------------------------------------------------------------
    def cycles_to_us(self, cycles: float) -> float:
        return cycles / self.clock_mhz

    @cached_property
    def sha256(self) -> str:
        """Identifies the exact chip numbers a program was compiled for."""
        canonical = json.dumps(self.as_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    # -- vectors and lanes --------------------------------------------------------------------
    @property
    def lanes(self) -> int:
        return self.superlanes * self.lanes_per_superlane

    def stagger(self, lanes_used: int) -> int:
        """Extra cycles until an instruction has reached the last superlane it uses."""
        used = max(1, math.ceil(lanes_used / self.lanes_per_superlane))
        return (used - 1) * self.stagger_cycles_per_superlane

    # -- SRAM ---------------------------------------------------------------------------------
    @property
    def word_bytes(self) -> int:
        return self.mem.word_bytes

    @property
    def addresses_per_slice(self) -> int:
        return self.mem.addresses_per_slice

    @property
    def num_slices(self) -> int:
        return self._count("MEM")

    @property
    def slice_bytes(self) -> int:
        return self.addresses_per_slice * self.word_bytes

    @property
    def sram_bytes(self) -> int:
        return self.num_slices * self.slice_bytes

    @property
    def mem_banks(self) -> int:
        return self.mem.banks

    # -- functional units ---------------------------------------------------------------------
    def _count(self, kind: str) -> int:
        return sum(n for k, n in self.floorplan if k == kind)

    @property
    def num_mxm(self) -> int:
        return self._count("MXM")

    @property
    def num_sxm(self) -> int:
        return self._count("SXM")

    @property
    def vxm_alus(self) -> int:
        return self.vxm.alus_per_lane

    def delay(self, unit_class: str) -> int:
        """Functional delay (cycles from first input to first output) of a unit class."""
        if unit_class == "VXM":
            return self.vxm.delay
        if unit_class == "SXM":
            return self.sxm.delay
        if unit_class == "MXM":
            return self.mxm.result_delay
        if unit_class == "MEM":
            return self.mem.read_delay + self.mem.write_delay
        return 0

    def mxm_mode(self, precision: str) -> MxmMode:
        modes = self.mxm.modes
        if precision not in modes:
            raise LpucError(f"target {self.name} has no MXM mode {precision!r} (has {', '.join(modes)})")
        return modes[precision]

    @property
    def lw_words_per_cycle(self) -> int:
        return self.mxm.lw_words_per_cycle

    @property
    def iw_cycles(self) -> int:
        return self.mxm.iw_cycles

    def units(self) -> list[str]:
        """Every schedulable resource, in a fixed order: functional units (west to east, then by index),
        the host, each MEM slice's bank ports (`MEM3.p1`), and the east / west stream ids (`SE0`, `SW0`)."""
        names = [f"MXM{i}" for i in range(self.num_mxm)] + [f"MXM{i}.LW" for i in range(self.num_mxm)]
        names += [f"SXM{i}" for i in range(self.num_sxm)]
        names += [f"VXM{i}" for i in range(self.vxm_alus)]
        names += ["HOST"]
        names += [f"MEM{i}.p{j}" for i in range(self.num_slices) for j in range(self.mem_banks)]
        names += [f"S{d}{j}" for d in "EW" for j in range(self.streams_per_direction)]
        return names

    def position(self, unit: str) -> int:
        """Floorplan column of a unit (west = 0); streams move one column per cycle."""
        return self._positions[unit.split(".")[0]]

    @cached_property
    def _positions(self) -> dict[str, int]:
        positions, counters, col = {}, {"MXM": 0, "SXM": 0, "MEM": 0}, 0
        for kind, count in self.floorplan:
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

    # -- links off the chip -------------------------------------------------------------------
    def _seconds_to_cycles(self, seconds: float) -> int:
        # Rounded first so that float noise (1.1e-4 s -> 99000.00000000001) never costs an extra cycle.
        return math.ceil(round(seconds * self.clock_mhz * 1e6, 6))

    def pcie_cycles(self, nbytes: int) -> int:
        """One PCIe transfer: fixed latency plus bytes over bandwidth (GroqFlow's estimator)."""
        h = self.host
        return self._seconds_to_cycles(h.pcie_latency_us * 1e-6 + nbytes / (h.pcie_gbytes_per_s * 1e9))

    def host_cycles(self, flops: int, nbytes: int) -> int:
        """Assumed host time of a fallback op: FLOPs at host_gflops plus bytes touched at
        host_gbytes_per_s."""
        h = self.host
        return self._seconds_to_cycles(flops / (h.host_gflops * 1e9) + nbytes / (h.host_gbytes_per_s * 1e9))

    def c2c_transfer_cycles(self, nbytes: int) -> int:
        """One hop over one C2C link: hop latency plus bytes over the link's bandwidth."""
        c = self.c2c
        return self._seconds_to_cycles(c.hop_ns * 1e-9 + nbytes / (c.link_gbytes_per_s * 1e9))

    def as_dict(self) -> dict[str, Any]:
        """The JSON content of the target file (a fresh copy; stored in artifacts)."""
        return _to_json(self)


def _to_json(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {k: _to_json(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_to_json(v) for v in value]
    return value


# -- parsing and cross-checks ---------------------------------------------------------------------
def target_from_dict(raw: Any, source: str = "target") -> Target:
    """Validate a parsed target JSON object; errors are one line starting with `source`."""
    f = _Fields(raw, "", source, Target)
    target = Target(
        name=f.text("name", nonempty=True),
        description=f.text("description"),
        sources=f.texts("sources"),
        assumed=f.texts("assumed"),
        clock_mhz=f.number("clock_mhz"),
        superlanes=f.integer("superlanes", 1),
        lanes_per_superlane=f.integer("lanes_per_superlane", 1),
        stagger_cycles_per_superlane=f.integer("stagger_cycles_per_superlane", 0),
        instruction_queues=f.integer("instruction_queues", 1),
        streams_per_direction=f.integer("streams_per_direction", 1),
        floorplan=_floorplan(f),
        mem=MemSpec.parse(f.sub("mem", MemSpec)),
        vxm=VxmSpec.parse(f.sub("vxm", VxmSpec)),
        sxm=SxmSpec.parse(f.sub("sxm", SxmSpec)),
        mxm=MxmSpec.parse(f.sub("mxm", MxmSpec)),
        host=HostSpec.parse(f.sub("host", HostSpec)),
        c2c=C2cSpec.parse(f.sub("c2c", C2cSpec)),
    )
    _cross_check(target, raw, source)
    return target


def _floorplan(f: _Fields) -> tuple[tuple[str, int], ...]:
    value = f.get("floorplan")
    if not isinstance(value, list) or not value:
        raise f.error("floorplan", 'must be a non-empty list of [kind, columns] pairs, e.g. ["MEM", 44]')
    columns = []
    for i, entry in enumerate(value):
        where = f"{f.source}: field floorplan[{i}] = {_show(entry)}"
        if not (isinstance(entry, list) and len(entry) == 2 and _is_int(entry[1]) and entry[1] >= 1):
            raise TargetError(f"{where} must be a [kind, columns] pair with columns >= 1")
        if entry[0] not in UNIT_KINDS:
            raise TargetError(f"{where} has unknown unit kind (known: {', '.join(UNIT_KINDS)})")
        columns.append((entry[0], entry[1]))
    counts = {kind: sum(n for k, n in columns if k == kind) for kind in UNIT_KINDS}
    if counts["VXM"] != 1:
        raise f.error("floorplan", f"must have exactly one VXM column, not {counts['VXM']}")
    # The scheduler pins ops to MXM0/SXM0/MEM slices, so every kind must exist.
    for kind in ("MEM", "MXM", "SXM"):
        if not counts[kind]:
            raise f.error("floorplan", f"must have at least one {kind} column")
    return tuple(columns)


def _cross_check(t: Target, raw: dict[str, Any], source: str) -> None:
    lanes = t.lanes
    if t.mem.word_bytes != lanes:
        raise TargetError(
            f"{source}: field mem.word_bytes = {t.mem.word_bytes} must equal superlanes x "
            f"lanes_per_superlane = {lanes} (one byte per lane)"
        )
    for key in ("rows", "cols"):
        value = getattr(t.mxm, key)
        if value > lanes:
            raise TargetError(f"{source}: field mxm.{key} = {value} exceeds the {lanes} lanes")
    for name, mode in t.mxm.modes.items():
        for key, limit, what in (("k_tile", t.mxm.rows, "mxm.rows"), ("n_tile", t.mxm.cols, "mxm.cols")):
            value = getattr(mode, key)
            if value > lanes:
                raise TargetError(
                    f"{source}: field mxm.modes.{name}.{key} = {value} exceeds the {lanes} lanes"
                )
            if value > limit:
                raise TargetError(
                    f"{source}: field mxm.modes.{name}.{key} = {value} exceeds {what} = {limit}"
                )
    for i, path in enumerate(t.assumed):  # provenance must point at real fields, typos included
        if path != "everything" and not _has_path(raw, path.split(".")):
            raise TargetError(f"{source}: field assumed[{i}] = {_show(path)} names no field of the target")


def _has_path(obj: Any, keys: list[str]) -> bool:
    for key in keys:
        if not isinstance(obj, dict) or key not in obj:
            return False
        obj = obj[key]
    return True


# -- loading --------------------------------------------------------------------------------------
def available_targets() -> list[str]:
    files = resources.files("lpuc.targets")
    return sorted(p.name[: -len(".json")] for p in files.iterdir() if p.name.endswith(".json"))


def load_target_file(path: str | Path) -> Target:
    """Parse and validate one target JSON file; errors name the file as given."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else f"{type(e).__name__}: {e}"
        raise TargetError(f"{path}: cannot read target file ({why})") from None
    return _from_text(text, str(path))


def load_target(name_or_path: str | Target = DEFAULT_TARGET) -> Target:
    """Load a shipped target by name, or a target JSON file by path."""
    if isinstance(name_or_path, Target):
        return name_or_path
    if Path(name_or_path).suffix == ".json":
        return load_target_file(name_or_path)
    res = resources.files("lpuc.targets") / f"{name_or_path}.json"
    if not res.is_file():
        known = ", ".join(available_targets())
        raise TargetError(f"unknown target {name_or_path!r} (known: {known})")
    return _from_text(res.read_text(encoding="utf-8"), f"{name_or_path}.json")


def _from_text(text: str, source: str) -> Target:
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise TargetError(f"{source}: not valid JSON ({e})") from None
    return target_from_dict(raw, source)
