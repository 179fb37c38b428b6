"""The Python API: `lpuc.compile(...) -> Program` and `lpuc.load(path) -> Program`."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from lpuc.calibration import Calibration, load_calibration
from lpuc.calibration import describe as describe_calibration
from lpuc.errors import DoesNotFitError, LpucError
from lpuc.frontend.importer import import_model
from lpuc.frontend.loader import load_model, load_model_and_weights
from lpuc.ir.graph import Graph
from lpuc.ir.printer import print_graph
from lpuc.ir.tiled import TiledProgram
from lpuc.lowering import lower, lower_with
from lpuc.lowering.host_tables import one_more_table
from lpuc.lowering.input_gathers import InputGather, gather_on_host, input_fed_gathers
from lpuc.no_gc import no_cycle_collection
from lpuc.passes.legalize_broadcast import read_repeated
from lpuc.passes.pipeline import PassContext, PassTimings, run_pipeline
from lpuc.program import Program
from lpuc.schedule.build import build_program
from lpuc.target import DEFAULT_TARGET, PRECISIONS, Target, load_target

ModelSource = str | os.PathLike | onnx.ModelProto


def compile(  # noqa: A001 - the natural name for a compiler's entry point
    model: ModelSource | Any,
    target: str | Target = DEFAULT_TARGET,
    precision: str = "fp16",
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
    *,
    example_inputs: Any = None,
    exporter: str = "torchscript",
    host_fallback: bool = True,
    dump_ir: str | os.PathLike | None = None,
    const_inputs: Mapping[str, np.ndarray] | None = None,
    strict_input_shapes: bool = True,
    disable_passes: Iterable[str] = (),
    calibrate: str | os.PathLike | Mapping[str, np.ndarray] | None = None,
) -> Program:
    """Compile an ONNX model (path or ModelProto) into a scheduled, validated Program.

    A `torch.nn.Module` is exported to ONNX first with `example_inputs` (a tensor, a tuple of
    positional tensors and/or a dict name -> tensor of keyword ones) and `exporter` ("torchscript" or
    "dynamo"; see lpuc.frontend.torch_export); so is a Hugging Face model directory (default inputs
    1x128 int64 token ids + attention mask unless `example_inputs` are given; lpuc.frontend.hf).
    `input_shapes` binds dynamic input dims ({"x": (1, 128)}); `precision` is "fp16" (the MXM's
    native path: inputs rounded to fp16, fp32 accumulation) or "fp32" (exact, three fp16 passes).
    `const_inputs` compiles inputs as constants and `strict_input_shapes=False` lets `input_shapes`
    replace declared static dims (both used by the ONNX backend, which specializes on actual inputs).
    `disable_passes` names graph passes to skip and lowering strategies to leave out (e.g.
    ("fuse_gelu", "row_slabs"), to measure what each is worth; lpuc.lowering.STRATEGIES lists them).
    `precision="int8"` quantizes MatMuls with constant weights (passes/quantize_int8.py);
    `calibrate` (an .npz path or a dict name -> array, leading axis = samples) gives the inputs
    activation ranges are measured on, else seeded random-normal ones are used.
    """
    if precision not in PRECISIONS:
        raise LpucError(f"unknown precision {precision!r} (choose {', '.join(PRECISIONS)})")
    if calibrate is not None and precision != "int8":
        raise LpucError(f"calibration inputs are for --precision int8, not {precision}")
    calibration = _calibration(calibrate) if precision == "int8" else None
    tgt = load_target(target)
    # Built before the frontend runs, so an unknown pass name fails at once.
    disabled = [disable_passes] if isinstance(disable_passes, str) else disable_passes
    pass_ctx = PassContext(tgt, precision, host_fallback, frozenset(disabled), calibration)
    stages: dict[str, float] = {}
    with timed_stage(stages, "frontend"):
        # (A torch module's export runs with the collector: tracing leaves many reference cycles.)
        proto, where, weights = _as_onnx(model, example_inputs, exporter)
        with no_cycle_collection():
            graph = import_model(
                proto,
                where,
                input_shapes=input_shapes,
                const_inputs=const_inputs,
                strict_input_shapes=strict_input_shapes,
                target=tgt,
                weights=weights,
            )
        del proto, weights  # the graph holds what it needs: the parsed file is not kept after this
    model_nodes = {n.name for n in graph.nodes}  # the model's own ops, before passes rewrite them
    dump_dir = Path(dump_ir) if dump_ir is not None else None
    timings = PassTimings()
    with timed_stage(stages, "passes"), no_cycle_collection():
        graph = run_pipeline(graph, pass_ctx, dump_dir=dump_dir, timings=timings)
    with timed_stage(stages, "lowering"), no_cycle_collection():
        tiled = lower(
            graph, tgt, precision, host_fallback=host_fallback, where=where, disabled=pass_ctx.disabled
        )
    with timed_stage(stages, "schedule"), no_cycle_collection():
        options = {
            "precision": precision,
            "host_fallback": host_fallback,
            "disabled_passes": sorted(pass_ctx.disabled),  # so `lpuc diff` shows a different pass set
        }
        if calibration is not None:
            options["calibration"] = describe_calibration(calibration, graph)
        program = _build_fitting(graph, tiled, tgt, where, options, model_nodes)
    with timed_stage(stages, "validate"), no_cycle_collection():
        program.validate()
    if dump_dir is not None:
        from lpuc.backends.text import program_text

        (dump_dir / "90_schedule.txt").write_text(program_text(program))
        (dump_dir / "99_final.graph.txt").write_text(print_graph(graph))
    program.compile_stages = {**stages, **{f"pass {k}": v for k, v in timings.seconds.items()}}
    return program


def _calibration(calibrate: str | os.PathLike | Mapping[str, np.ndarray] | None) -> Calibration:
    if calibrate is None:
        return Calibration()
    if isinstance(calibrate, Mapping):
        samples = {k: np.asarray(v) for k, v in calibrate.items()}
        return Calibration(samples, "calibration inputs", "calibration inputs")
    return load_calibration(calibrate)


# Each stage of this process's latest compile: (seconds, peak resident set size in bytes or None
# where the OS does not say). Kept beside compile_stages (seconds only, summed by Program) and
# recorded even for a stage that fails, so a benchmark can time a model that does not fit.
stage_usage: dict[str, tuple[float, int | None]] = {}


# Lowering strategies left out when SRAM is tight: they buy speed with SRAM (K parts' fp32 partial
# results of a lone product, a mask's copy per head are extra live tiles). (Products' results
# stacked, each tile's halves on two slices, stay: with scratch room for the largest tile beside a
# typical one, BERT-base fp16 fits with them, 301,875 cycles -> 287,570.)
SRAM_HUNGRY = frozenset({"k_split", "expanded_broadcasts"})
# Placement rounds of the lean step: its constants leave room on few slices, and a tile that did
# not fit moves where a gap holds it, which moves a few others' lifetimes: BERT-base fp16 fits at
# the 5th. (The earlier steps keep build.MAX_PLACEMENT_ROUNDS: when they fail, hundreds of tiles do.)
LEAN_PLACEMENT_ROUNDS = 8


def _build_fitting(
    graph: Graph, tiled: TiledProgram, target: Target, where: str, options: dict, model_nodes: set[str]
) -> Program:
    """Build `tiled`; if it does not fit SRAM, again with narrow constant tiles packed side by side
    (which shares MEM ports among more tiles), then lowered without SRAM_HUNGRY strategies and with
    constants filling most slices to leave whole tiles' room on a few (which concentrates live data
    on those), then with one more lookup table in host memory at a time (which costs PCIe round
    trips; built as in the second step)."""

    # What ops need, by what the answer depends on (not the op): the later steps' programs are
    # mostly the same ops, and the scheduler answers their questions from here.
    requests: dict = {}

    def build(tiled: TiledProgram, step: str, **kwargs: bool | int) -> Program:
        # The summary's options say which step built the program: a model that starts needing a
        # later (slower) step shows up in `lpuc diff`.
        options_here = {**options, "fit": step}
        return build_program(tiled, target, where, options_here, model_nodes, requests=requests, **kwargs)

    host_fallback, disabled = options["host_fallback"], frozenset(options["disabled_passes"])
    gathers = input_fed_gathers(graph, tiled, target) if host_fallback else []
    gathers = gathers if "input_gathers" not in disabled else []

    def build_fed() -> Program:
        fed = lower_with(
            gather_on_host(graph, gathers), target, tiled.precision, host_fallback, where, disabled=disabled
        )
        return with_host_gathers(build(fed, "input_gathers", pack=True), graph, gathers)

    def fed_end_to_end() -> float | None:
        # Only its figure is kept while the other candidate is built (two BERT-sized programs at
        # once would add ~200 MiB to the compile's peak); built again if it wins (the scheduler's
        # answers are kept in `requests`, and the build is deterministic).
        with contextlib.suppress(DoesNotFitError):
            return build_fed().summary["end_to_end_us"]
        return None

    # Tables whose ids are a model input can be gathered by the host before the run (their SRAM
    # freed at no chip cycle, but the host's gather and the rows' PCIe bytes add to the end-to-end
    # time). When lowering already moved such a table to host memory (the constants alone overflow
    # SRAM), its Gather would wait inside the schedule for the host and two PCIe transfers: both
    # are built and the shorter end to end wins (GPT-2 12L with a 50,257-token vocabulary, int8:
    # 344,892 cycles with the round trip, 247,320 gathered before the run; 1,475 and 1,466 us end
    # to end, its logits' PCIe transfer taking most of both).
    fed_tables = {g.table for g in gathers}
    moved = any(b.host and b.is_const and b.tensor in fed_tables for b in tiled.buffers)
    fed_us = fed_end_to_end() if moved else None
    error: DoesNotFitError | None = None
    for step, pack in (("plain", False), ("packed", True)):
        try:
            program = build(tiled, step, pack=pack)
        except DoesNotFitError as e:
            error = e
            continue
        if fed_us is None or program.summary["end_to_end_us"] <= fed_us:
            return program  # (ties: no host work)
        del program
        return build_fed()
    # Else both ways to make room are built and the shorter end to end wins: gathering on the
    # host, or the lean build (slower on the chip; BERT-base fp16: lean, the host's gather at
    # host_gbytes_per_s costs more than the chip saves).
    if gathers and not moved:
        fed_us = fed_end_to_end()
    if not SRAM_HUNGRY <= disabled:
        on_host = frozenset(b.tensor for b in tiled.buffers if b.host and b.is_const)
        lean_graph = graph if "expanded_broadcasts" in disabled else read_repeated(graph)
        lean = lower_with(
            lean_graph, target, tiled.precision, host_fallback, where, on_host, disabled | SRAM_HUNGRY
        )
        try:
            program = build(lean, "lean", pack=True, scratch=True, rounds=LEAN_PLACEMENT_ROUNDS)
            if fed_us is None or program.summary["end_to_end_us"] <= fed_us:
                return program  # (ties: lean, which needs no host work)
            del program
        except DoesNotFitError:
            pass
        del lean
    if fed_us is not None:
        return build_fed()
    while True:
        tables = one_more_table(graph, tiled, target) if host_fallback else frozenset()
        if not tables:
            raise error
        tiled = lower_with(graph, target, tiled.precision, host_fallback, where, tables, disabled)
        try:
            return build(tiled, "host_tables", pack=True)
        except DoesNotFitError as again:
            error = again


def with_host_gathers(program: Program, graph: Graph, gathers: list[InputGather]) -> Program:
    """`program` with the host's gathers before the run recorded (their tables stored as host
    constants) and its summary recomputed to cost them."""
    from lpuc.dtypes import dtype_name
    from lpuc.program import Binding, HostGather
    from lpuc.schedule.summary import stored_facts, summarize

    for g in gathers:
        key = f"host_gather:{g.table}"
        program.consts[key] = graph.values[g.table].const
        program.host_gathers.append(HostGather(g.rows, g.ids, g.table, key))
    # Ids only the host reads are still the caller's inputs: bound to no tiles (never cross PCIe).
    bound = {b.name: b for b in program.inputs}
    for name in graph.inputs:
        if name not in bound:
            v = graph.values[name]
            bound[name] = Binding(name, tuple(v.shape), dtype_name(v.dtype), ())
    program.inputs = [bound[n] for n in graph.inputs] + [bound[g.rows] for g in gathers]
    program.summary = summarize(program, stored_facts(program.summary))
    return program


@contextlib.contextmanager
def timed_stage(stages: dict[str, float], name: str) -> Iterator[None]:
    """Time the block as compile stage `name` (seconds into `stages`, seconds and peak RSS into
    `stage_usage`); for stages run after `compile` returns, such as writing the artifact."""
    from lpuc import progress

    _reset_peak_rss()
    start = time.perf_counter()
    try:
        with progress.stage(name):  # a bar on a terminal once the stage has taken a second
            yield
    finally:
        stage_usage[name] = (time.perf_counter() - start, _peak_rss())
    stages[name] = stage_usage[name][0]


def _reset_peak_rss() -> None:
    # Linux: writing 5 to clear_refs resets VmHWM to the current RSS, so each stage gets its own peak.
    with contextlib.suppress(OSError):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")


def _peak_rss() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def load(path: str | os.PathLike) -> Program:
    """Read a .lpu artifact; it is checked (checksum, version) and validated before it is returned."""
    from lpuc.backends.lpu import read_program

    return read_program(path)


def _as_onnx(
    model: Any, example_inputs: Any, exporter: str
) -> tuple[onnx.ModelProto, str, dict[str, np.ndarray]]:
    """The model as ONNX, where it came from, and the weights read apart from it (a file's large
    ones: lpuc.frontend.loader.load_model_and_weights)."""
    if isinstance(model, onnx.ModelProto):
        return load_model(model), model.graph.name or "<model>", {}
    if isinstance(model, (str, os.PathLike)) and Path(model).is_dir():
        from lpuc.frontend.hf import export_hf_dir

        return load_model(export_hf_dir(model, exporter, example_inputs=example_inputs)), str(model), {}
    if isinstance(model, (str, os.PathLike)):
        proto, weights = load_model_and_weights(model)
        proto.graph.name = Path(model).stem  # exporters name every graph "main_graph"
        return proto, str(model), weights
    from lpuc.frontend.torch_export import export_module

    proto = export_module(model, example_inputs, exporter=exporter)
    return load_model(proto), type(model).__name__, {}
