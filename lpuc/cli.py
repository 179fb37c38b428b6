"""`lpuc` command line: compile, run, report, targets, ops.

Errors print one line (`error: ...`) and exit 2 (bad input) or 1 (`run --check` over tolerance);
`--debug` shows the Python traceback instead.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click
import numpy as np

from lpuc.errors import CheckFailed, LpucError
from lpuc.fileio import atomic_path
from lpuc.progress import quiet_option
from lpuc.report import human_bytes
from lpuc.target import DEFAULT_TARGET, PRECISIONS

if TYPE_CHECKING:
    import onnx

DEFAULT_TOLERANCE = {"fp32": (1e-4, 1e-5)}  # (rtol, atol): builds checked elementwise by default
# Reduced-precision builds are checked by direction and size, not elementwise: their rounding error is
# spread over every value (fp16 accumulates it through deep models; int8 quantizes every value), so
# `run --check` passes an output whose cosine similarity and SQNR are at least these. Cosine alone is
# blind to scale (a result 1.5x too large has cosine 1), hence the SQNR floor: fp16 rounding leaves
# it far above 30 dB, int8 above ~17 dB at cosine 0.99, and a result 1.5x off scores 6 dB.
DEFAULT_MIN_COSINE = {"fp16": 0.999, "int8": 0.99}
DEFAULT_MIN_SQNR = {"fp16": 30.0, "int8": 10.0}


@dataclass(frozen=True)
class CheckCriteria:
    """What `run --check` demands of each output; None: that test is not made."""

    rtol: float | None = None
    atol: float | None = None
    min_cosine: float | None = None
    min_sqnr: float | None = None

    @classmethod
    def for_precision(
        cls,
        precision: str,
        rtol: float | None = None,
        atol: float | None = None,
        min_cosine: float | None = None,
        min_sqnr: float | None = None,
    ) -> CheckCriteria:
        """The defaults of a build's precision; an option given (even 0) overrides its default, and
        --rtol/--atol add the elementwise test to a build checked by direction."""
        if precision not in DEFAULT_MIN_COSINE or rtol is not None or atol is not None:
            default_rtol, default_atol = DEFAULT_TOLERANCE.get(precision, (0.0, 0.0))
            rtol = default_rtol if rtol is None else rtol
            atol = default_atol if atol is None else atol
        return cls(
            rtol,
            atol,
            DEFAULT_MIN_COSINE.get(precision) if min_cosine is None else min_cosine,
            DEFAULT_MIN_SQNR.get(precision) if min_sqnr is None else min_sqnr,
        )

    def __str__(self) -> str:
        parts = [] if self.rtol is None else [f"rtol {self.rtol:g}, atol {self.atol or 0.0:g}"]
        parts += [] if self.min_cosine is None else [f"cosine >= {self.min_cosine:g}"]
        return ", ".join(parts + ([] if self.min_sqnr is None else [f"SQNR >= {self.min_sqnr:g} dB"]))


class _Group(click.Group):
    """Turns LpucError into a one-line message; any other exception is reported as a bug."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except LpucError as e:
            if _debug(ctx):
                traceback.print_exc()
            click.echo(f"error: {e}", err=True)
            sys.exit(e.exit_code)
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit):
            raise
        except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading
            sys.stderr.close()
            sys.exit(0)
        except Exception as e:  # noqa: BLE001 - last line of defence: no traceback without --debug
            if _debug(ctx):
                raise
            if isinstance(e, OSError) and e.filename is not None:
                # A path the user gave that cannot be read or written: their error, not lpuc's.
                click.echo(f"error: {e.filename}: {e.strerror or e}", err=True)
                sys.exit(2)
            first = str(e).splitlines()[0] if str(e) else ""
            click.echo(
                f"internal error: {type(e).__name__}: {first} (rerun with --debug for details)", err=True
            )
            sys.exit(3)


def _debug(ctx: click.Context) -> bool:
    return bool(ctx.params.get("debug")) or "--debug" in sys.argv or os.environ.get("LPUC_DEBUG") == "1"


@click.group(cls=_Group)
@click.option("--debug", is_flag=True, help="Show Python tracebacks.")
@click.version_option(package_name="lpuc")
def main(debug: bool) -> None:
    """lpuc: compile ONNX / PyTorch models for LPU-class chips and run them in the reference runtime."""


@main.command()
@quiet_option
@click.argument("model")
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False), required=True, help="Artifact to write (.lpu)."
)
@click.option(
    "--target",
    default=DEFAULT_TARGET,
    show_default=True,
    help="Target name (see `lpuc targets`) or JSON file.",
)
@click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    default="fp16",
    show_default=True,
    help="fp16: MXM inputs rounded to fp16, fp32 accumulation (native). fp32: exact. int8: "
    "int8 weights (per output channel) and activations (per tensor, calibrated), int32 accumulation.",
)
@click.option(
    "--calibrate",
    type=click.Path(dir_okay=False),
    help="With --precision int8: .npz of calibration inputs keyed by input name (leading axis = "
    "samples); default: seeded random-normal inputs.",
)
@click.option(
    "--input-shape",
    "input_shapes",
    multiple=True,
    metavar="NAME=D0xD1..",
    help="Bind an input's dynamic dims, e.g. x=1x128 (repeatable).",
)
@click.option(
    "--example-input",
    "example_inputs",
    multiple=True,
    metavar="[NAME=]D0xD1..[:DTYPE]",
    help="For a PyTorch factory or Hugging Face MODEL: an example input's shape and dtype (default "
    "float32), positional or named after forward's parameter, e.g. 1x3x224x224 or input_ids=1x16:int64 "
    "(repeatable).",
)
@click.option(
    "--exporter",
    type=click.Choice(["torchscript", "dynamo"]),
    default="torchscript",
    show_default=True,
    help="torch.onnx exporter for a PyTorch factory or Hugging Face MODEL.",
)
@click.option("--seq-len", type=int, help="Hugging Face MODEL directory: sequence length (default 128).")
@click.option("--batch", type=int, help="Hugging Face MODEL directory: batch size (default 1).")
@click.option(
    "--dump-ir", type=click.Path(file_okay=False), help="Write the IR after every stage to this directory."
)
@click.option("--no-host-fallback", is_flag=True, help="Fail instead of running unmappable ops on the host.")
@click.option(
    "--disable-pass",
    "disable_passes",
    multiple=True,
    metavar="NAME",
    help="Skip this graph pass or lowering strategy, e.g. fuse_gelu or row_slabs, to measure its effect "
    "(repeatable).",
)
@click.option(
    "-v",
    "--verbose",
    is_flag=True,
    help="Print each compile stage's time and peak RSS, and each pass's time.",
)
@click.option("--debug", is_flag=True, hidden=True)
def compile(  # noqa: A001 - the command's name
    model,
    output,
    target,
    precision,
    calibrate,
    input_shapes,
    example_inputs,
    exporter,
    seq_len,
    batch,
    dump_ir,
    no_host_fallback,
    disable_passes,
    verbose,
    debug,
):
    """Compile MODEL: an .onnx file, pkg.module:factory (or file.py:factory) returning a
    torch.nn.Module, or a Hugging Face model directory (config.json + weights)."""
    import lpuc
    from lpuc.frontend.input_shapes import parse_shape_specs

    shapes = parse_shape_specs(input_shapes)
    source = _model_source(model, example_inputs, exporter, seq_len, batch)
    program = lpuc.compile(
        source,
        target=target,
        precision=precision,
        input_shapes=shapes,
        host_fallback=not no_host_fallback,
        dump_ir=dump_ir,
        disable_passes=disable_passes,
        calibrate=calibrate,
    )
    from lpuc.api import timed_stage

    with timed_stage(program.compile_stages, "encode"):
        program.save(output)
    kept = ""
    if not isinstance(source, str):  # an ONNX model exported here: keep it for `run --check`
        from lpuc.fileio import atomic_write

        atomic_write(f"{output}.onnx", source.SerializeToString())
        kept = f" and the exported ONNX {output}.onnx (for run --check)"
    if verbose:
        from lpuc.api import stage_usage

        stages = program.compile_stages
        for stage in sorted(stages, key=lambda k: k.startswith("pass ")):  # stages, then passes
            seconds = stages[stage]
            rss = stage_usage.get(stage, (0.0, None))[1]  # stages have a peak RSS, passes do not
            peak = f"  peak RSS {rss / 2**20:8.1f} MiB" if rss is not None else ""
            click.echo(f"  {stage:<32} {seconds:8.3f} s{peak}", err=True)
    s = program.summary
    size = Path(output).stat().st_size
    click.echo(
        f"compiled {model} for {s['target']} ({s['precision']}): {s['instructions']} instructions, "
        f"{s['cycles']} cycles = {s['latency_us']} us at {program.target.clock_mhz:g} MHz "
        f"({s['bound_ratio']}x the hardware bound), SRAM peak {human_bytes(s['sram_peak_bytes'])}, "
        f"host ops {s['host_ops']}; wrote {output} ({human_bytes(size)}){kept} "
        f"in {program.compile_seconds:.2f} s"
    )
    if "calibration" in s["options"]:
        click.echo(f"int8 calibration: {s['options']['calibration']}")


@main.command()
@quiet_option
@click.argument("artifact", type=click.Path(dir_okay=False))
@click.option("--inputs", "inputs_path", type=click.Path(dir_okay=False), help=".npz keyed by input name.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write outputs to this .npz.")
@click.option("--trace", type=click.Path(dir_okay=False), help="Write a Perfetto / Chrome trace JSON.")
@click.option(
    "--check", "check_model", type=click.Path(dir_okay=False), help="Compare with onnxruntime on this model."
)
@click.option("--rtol", type=float, help="Relative tolerance for --check (default 1e-4 for fp32 builds).")
@click.option("--atol", type=float, help="Absolute tolerance for --check (default 1e-5 for fp32 builds).")
@click.option(
    "--min-cosine",
    type=float,
    help="For --check: lowest cosine similarity an output may have (default 0.999 for fp16 builds, "
    "0.99 for int8 builds, which are then not checked elementwise unless --rtol/--atol are given).",
)
@click.option(
    "--min-sqnr",
    type=float,
    help="For --check: lowest SQNR in dB an output may have (default 30 for fp16, 10 for int8 builds).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for random inputs.")
@click.option(
    "--all-tensors",
    is_flag=True,
    help="With --check: compare every intermediate tensor and name the first node that diverges.",
)
@click.option(
    "--interpret",
    is_flag=True,
    help="Run the plain instruction-by-instruction interpreter (the execution plan's oracle).",
)
@click.option("--debug", is_flag=True, hidden=True)
def run(
    artifact,
    inputs_path,
    output,
    trace,
    check_model,
    rtol,
    atol,
    min_cosine,
    min_sqnr,
    seed,
    all_tensors,
    interpret,
    debug,
):
    """Execute ARTIFACT in the reference runtime."""
    import lpuc

    if all_tensors and not check_model:
        raise LpucError("--all-tensors compares with onnxruntime: give --check MODEL.onnx")
    for label, tol in (("--rtol", rtol), ("--atol", atol)):
        if tol is not None and not tol >= 0:
            raise LpucError(f"{label} {tol:g}: a tolerance must be >= 0")
    if min_cosine is not None and not -1 <= min_cosine <= 1:
        raise LpucError(f"--min-cosine {min_cosine:g}: a cosine similarity is in [-1, 1]")
    program = lpuc.load(artifact)
    reference = OnnxReference(check_model, program) if check_model else None
    if inputs_path:
        feeds = _load_npz(inputs_path)
    else:
        feeds = random_inputs(program, seed)
        shapes = ", ".join(
            f"{b.name}={'x'.join(map(str, b.shape)) or 'scalar'}" for b in program.model_inputs
        )
        click.echo(f"no --inputs: using random inputs (seed {seed}): {shapes}", err=True)
    if all_tensors:
        from lpuc.runtime.capture import execute_capturing

        outputs, captured = execute_capturing(program, feeds)
        if trace:
            from lpuc.runtime import write_trace

            write_trace(program, trace)
    else:
        outputs, captured = program.run(feeds, trace=trace, interpret=interpret), None
    for name, value in outputs.items():
        click.echo(f"output {name}: {value.dtype}{list(value.shape)} mean={_mean(value)}")
    if output:
        _save_npz(output, outputs)
    if trace:
        click.echo(f"wrote trace {trace} (open in https://ui.perfetto.dev)")
    if reference is not None:
        criteria = CheckCriteria.for_precision(program.precision, rtol, atol, min_cosine, min_sqnr)
        if captured is not None:
            check_intermediates(reference, feeds, captured, criteria)
        check_against_onnxruntime(check_model, feeds, outputs, criteria, reference=reference)


@main.command()
@click.argument("artifact", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable summary.")
@click.option(
    "--html",
    "html_path",
    type=click.Path(dir_okay=False),
    help="Also write a self-contained HTML page: summary, utilization and SRAM over time, critical path.",
)
@click.option("--debug", is_flag=True, hidden=True)
def report(artifact, as_json, html_path, debug):
    """Show the schedule summary of ARTIFACT: cycles, latency, unit busy %, SRAM."""
    import lpuc

    program = lpuc.load(artifact)
    s = program.summary
    if html_path:
        from lpuc.report_html import write_report_html

        write_report_html(program, html_path)
        click.echo(f"wrote {html_path}", err=True)
    if as_json:
        click.echo(json.dumps(s, indent=2, sort_keys=True))
        return
    from lpuc.report import summary_text

    click.echo(summary_text(s))


@main.command()
@click.option(
    "--check",
    "check_file",
    metavar="FILE",
    type=click.Path(dir_okay=False),
    help="Validate a target JSON file.",
)
def targets(check_file):
    """List the targets lpuc ships, or validate a target file with --check FILE."""
    from lpuc.target import available_targets, load_target, load_target_file

    if check_file is not None:
        t = load_target_file(check_file)  # a TargetError becomes `error: FILE: field ...`, exit 2
        click.echo(
            f"{check_file}: ok ({t.name}, {t.clock_mhz:g} MHz, {t.lanes} lanes, {t.num_slices} MEM slices "
            f"({human_bytes(t.sram_bytes)}), {t.num_mxm} MXM, {t.num_sxm} SXM, sha256 {t.sha256[:12]})"
        )
        return
    for name in available_targets():
        t = load_target(name)
        click.echo(
            f"{name:<10} {t.clock_mhz:g} MHz, {t.lanes} lanes, {t.num_slices} MEM slices "
            f"({human_bytes(t.sram_bytes)}), {t.num_mxm} MXM planes, {t.vxm_alus} VXM ALUs/lane, "
            f"{t.num_sxm} SXM"
            f"{' (default)' if name == DEFAULT_TARGET else ''}"
        )
        click.echo(f"{'':<10} {t.description}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable list.")
@click.option("--unit", help="Only ops that run on this unit (MXM, VXM, SXM, ALIAS, FOLD, HOST).")
def ops(as_json, unit):
    """List the operators lpuc compiles, where each runs, and their ONNX opset versions."""
    from lpuc.ops import supported_ops

    rows = [r for r in supported_ops() if unit is None or r["unit"] == unit.upper()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        name = f"{r['domain']}::{r['op']}" if r["domain"] else r["op"]
        via = f" (via {r['via']})" if r["via"] else ""
        versions = ",".join(str(v) for v in r["opsets"]) or "-"
        click.echo(f"{name:<36} {r['unit']:<6} opsets {versions}{via}")
    counts = {u: sum(r["unit"] == u for r in rows) for u in ("MXM", "VXM", "SXM", "ALIAS", "FOLD", "HOST")}
    click.echo(f"{len(rows)} ops: " + ", ".join(f"{n} {u}" for u, n in counts.items() if n))


@main.command()
@click.argument("old")
@click.argument("new")
@click.option(
    "--tolerance",
    default="0",
    show_default=True,
    metavar="PCT",
    help="Allowed worsening of each metric in percent of OLD: 1% or 1.",
)
@click.option(
    "--format", "fmt", type=click.Choice(["text", "markdown", "json"]), default="text", show_default=True
)
@click.option("--debug", is_flag=True, hidden=True)
def diff(old, new, tolerance, fmt, debug):
    """Compare schedule summaries OLD -> NEW: .lpu artifacts, `report --json` files or directories of
    them (matched by file name). Exit 1 when a metric got worse beyond --tolerance."""
    from lpuc.diff import diff_paths, parse_tolerance, render

    result = diff_paths(old, new, parse_tolerance(tolerance))
    click.echo(render(result, fmt))
    sys.exit(result.exit_code)


# -- helpers --------------------------------------------------------------------------------------
def _model_source(
    model: str, example_inputs: tuple[str, ...], exporter: str, seq_len: int | None, batch: int | None
) -> str | onnx.ModelProto:
    """An .onnx path as given, or the ONNX exported from a PyTorch factory or Hugging Face directory."""
    from lpuc.frontend.hf import export_hf_dir, is_hf_dir

    if Path(model).is_dir():
        if not is_hf_dir(model):
            raise LpucError(f"{model}: a directory MODEL must be a Hugging Face model (no config.json)")
        from lpuc.frontend.torch_export import example_tensors

        examples = example_tensors(example_inputs) if example_inputs else None
        return export_hf_dir(model, exporter, batch=batch, seq_len=seq_len, example_inputs=examples)
    if seq_len is not None or batch is not None:
        raise LpucError("--seq-len and --batch are only for Hugging Face model directories")
    if ":" in model and not Path(model).exists():
        from lpuc.frontend.torch_export import example_tensors, export_module, factory_from_spec

        module = factory_from_spec(model)
        return export_module(module, example_tensors(example_inputs), exporter=exporter)
    if example_inputs:
        raise LpucError(
            "--example-input is only for PyTorch factories (MODEL given as pkg.module:function) "
            "and Hugging Face model directories"
        )
    return model


def random_inputs(program, seed: int) -> dict[str, np.ndarray]:
    from lpuc.dtypes import dtype_from_name

    rng = np.random.default_rng(seed)
    feeds = {}
    for b in program.model_inputs:
        dtype = dtype_from_name(b.dtype)
        if dtype.kind == "f" or dtype.name == "bfloat16":
            feeds[b.name] = rng.standard_normal(b.shape).astype(dtype)
        elif dtype.kind == "b":
            feeds[b.name] = rng.integers(0, 2, b.shape).astype(bool)
        else:
            # 0 or 1: valid indices into any real table (BERT's token types have two rows) and masks
            feeds[b.name] = rng.integers(0, 2, b.shape).astype(dtype)
    return feeds


class OnnxReference:
    """The --check model in onnxruntime, checked up front to match the program's inputs and outputs."""

    def __init__(self, model_path: str, program=None):
        from lpuc.frontend.loader import load_model

        self.path = str(model_path)
        self.model = _dims_as_dynamic(load_model(model_path))  # one-line errors: missing, not ONNX
        self.session = self._session(self.model)
        if program is not None:
            self._match(program)

    def _session(self, model):
        try:
            import onnxruntime as ort
        except ImportError:
            raise LpucError("--check needs onnxruntime (pip install onnxruntime)") from None
        try:
            return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise LpucError(f"{self.path}: onnxruntime cannot load it ({_first_line(e)})") from None

    def _match(self, program) -> None:
        """Same input / output names, and shapes wherever the model's dims are fixed."""
        for kind, ours, theirs in (
            ("inputs", program.model_inputs, self.session.get_inputs()),
            ("outputs", program.outputs, self.session.get_outputs()),
        ):
            names = sorted(b.name for b in ours)
            if names != sorted(o.name for o in theirs):
                raise LpucError(
                    f"{self.path}: not the compiled model: its {kind} are "
                    f"{', '.join(sorted(o.name for o in theirs))}, the program's are {', '.join(names)}"
                )
            shapes = {b.name: b.shape for b in ours}
            for o in theirs:
                shape = shapes[o.name]
                dims = list(o.shape) if o.shape is not None else None
                if shape is None or dims is None:
                    continue
                fixed = [d if isinstance(d, int) and d > 0 else None for d in dims]
                if len(fixed) != len(shape) or any(f is not None and f != d for f, d in zip(fixed, shape)):
                    raise LpucError(
                        f"{self.path}: not the compiled model: {kind[:-1]} '{o.name}' has shape {dims}, "
                        f"the program's is {list(shape)}"
                    )

    def run(self, feeds: dict[str, np.ndarray], names: list[str] | None = None) -> dict[str, np.ndarray]:
        session = self.session if names is None else self._session(_with_outputs(self.model, names))
        wanted = {i.name for i in session.get_inputs()}
        try:
            results = session.run(names, {k: v for k, v in feeds.items() if k in wanted})
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise LpucError(
                f"{self.path}: onnxruntime cannot run it on these inputs ({_first_line(e)})"
            ) from None
        return dict(zip(names or [o.name for o in session.get_outputs()], results))


def _dims_as_dynamic(model):
    """Input dims of 0 mark dynamic dims for some exporters (lpuc binds them): tell onnxruntime,
    which reads -1 that way already but 0 as a fixed size."""
    for vi in model.graph.input:
        for axis, d in enumerate(vi.type.tensor_type.shape.dim):
            if d.HasField("dim_value") and d.dim_value == 0:
                d.dim_param = f"{vi.name}_dim{axis}"  # setting the oneof clears dim_value
    return model


def _with_outputs(model, names: list[str]):
    """A copy of `model` that also returns the intermediate values `names` (type left to onnxruntime)."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    present = {o.name for o in copy.graph.output}
    copy.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in present)
    return copy


def compare(got: np.ndarray, ref: np.ndarray, criteria: CheckCriteria) -> tuple[bool, str]:
    """(meets the criteria, error figures): max abs / rel error, cosine similarity, SQNR in dB."""
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if got.shape != ref.shape:
        if got.size != ref.size:
            return False, f"shape {list(got.shape)}, onnxruntime's {list(ref.shape)}"
        got = got.reshape(ref.shape)  # intermediates are captured as [rows, cols] views
    err = np.abs(got - ref)
    max_abs = float(err.max()) if err.size else 0.0
    max_rel = float((err / np.maximum(np.abs(ref), np.finfo(np.float32).tiny)).max()) if err.size else 0.0
    rtol, atol = criteria.rtol, criteria.atol
    ok = rtol is None or bool(np.all(err <= (atol or 0.0) + rtol * np.abs(ref)))
    norms = float(np.linalg.norm(got)) * float(np.linalg.norm(ref))
    cosine = float(np.dot(got.ravel(), ref.ravel()) / norms) if norms else float(np.array_equal(got, ref))
    noise, signal = float(np.sum(err**2)), float(np.sum(ref**2))
    sqnr = float("inf") if not noise else 10 * np.log10(signal / noise) if signal else float("-inf")
    if criteria.min_cosine is not None and not cosine >= criteria.min_cosine:
        ok = False
    if criteria.min_sqnr is not None and not sqnr >= criteria.min_sqnr:
        ok = False
    return ok, (
        f"max abs err {max_abs:.3g}, max rel err {max_rel:.3g}, cosine {cosine:.6f}, SQNR {sqnr:.1f} dB"
    )


def check_against_onnxruntime(
    model_path,
    feeds,
    outputs,
    criteria: CheckCriteria,
    reference: OnnxReference | None = None,
) -> None:
    reference = reference or OnnxReference(model_path)
    failed = []
    for name, ref in reference.run(feeds).items():
        if name not in outputs:
            raise LpucError(f"{model_path}: not the compiled model: the program has no output '{name}'")
        ok, figures = compare(outputs[name], ref, criteria)
        click.echo(f"check {name}: {figures} ({criteria}): {'ok' if ok else 'FAILED'}")
        if not ok:
            failed.append(name)
    if failed:
        raise CheckFailed(f"outputs differ from onnxruntime beyond tolerance: {', '.join(failed)}")


def check_intermediates(
    reference: OnnxReference, feeds, captured: dict[str, np.ndarray], criteria: CheckCriteria
) -> None:
    """Compare every captured tensor the ONNX model also names and uses; report the first diverging
    node. Unused outputs (Dropout's mask) are skipped: onnxruntime fills some with values the spec
    does not define, and they cannot affect a result."""
    graph = reference.model.graph
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    producers = [(n, o) for n in graph.node for o in n.output if o in captured and o in used]
    if not producers:
        click.echo("check --all-tensors: no intermediate tensor of the model survives compilation")
        return
    expected = reference.run(feeds, [o for _, o in producers])
    first, diverged = None, 0
    for node, name in producers:  # ONNX nodes are stored in topological order
        ok, figures = compare(captured[name], expected[name], criteria)
        if not ok:
            diverged += 1
            first = first or f"node '{node.name}' ({node.op_type}) output '{name}': {figures}"
    click.echo(
        f"check --all-tensors: {len(producers)} intermediate tensors compared, {diverged} beyond tolerance"
        + (f"; first divergence at {first}" if first else "")
    )


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _load_npz(path: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError) as e:
        raise LpucError(f"{path}: cannot read inputs ({e})") from None


def _save_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, **arrays)


def _mean(value: np.ndarray) -> str:
    if value.size == 0 or value.dtype.kind not in "fiub":
        return "-"
    return f"{float(np.mean(value.astype(np.float64))):.6g}"


if __name__ == "__main__":
    main()
