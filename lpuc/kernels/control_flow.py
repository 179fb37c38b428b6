"""Control flow: If, Loop and Scan, whose bodies are subgraphs evaluated by the kernel interpreter.

Bodies see the values of every enclosing scope (`ctx.outer`); their inputs and outputs are bound by
position, not by name.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx

from lpuc.kernels._common import ints, normalize_axis, onnx_dtype, opset_before
from lpuc.kernels.interpreter import evaluate_graph
from lpuc.kernels.registry import KernelContext, kernel


def _run_body(
    ctx: KernelContext, body: onnx.GraphProto, args: Sequence[np.ndarray | None]
) -> list[np.ndarray]:
    inputs = {value.name: arg for value, arg in zip(body.input, args)}
    return evaluate_graph(body, inputs, ctx.opsets, outer=ctx.outer)


def _stack(elements: list[np.ndarray], declared: onnx.ValueInfoProto) -> np.ndarray:
    """Per-iteration values stacked on a new leading axis; zero iterations give an empty array
    of the body output's declared element type (and its rank, with unknown dimensions as 0)."""
    if elements:
        return np.stack(elements)
    tensor_type = declared.type.tensor_type
    dims = [d.dim_value for d in tensor_type.shape.dim] if tensor_type.HasField("shape") else []
    return np.zeros((0, *dims), onnx_dtype(tensor_type.elem_type))


def _truth(cond: np.ndarray) -> bool:
    """A boolean condition tensor (a scalar or a single element) as a Python bool."""
    return bool(np.asarray(cond).reshape(-1)[0])


@kernel("If")
def if_(ctx: KernelContext, cond: np.ndarray) -> list[np.ndarray]:
    branch = ctx.attr("then_branch") if _truth(cond) else ctx.attr("else_branch")
    return _run_body(ctx, branch, [])


@kernel("Loop")
def loop(
    ctx: KernelContext, max_trip_count: np.ndarray | None, cond: np.ndarray | None, *carried: np.ndarray
) -> list[np.ndarray]:
    body: onnx.GraphProto = ctx.attr("body")
    if max_trip_count is None and cond is None:
        raise ValueError("Loop: with neither a trip count nor a condition input the loop never ends")
    trip_limit = None if max_trip_count is None else ints(max_trip_count)[0]
    keep_going = True if cond is None else _truth(cond)
    values = list(carried)
    scan_outputs: list[list[np.ndarray]] = [[] for _ in body.output[1 + len(carried) :]]
    i = 0
    while keep_going and (trip_limit is None or i < trip_limit):
        outs = _run_body(ctx, body, [np.array(i, np.int64), np.array(keep_going), *values])
        if cond is not None:  # without a condition input the body's condition output is ignored
            keep_going = _truth(outs[0])
        values = outs[1 : 1 + len(carried)]
        for collected, element in zip(scan_outputs, outs[1 + len(carried) :]):
            collected.append(element)
        i += 1
    declared = body.output[1 + len(carried) :]
    return [*values, *(_stack(c, d) for c, d in zip(scan_outputs, declared))]


def _scan(
    ctx: KernelContext,
    body: onnx.GraphProto,
    states: list[np.ndarray],
    scan_inputs: list[np.ndarray],
    input_axes: Sequence[int],
    input_reversed: Sequence[bool],
    output_axes: Sequence[int],
    output_reversed: Sequence[bool],
) -> list[np.ndarray]:
    """One (unbatched) scan: final states followed by the stacked scan outputs."""
    sequences = []
    for x, axis, reverse in zip(scan_inputs, input_axes, input_reversed):
        x = np.moveaxis(x, normalize_axis(axis, x.ndim), 0)
        sequences.append(x[::-1] if reverse else x)
    steps = sequences[0].shape[0] if sequences else 0
    collected: list[list[np.ndarray]] = [[] for _ in body.output[len(states) :]]
    for t in range(steps):
        outs = _run_body(ctx, body, [*states, *(s[t] for s in sequences)])
        states = outs[: len(states)]
        for elements, element in zip(collected, outs[len(states) :]):
            elements.append(element)
    scan_outputs = []
    for elements, declared, axis, reverse in zip(
        collected, body.output[len(states) :], output_axes, output_reversed
    ):
        stacked = _stack(elements, declared)
        stacked = stacked[::-1] if reverse else stacked
        scan_outputs.append(np.moveaxis(stacked, 0, normalize_axis(axis, stacked.ndim)))
    return [*states, *scan_outputs]


@kernel("Scan")
def scan(ctx: KernelContext, *inputs: np.ndarray | None) -> list[np.ndarray]:
    body: onnx.GraphProto = ctx.attr("body")
    num_scan_inputs = int(ctx.attr("num_scan_inputs"))
    if opset_before(ctx, 9):
        return _batched_scan(ctx, body, num_scan_inputs, inputs[0], list(inputs[1:]))
    num_states = len(inputs) - num_scan_inputs
    num_scan_outputs = len(body.output) - num_states
    return _scan(
        ctx,
        body,
        list(inputs[:num_states]),
        list(inputs[num_states:]),
        ctx.attr("scan_input_axes") or [0] * num_scan_inputs,
        [bool(d) for d in ctx.attr("scan_input_directions") or [0] * num_scan_inputs],
        ctx.attr("scan_output_axes") or [0] * num_scan_outputs,
        [bool(d) for d in ctx.attr("scan_output_directions") or [0] * num_scan_outputs],
    )


def _batched_scan(
    ctx: KernelContext,
    body: onnx.GraphProto,
    num_scan_inputs: int,
    sequence_lens: np.ndarray | None,
    inputs: list[np.ndarray],
) -> list[np.ndarray]:
    """Scan-8: axis 0 is a batch, axis 1 the sequence; each batch entry scans its first sequence_lens steps
    and its scan outputs are zero-padded to the longest sequence."""
    num_states = len(inputs) - num_scan_inputs
    states, scan_inputs = inputs[:num_states], inputs[num_states:]
    batch, max_len = scan_inputs[0].shape[:2]
    lengths = [max_len] * batch if sequence_lens is None else [int(n) for n in sequence_lens.reshape(-1)]
    directions = [bool(d) for d in ctx.attr("directions") or [0] * num_scan_inputs]
    num_scan_outputs = len(body.output) - num_states
    per_batch = []
    for b in range(batch):
        results = _scan(
            ctx,
            body,
            [s[b] for s in states],
            [x[b, : lengths[b]] for x in scan_inputs],
            [0] * num_scan_inputs,
            directions,
            [0] * num_scan_outputs,
            [False] * num_scan_outputs,
        )
        padded = [
            np.pad(y, [(0, max_len - y.shape[0])] + [(0, 0)] * (y.ndim - 1)) for y in results[num_states:]
        ]
        per_batch.append([*results[:num_states], *padded])
    return [np.stack(values) for values in zip(*per_batch)]
