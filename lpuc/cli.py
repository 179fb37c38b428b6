"""`lpuc` command line: compile, run, report, targets, ops.

Errors print one line (`error: ...`) and exit 2 (bad input) or 1 (`run --check` over tolerance);
`--debug` shows the Python traceback instead.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

import click
import numpy as np

from lpuc.errors import CheckFailed, LpucError
from lpuc.fileio import atomic_path
from lpuc.report import human_bytes
from lpuc.target import DEFAULT_TARGET, PRECISIONS

DEFAULT_TOLERANCE = {"fp32": (1e-4, 1e-5), "fp16": (2e-2, 1e-3)}  # (rtol, atol)


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
    help="fp16: MXM inputs rounded to fp16, fp32 accumulation (native). fp32: exact.",
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
    metavar="D0xD1..",
    help="For a PyTorch factory MODEL (pkg.mod:fn): shape of each example input (float32).",
)
@click.option(
    "--exporter",
    type=click.Choice(["torchscript", "dynamo"]),
    default="torchscript",
    show_default=True,
    help="torch.onnx exporter for a PyTorch factory MODEL.",
)
@click.option(
    "--dump-ir", type=click.Path(file_okay=False), help="Write the IR after every stage to this directory."
)
@click.option("--no-host-fallback", is_flag=True, help="Fail instead of running unmappable ops on the host.")
@click.option("-v", "--verbose", is_flag=True, help="Print the time each compile stage and pass took.")
@click.option("--debug", is_flag=True, hidden=True)
def compile(  # noqa: A001 - the command's name
    model,
    output,
    target,
    precision,
    input_shapes,
    example_inputs,
    exporter,
    dump_ir,
    no_host_fallback,
    verbose,
    debug,
):
    """Compile MODEL (an .onnx file, or pkg.module:factory returning a torch.nn.Module)."""
    import lpuc
    from lpuc.frontend.input_shapes import parse_shape_specs

    shapes = parse_shape_specs(input_shapes)
    source, examples = _model_source(model, example_inputs)
    program = lpuc.compile(
        source,
        target=target,
        precision=precision,
        input_shapes=shapes,
        example_inputs=examples,
        exporter=exporter,
        host_fallback=not no_host_fallback,
        dump_ir=dump_ir,
    )
    program.save(output)
    if verbose:
        for stage, seconds in program.compile_stages.items():
            click.echo(f"  {stage:<32} {seconds:8.3f} s", err=True)
    s = program.summary
    size = Path(output).stat().st_size
    click.echo(
        f"compiled {model} for {s['target']} ({s['precision']}): {s['instructions']} instructions, "
        f"{s['cycles']} cycles = {s['latency_us']} us at {program.target.clock_mhz:g} MHz "
        f"({s['bound_ratio']}x the lower bound), SRAM peak {human_bytes(s['sram_peak_bytes'])}, "
        f"host ops {s['host_ops']}; wrote {output} ({human_bytes(size)}) in {program.compile_seconds:.2f} s"
    )


@main.command()
@click.argument("artifact", type=click.Path(dir_okay=False))
@click.option("--inputs", "inputs_path", type=click.Path(dir_okay=False), help=".npz keyed by input name.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write outputs to this .npz.")
@click.option("--trace", type=click.Path(dir_okay=False), help="Write a Perfetto / Chrome trace JSON.")
@click.option(
    "--check", "check_model", type=click.Path(dir_okay=False), help="Compare with onnxruntime on this model."
)
@click.option("--rtol", type=float, help="Relative tolerance for --check (default by precision).")
@click.option("--atol", type=float, help="Absolute tolerance for --check (default by precision).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for random inputs.")
@click.option("--debug", is_flag=True, hidden=True)
def run(artifact, inputs_path, output, trace, check_model, rtol, atol, seed, debug):
    """Execute ARTIFACT in the reference runtime."""
    import lpuc

    program = lpuc.load(artifact)
    if inputs_path:
        feeds = _load_npz(inputs_path)
    else:
        feeds = random_inputs(program, seed)
        shapes = ", ".join(f"{b.name}={'x'.join(map(str, b.shape)) or 'scalar'}" for b in program.inputs)
        click.echo(f"no --inputs: using random inputs (seed {seed}): {shapes}", err=True)
    outputs = program.run(feeds, trace=trace)
    for name, value in outputs.items():
        click.echo(f"output {name}: {value.dtype}{list(value.shape)} mean={_mean(value)}")
    if output:
        _save_npz(output, outputs)
    if trace:
        click.echo(f"wrote trace {trace} (open in https://ui.perfetto.dev)")
    if check_model:
        default_rtol, default_atol = DEFAULT_TOLERANCE.get(program.precision, (1e-4, 1e-5))
        check_against_onnxruntime(check_model, feeds, outputs, rtol or default_rtol, atol or default_atol)


@main.command()
@click.argument("artifact", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable summary.")
@click.option("--debug", is_flag=True, hidden=True)
def report(artifact, as_json, debug):
    """Show the schedule summary of ARTIFACT: cycles, latency, unit busy %, SRAM."""
    import lpuc

    s = lpuc.load(artifact).summary
    if as_json:
        click.echo(json.dumps(s, indent=2, sort_keys=True))
        return
    from lpuc.report import summary_text

    click.echo(summary_text(s))


@main.command()
def targets():
    """List the targets lpuc ships."""
    from lpuc.target import available_targets, load_target

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


# -- helpers --------------------------------------------------------------------------------------
def _model_source(model: str, example_inputs: tuple[str, ...]):
    if ":" in model and not Path(model).exists():
        from lpuc.frontend.torch_export import factory_from_spec

        module = factory_from_spec(model)
        from lpuc.frontend.input_shapes import parse_dims

        shapes = [parse_dims(s, "--example-input") for s in example_inputs]
        import torch

        gen = torch.Generator().manual_seed(0)
        return module, tuple(torch.randn(*s, generator=gen) for s in shapes)
    if example_inputs:
        raise LpucError("--example-input is only for PyTorch factories (MODEL given as pkg.module:function)")
    return model, None


def random_inputs(program, seed: int) -> dict[str, np.ndarray]:
    from lpuc.dtypes import dtype_from_name

    rng = np.random.default_rng(seed)
    feeds = {}
    for b in program.inputs:
        dtype = dtype_from_name(b.dtype)
        if dtype.kind == "f" or dtype.name == "bfloat16":
            feeds[b.name] = rng.standard_normal(b.shape).astype(dtype)
        elif dtype.kind == "b":
            feeds[b.name] = rng.integers(0, 2, b.shape).astype(bool)
        else:
            feeds[b.name] = rng.integers(0, 4, b.shape).astype(dtype)  # small: safe as indices
    return feeds


def check_against_onnxruntime(model_path, feeds, outputs, rtol: float, atol: float) -> None:
    try:
        import onnxruntime as ort
    except ImportError:
        raise LpucError("--check needs onnxruntime (pip install onnxruntime)") from None
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    wanted = {i.name for i in session.get_inputs()}
    expected = dict(zip(names, session.run(None, {k: v for k, v in feeds.items() if k in wanted})))
    failed = []
    for name, ref in expected.items():
        got = np.asarray(outputs[name], dtype=np.float64)
        ref = np.asarray(ref, dtype=np.float64)
        err = np.abs(got - ref)
        max_abs = float(err.max()) if err.size else 0.0
        max_rel = float((err / np.maximum(np.abs(ref), np.finfo(np.float32).tiny)).max()) if err.size else 0.0
        ok = bool(np.all(err <= atol + rtol * np.abs(ref)))
        click.echo(
            f"check {name}: max abs err {max_abs:.3g}, max rel err {max_rel:.3g} "
            f"(rtol {rtol:g}, atol {atol:g}): {'ok' if ok else 'FAILED'}"
        )
        if not ok:
            failed.append(name)
    if failed:
        raise CheckFailed(f"outputs differ from onnxruntime beyond tolerance: {', '.join(failed)}")


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
