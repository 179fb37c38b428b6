"""The cost model: the one place that turns the work an instruction does into cycles.

Lowering records *work* (`Work`: vectors streamed, weight words loaded, ALU ops, MACs, host FLOPs and
bytes, PCIe bytes); this module charges it against the target file and nothing else. The scheduler
asks it for durations and resource needs, the validator recomputes every duration with it (a file
cannot claim a faster schedule than these rules), and the bounds use its throughputs.

Rules, T = N + d_func + d_transport (+ stagger):
- N, the cycles the unit streams, is the larger of the unit's own rate and MEM bandwidth:
    mxm.mm      activation rows x cycles_per_row of the precision (+ iw_cycles when it installs)
    mxm.lw      weight words / lw_words_per_cycle
    vxm.map     output rows x 32-bit words per value x wraps (ALU ops beyond the ALUs a lane has, or
                beyond the ALUs it holds: it may hold fewer than its ops, at least one)
    vxm.kernel  vectors streamed, or vector ALU ops / ALUs held, whichever is larger (it may hold
                fewer ALUs than keep up with its stream, at least one: its ops then take longer)
    sxm.kernel  vectors streamed
    MEM         per slice, words read and written / ports booked on it (one word per bank per cycle);
                a Gather's data windows move at most as many rows as its result has
- d_func: MXM result delay; VXM delay per chained ALU; SXM delay; MEM read / write delay.
- d_transport: slices between the unit and the farthest slice it reads (in) and writes (out).
- stagger: cycles for the instruction to reach the last superlane it uses.
- host.kernel: host FLOPs / host_gflops + bytes touched / host_gbytes_per_s, plus one PCIe transfer
  each way that carries data (latency + bytes / bandwidth).
- mxm.mm with a fused epilogue (a VXM map applied to its result rows in flight, work.relay_words > 0;
  lpuc/lowering/epilogue.py): reads[0] is the activation, reads[1:] the map's other operands, the
  writes the map's results.
    N           max(rows x cycles_per_row, rows x wraps of the map's ALU ops, MEM for every read and
                write); the plane is busy iw_cycles + N, as for any MM
    T           iw + N + max(MEM read delay + activation transport + MXM result delay + MXM -> VXM
                transport, MEM read delay + operand transport to the VXM) + VXM delay per chained
                ALU + MEM write delay + VXM -> result slice transport + stagger
    holds       its plane, the map's chained ALUs (its whole duration), ports for every window,
                streams: activation -> plane, relay_words per row plane -> VXM, operands -> VXM,
                results VXM -> slice. Never less than the MM and the map charged apart would hold.

Occupancy: an MXM plane is a pipeline. It is busy while it takes in an MM's activation rows (iw_cycles
when it installs weights, then N); the results drain through the result delay and transport while
the next MM's rows already stream in. Every other unit, and every resource below, is held for the
whole duration.

A map operand stacked from several windows (lpuc.lowering.stacked_rows: a 4-byte value's rows in
tiles on two slices) streams one vector per row like any operand: its windows interleave their rows,
so each holds its share of the operand's stream ids (Stream.stream_ids); MEM words stay per slice.
So does an int8 MM's int32 result written over several windows (K-split partial sums, stacked).

Resources an instruction books for its whole duration (so no cycle oversubscribes them): its unit,
extra VXM ALUs, ports on each MEM slice it touches (one per access, more where the unit's rate needs
them, at most the banks; a schedule may book fewer, at least one per slice, and the instruction then
streams its words more slowly), and one stream id per byte
of each vector it moves in each direction (32 east + 32 west per lane on tsp-v1). Ops that walk
whole tensors tile by tile (vxm/sxm kernels) move one read and one write tile at a time.
"""

from __future__ import annotations

import functools
import math
from bisect import bisect_left, bisect_right
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from operator import attrgetter
from typing import Any, NamedTuple, TypeVar

from lpuc.target import Target

# The unit kind an opcode's queue must be (validator rule) and the kind of its first unit.
QUEUE_KIND = {
    "mxm.lw": "MXM.LW",
    "mxm.mm": "MXM",
    "vxm.map": "VXM",
    "vxm.kernel": "VXM",
    "sxm.kernel": "SXM",
    "host.kernel": "HOST",
}
# Kernels stream their operands one tile after another rather than all at once.
_SEQUENTIAL = frozenset({"vxm.kernel", "sxm.kernel"})


@dataclass(frozen=True)
class Work:
    """What one instruction does, in the units the cost model charges (zero where it does not apply)."""

    vectors: int = 0  # vectors the unit streams (mm: activation rows; map: output rows; kernel: all)
    words: int = 0  # mxm.lw: weight words loaded into the plane
    alu_ops: int = 0  # vxm.map: ALU ops per element; vxm.kernel: vector ALU ops in all
    macs: int = 0  # multiply-accumulates (MXM bound)
    elem_ops: int = 0  # element operations (VXM bound)
    host_flops: int = 0  # host.kernel: arithmetic on the host
    host_bytes: int = 0  # host.kernel: bytes the host touches
    pcie_to_host: int = 0  # host.kernel: bytes sent from SRAM to the host
    pcie_to_chip: int = 0  # host.kernel: bytes sent back
    relay_words: int = 0  # mxm.mm with a fused epilogue: words per result row streamed MXM -> VXM
    at_max: bool = False  # a data-dependent size, costed at its compile-time maximum

    def __hash__(self) -> int:
        # The hash dataclass would generate (of the fields in order), kept once computed: every
        # cost question is keyed by its work record, and a compile asks ~10^5 of them (GPT-2 12L:
        # 128k hashes, 1 us each). Not a field: eq, repr and the artifact's list ignore it.
        found = self.__dict__.get("_hash")
        if found is None:
            found = hash(_work_fields(self))
            object.__setattr__(self, "_hash", found)
        return found

    def to_list(self) -> list[int]:
        """The fields in declaration order, as ints (the artifact's form)."""
        return [int(v) for v in _work_fields(self)]

    @classmethod
    def from_list(cls, values: Sequence[int]) -> Work:
        names = [f.name for f in fields(cls)]
        if len(values) != len(names):
            raise ValueError(f"work record has {len(values)} fields, expected {len(names)}")
        *counts, at_max = (int(v) for v in values)
        if min(counts, default=0) < 0:
            raise ValueError("negative work")
        return cls(*counts, at_max=bool(at_max))


# Work's fields in declaration order, read in one call (an artifact lists every instruction's).
_work_fields = attrgetter(*(f.name for f in fields(Work)))


class Stream(NamedTuple):
    """One operand window as the cost model sees it: where it is and how much of it moves. (A named
    tuple: cost answers are cached by their streams, and a tuple hashes in C.)"""

    slice: int  # -1: host memory (no SRAM traffic)
    rows: int
    words_per_row: int  # MEM words (= bytes per lane) per vector
    lanes: int  # lanes from its tile's first to the window's last (how far the instruction reaches)
    stacked: int = 1  # windows of one operand streamed side by side, rows interleaved (this one of them)

    @property
    def words(self) -> int:
        return self.rows * self.words_per_row

    @property
    def stream_ids(self) -> int:
        """Stream ids it holds: one per byte of its vectors, shared with the other windows of its
        stacked operand (each carries 1/stacked of the operand's one vector per cycle)."""
        return -(-self.words_per_row // self.stacked)


def window_streams(
    opcode: str,
    attrs: Mapping[str, Any],
    reads: Sequence[Any],
    writes: Sequence[Any],
    where: Callable[[Any], tuple[int, int]],
    tile_lane: Callable[[Any], int] | None = None,
) -> tuple[list[Stream], list[Stream]]:
    """The cost model's view of an instruction's windows (anything with nrows and nlanes, and lane0 unless 0;
    `where` gives a window's (slice, words per row), `tile_lane` the lane its tile starts at when
    lane0 counts from the word, not the tile), stacked operands and results marked. A stream's lanes
    run to the window's last lane in its tile: an instruction reaches a window that starts at a
    later superlane (an MM result placed beside others in a Concat's tile) that much later."""

    def stream(window: Any, stacked: int, most_rows: int | None = None) -> Stream:
        slice_index, words = where(window)
        rows = window.nrows if most_rows is None else min(window.nrows, most_rows)
        lane0 = getattr(window, "lane0", 0) - (tile_lane(window) if tile_lane else 0)
        return Stream(slice_index, rows, words, lane0 + window.nlanes, stacked)

    stacks = stack_sizes(opcode, attrs, len(reads))
    written = write_stack_sizes(opcode, attrs, len(writes))
    addressed, most_rows = _gathered_rows(attrs)
    return [
        stream(r, k, most_rows if i < addressed else None) for i, (r, k) in enumerate(zip(reads, stacks))
    ], [stream(w, k) for w, k in zip(writes, written)]


def _gathered_rows(attrs: Mapping[str, Any]) -> tuple[int, int | None]:
    """(data windows, most rows each moves) of a Gather kernel, else (0, None): its data is
    addressed, and each result row is read from one data row (along any axis), so no window moves
    more rows than the result has (an embedding's 128 ids read at most 128 of a 320-row tile)."""
    if attrs.get("kernel") != "Gather" or attrs.get("domain"):
        return 0, None
    data, result = attrs["inputs"][0], attrs["outputs"][0]
    if data is None or result is None or result.get("shape") is None:
        return 0, None
    return data["count"], math.prod(int(d) for d in result["shape"][:-1])


def write_stack_sizes(opcode: str, attrs: Mapping[str, Any], n_writes: int) -> list[int]:
    """Per write of an op, the number of windows its one result is stacked over: an MM (or its fused
    map: lpuc.lowering.stacked_results) writing several windows writes its result rows into them in
    order."""
    stacked = opcode == "mxm.mm" and n_writes > 1
    return [n_writes if stacked else 1] * n_writes


def stack_sizes(opcode: str, attrs: Mapping[str, Any], n_reads: int) -> list[int]:
    """Per read of an op, the number of windows of the stacked operand it is part of (a vxm.map
    operand listing several reads: lpuc.lowering.stacked_rows), else 1."""
    sizes = [1] * n_reads
    if opcode == "vxm.map":
        for k in attrs.get("operands", ()):
            if isinstance(k, list):  # (malformed indices are the validator's to report)
                for j in k:
                    if isinstance(j, int) and 0 <= j < n_reads:
                        sizes[j] = len(k)
    return sizes


@functools.cache  # a target has a few hundred unit names; validation asks per booked unit
def unit_kind(unit: str) -> str:
    """MXM, MXM.LW, VXM, SXM, HOST, PORT (a MEM slice's bank port) or STREAM."""
    if unit.startswith("MEM"):
        return "PORT"
    if unit.startswith(("SE", "SW")):
        return "STREAM"
    if unit.endswith(".LW"):
        return "MXM.LW"
    return unit.rstrip("0123456789")


# A compile asks the same few thousand questions tens of thousands of times (a model's layers repeat,
# and every MXM op is costed on each plane in every placement round), so answers are kept. The table
# lives on the Target object: hashing a whole target per question would cost more than the answer.
_MEMO_LIMIT = 1 << 16  # entries per target; the table is emptied when full
_MISSING = object()
T = TypeVar("T")


# Argument types that are keys as they are; checked by class first, as an isinstance test against the
# Mapping ABC is slow and the scheduler asks millions of questions.
_KEYS_AS_IS = frozenset({str, int, bool, tuple, type(None), Work})


def _hashable(arg: Any) -> Any:
    """An argument as part of a memo key: lists as tuples, mappings (ports per slice) as item tuples."""
    cls = arg.__class__
    if cls in _KEYS_AS_IS:
        return arg
    if cls is list:
        return tuple(arg)
    if cls is dict or isinstance(arg, Mapping):
        return tuple(sorted(arg.items()))
    return arg


def _memo(fn: Callable[..., T]) -> Callable[..., T]:
    """Cache `fn(target, *args)` by its arguments (lists of streams keyed as tuples). Calls with keyword
    arguments are not cached (the hot callers pass positions)."""

    @functools.wraps(fn)
    def cached(target: Target, *args: Any, **kwargs: Any) -> T:
        if kwargs:
            return fn(target, *args, **kwargs)
        key = (fn, *[a if a.__class__ in _KEYS_AS_IS else _hashable(a) for a in args])  # (no call if as is)
        memo = target.cost_memo
        found = memo.get(key, _MISSING)
        if found is _MISSING:
            if len(memo) >= _MEMO_LIMIT:
                memo.clear()
            found = memo[key] = fn(target, *args)
        return found

    return cached


# -- the unit's own rate ----------------------------------------------------------------------------
def has_epilogue(opcode: str, work: Work) -> bool:
    """An MM whose result rows stream through the VXM (a fused map) instead of into SRAM."""
    return opcode == "mxm.mm" and work.relay_words > 0


def vxm_alus(target: Target, opcode: str, work: Work) -> int:
    """ALUs (per lane) a VXM instruction holds: a map (also one fused into an MM) chains one ALU per
    op; a kernel as many as keep up with its stream (at most: it may hold fewer, `held_alus`)."""
    if opcode == "vxm.map" or has_epilogue(opcode, work):
        return max(1, min(work.alu_ops, target.vxm_alus))
    if opcode == "vxm.kernel":
        per_vector = math.ceil(work.alu_ops / max(1, work.vectors))
        return max(1, min(per_vector, target.vxm_alus))
    return 0


def held_alus(target: Target, opcode: str, work: Work, alus: int | None) -> int:
    """ALUs a VXM instruction holds when its schedule books `alus` (None: vxm_alus), at least one: a
    kernel's ALUs take turns over its ops, so it may hold fewer than keep up with its stream; a map
    with fewer ALUs than ops wraps its chain over them (as one with more ops than the lane has). A
    map fused into an MM holds them all."""
    want = vxm_alus(target, opcode, work)
    return want if alus is None or opcode not in _FEWER_ALUS else max(1, min(alus, want))


def epilogue_alus(target: Target, work: Work, precision: str) -> int:
    """ALUs a map fused into an MM holds: its result rows reach the VXM one every cycles_per_row
    cycles, so the map's chain wraps over fewer ALUs than it has ops (as a vxm.map's does, one op
    per ALU and cycle) without slowing the rows: fp16 (2 cycles a row) needs half of them."""
    ops = max(1, work.alu_ops)
    return max(1, min(math.ceil(ops / target.mxm_mode(precision).cycles_per_row), target.vxm_alus))


# VXM instructions that may hold fewer ALUs than vxm_alus, streaming more slowly (held_alus).
_FEWER_ALUS = frozenset({"vxm.kernel", "vxm.map"})


def unit_cycles(
    target: Target, opcode: str, work: Work, precision: str = "fp16", alus: int | None = None
) -> int:
    """N: cycles the unit streams at its own rate (before MEM bandwidth); `alus`: the ALUs a VXM
    kernel holds (held_alus)."""
    if opcode == "mxm.mm":
        rows = work.vectors * target.mxm_mode(precision).cycles_per_row
        if has_epilogue(opcode, work):  # the map keeps up with the rows or slows them down
            alus = epilogue_alus(target, work, precision)
            return max(rows, work.vectors * math.ceil(max(1, work.alu_ops) / alus))
        return rows
    if opcode == "mxm.lw":
        return math.ceil(work.words / target.lw_words_per_cycle)
    if opcode == "vxm.map":
        wraps = math.ceil(max(1, work.alu_ops) / held_alus(target, opcode, work, alus))
        return work.vectors * wraps
    if opcode == "vxm.kernel":
        return max(work.vectors, math.ceil(work.alu_ops / held_alus(target, opcode, work, alus)))
    if opcode == "host.kernel":
        return host_cycles(target, work)
    return work.vectors


def host_cycles(target: Target, work: Work) -> int:
    compute = target.host_cycles(work.host_flops, work.host_bytes)
    return max(1, compute + pcie_cycles(target, work.pcie_to_host) + pcie_cycles(target, work.pcie_to_chip))


def pcie_cycles(target: Target, nbytes: int) -> int:
    """One PCIe transfer (none for 0 bytes): fixed latency plus bytes over bandwidth."""
    return target.pcie_cycles(nbytes) if nbytes else 0


# -- MEM ports and streams -------------------------------------------------------------------------
def port_needs(
    target: Target, opcode: str, streams: Iterable[Stream], unit_rate_cycles: int
) -> dict[int, int]:
    """Slice -> ports (banks) the instruction books on it: one per access, more where the unit's rate
    needs more words per cycle from that slice than one bank delivers, at most the banks."""
    return dict(_port_needs(target, opcode, list(streams), unit_rate_cycles))  # a copy: callers own it


@_memo
def _port_needs(
    target: Target, opcode: str, streams: Iterable[Stream], unit_rate_cycles: int
) -> dict[int, int]:
    if opcode == "host.kernel":
        return {}  # host DMA runs far below one port's rate
    count: dict[int, int] = {}
    words: dict[int, int] = {}
    for s in streams:
        if s.slice >= 0:
            count[s.slice] = count.get(s.slice, 0) + 1
            words[s.slice] = words.get(s.slice, 0) + s.rows * s.words_per_row
    cycles, banks = max(1, unit_rate_cycles), target.mem_banks
    return {s: min(max(n, -(-words[s] // cycles)), banks) for s, n in sorted(count.items())}


def mem_cycles(ports: dict[int, int], streams: Iterable[Stream]) -> int:
    """Cycles to move every word through the ports booked on its slice (one word per port per cycle)."""
    words: dict[int, int] = defaultdict(int)
    for s in streams:
        if s.slice >= 0:
            words[s.slice] += s.words
    return max((math.ceil(w / ports[s]) for s, w in words.items()), default=0)


@_memo
def stream_needs(
    target: Target,
    opcode: str,
    unit: str,
    reads: Sequence[Stream],
    writes: Sequence[Stream],
    work: Work = Work(),
) -> tuple[int, int]:
    """(east, west) stream ids an instruction holds: one per byte of each vector in flight.

    Reads flow from their slice towards the unit, writes from the unit to their slice."""
    if opcode == "host.kernel":
        return 0, 0
    pos = target.position(unit)
    east: list[int] = []
    west: list[int] = []
    if has_epilogue(opcode, work):
        # Activation rows to the plane, result rows plane -> VXM, the map's operands to the VXM, and
        # its results VXM -> their slices.
        vxm = target.position("VXM0")
        legs = [(pos, reads[:1], True), (vxm, reads[1:], True), (vxm, writes, False)]
        (east if pos < vxm else west).append(work.relay_words)
    else:
        legs = [(pos, reads, True), (pos, writes, False)]
    for at, group, towards_unit in legs:
        e = [s.stream_ids for s in group if s.slice >= 0 and _flows_east(target, at, s, towards_unit)]
        w = [s.stream_ids for s in group if s.slice >= 0 and not _flows_east(target, at, s, towards_unit)]
        if opcode in _SEQUENTIAL:  # one tile of each group at a time
            east.append(max(e, default=0))
            west.append(max(w, default=0))
        else:
            east.append(sum(e))
            west.append(sum(w))
    cap = target.streams_per_direction
    return min(sum(east), cap), min(sum(west), cap)


def stream_side(target: Target, unit: str) -> tuple[int, int, bool]:
    """All that stream_needs asks of a unit's position: the slices west of it, the slices not east of
    it, and whether it is west of the VXM. Units with the same side hold the same streams for the same
    instruction (MXM0 and MXM1 on tsp-v1), so the scheduler asks once for both."""
    pos = target.position(unit)
    columns = sorted(target.slice_positions)
    return bisect_left(columns, pos), bisect_right(columns, pos), pos < target.position("VXM0")


def _flows_east(target: Target, unit_pos: int, s: Stream, towards_unit: bool) -> bool:
    slice_pos = target.slice_positions[s.slice]
    return (slice_pos < unit_pos) if towards_unit else (unit_pos < slice_pos)


# -- duration --------------------------------------------------------------------------------------
@_memo
def duration(
    target: Target,
    opcode: str,
    unit: str,
    work: Work,
    reads: Sequence[Stream],
    writes: Sequence[Stream],
    precision: str = "fp16",
    install: bool = False,
    ports: Mapping[int, int] | None = None,
    alus: int | None = None,
) -> int:
    """Cycles from issue to the last result written, for `opcode` on `unit`, with the ports it books
    on each slice (default: port_needs; fewer ports stream its words more slowly) and the ALUs a VXM
    kernel holds (default: vxm_alus; fewer take longer over its ops, held_alus)."""
    n = streaming_cycles(target, opcode, work, reads, writes, precision, ports, alus)
    return duration_after_streaming(target, opcode, unit, work, reads, writes, install, n)


def duration_after_streaming(
    target: Target,
    opcode: str,
    unit: str,
    work: Work,
    reads: Sequence[Stream],
    writes: Sequence[Stream],
    install: bool,
    n: int,
) -> int:
    """duration, given N (streaming_cycles, which does not depend on the unit): the scheduler asks
    for an MXM op on every plane, and only the latencies differ between them."""
    if opcode == "host.kernel":
        return n  # (streaming_cycles: the host's whole time)
    pos = target.position(unit)
    t_in, t_out = _farthest(target, pos, reads), _farthest(target, pos, writes)
    read_lat = target.mem.read_delay + t_in if reads else 0
    write_lat = target.mem.write_delay + t_out if writes else 0
    if opcode == "mxm.lw":
        return max(1, n + read_lat)
    lanes = max((s.lanes for s in [*reads, *writes]), default=1)
    stagger = target.stagger(lanes)
    if has_epilogue(opcode, work):
        latency = _epilogue_latency(target, pos, work, reads, writes)
        return (target.iw_cycles if install else 0) + n + latency + stagger
    if opcode == "mxm.mm":
        iw = target.iw_cycles if install else 0
        return iw + n + target.delay("MXM") + read_lat + write_lat + stagger
    if opcode.startswith("vxm."):
        # (the delay of as many chained ALUs as keep up with the stream, even when it holds fewer)
        func = target.delay("VXM") * vxm_alus(target, opcode, work)
    else:
        func = target.delay("SXM")
    return max(1, n) + func + read_lat + write_lat + stagger


def _farthest(target: Target, pos: int, streams: Sequence[Stream]) -> int:
    """Transport: columns between position `pos` and the farthest slice of `streams` (0: none)."""
    columns = target.slice_positions
    return max((abs(pos - columns[s.slice]) for s in streams if s.slice >= 0), default=0)


def _epilogue_latency(
    target: Target, mxm: int, work: Work, reads: Sequence[Stream], writes: Sequence[Stream]
) -> int:
    """An MM with a fused map, from its first row read to its first result written: the row reaches
    the plane and its result the VXM, where the map's operands (read at issue, in parallel) must have
    arrived too; then a VXM delay per chained ALU and the way to the result's slice."""
    vxm, mem = target.position("VXM0"), target.mem
    t_act, t_ops = _farthest(target, mxm, reads[:1]), _farthest(target, vxm, reads[1:])
    t_out = _farthest(target, vxm, writes)
    results_at_vxm = mem.read_delay + t_act + target.delay("MXM") + abs(mxm - vxm)
    operands_at_vxm = mem.read_delay + t_ops if reads[1:] else 0
    func = target.delay("VXM") * vxm_alus(target, "mxm.mm", work)
    return max(results_at_vxm, operands_at_vxm) + func + mem.write_delay + t_out


@_memo
def occupancy(
    target: Target,
    opcode: str,
    unit: str,
    work: Work,
    reads: Sequence[Stream],
    writes: Sequence[Stream],
    precision: str = "fp16",
    install: bool = False,
    ports: Mapping[int, int] | None = None,
    alus: int | None = None,
) -> int:
    """Cycles the instruction holds its own unit: an MM holds its plane while its rows stream in (and
    while it installs weights); everything else holds its unit for its whole duration."""
    if opcode != "mxm.mm":
        return duration(target, opcode, unit, work, reads, writes, precision, install, ports, alus)
    n = streaming_cycles(target, opcode, work, reads, writes, precision, ports)
    return mm_occupancy(target, install, n)


def mm_occupancy(target: Target, install: bool, n: int) -> int:
    """occupancy of an mxm.mm, given its N (streaming_cycles): the same on every plane."""
    return max(1, (target.iw_cycles if install else 0) + n)


def streaming_cycles(
    target: Target,
    opcode: str,
    work: Work,
    reads: Sequence[Stream],
    writes: Sequence[Stream],
    precision: str,
    ports: Mapping[int, int] | None,
    alus: int | None = None,
) -> int:
    """N: the unit's own rate or the MEM bandwidth of the ports booked, whichever is slower."""
    n_unit = unit_cycles(target, opcode, work, precision, alus)
    if opcode == "host.kernel":
        return n_unit  # its whole time (duration): host DMA books no ports
    if ports is None:
        ports = _port_needs(target, opcode, [*reads, *writes], n_unit)
    return max(n_unit, mem_cycles(ports, [*reads, *writes]))


def minimal_latency(target: Target, opcode: str, work: Work, precision: str = "fp16") -> int:
    """The least time any schedule needs from an op's first input to its first result: one vector
    through the unit with no transport (host ops: their whole host time). For dependence-chain bounds."""
    mem = target.mem.read_delay + target.mem.write_delay
    if opcode == "host.kernel":
        return host_cycles(target, work)
    if opcode == "mxm.mm":
        epilogue = target.delay("VXM") if has_epilogue(opcode, work) else 0
        return target.mxm_mode(precision).cycles_per_row + target.delay("MXM") + epilogue + mem
    if opcode == "mxm.lw":
        return 1 + target.mem.read_delay
    if opcode.startswith("vxm."):
        return 1 + target.delay("VXM") + mem
    return 1 + target.delay("SXM") + mem
