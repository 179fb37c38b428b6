"""Recurrent layers: RNN, GRU and LSTM over all directions, layouts and sequence lengths.

The input projection X·Wᵀ of every time step is one matmul; only the recurrence loops over time.
Batch entries shorter than the sequence (`sequence_lens`) keep their state frozen past their end
and emit zero outputs there; the reverse direction of such an entry starts at its own last step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from lpuc.kernels._common import compute_dtype, sigmoid
from lpuc.kernels.registry import KernelContext, kernel

Activation = Callable[[np.ndarray], np.ndarray]
# A cell maps (projected input of one step, states) to the new states; states[0] is the hidden state.
Cell = Callable[[np.ndarray, tuple[np.ndarray, ...]], tuple[np.ndarray, ...]]


# Parametrised activation: fn(x, alpha, beta).
_Parametrised = Callable[[np.ndarray, float, float], np.ndarray]
# name -> (function, default alpha, default beta); None: the activation takes no such parameter.
_ACTIVATIONS: dict[str, tuple[_Parametrised, float | None, float | None]] = {
    "relu": (lambda x, a, b: np.maximum(x, 0), None, None),
    "tanh": (lambda x, a, b: np.tanh(x), None, None),
    "sigmoid": (lambda x, a, b: sigmoid(x), None, None),
    "affine": (lambda x, a, b: a * x + b, 1.0, 0.0),
    "leakyrelu": (lambda x, a, b: np.where(x >= 0, x, a * x), 0.01, None),
    "thresholdedrelu": (lambda x, a, b: np.where(x > a, x, 0), 1.0, None),
    "scaledtanh": (lambda x, a, b: a * np.tanh(b * x), 1.0, 1.0),
    "hardsigmoid": (lambda x, a, b: np.clip(a * x + b, 0, 1), 0.2, 0.5),
    "elu": (lambda x, a, b: np.where(x >= 0, x, a * np.expm1(np.minimum(x, 0))), 1.0, None),
    "softsign": (lambda x, a, b: x / (1 + np.abs(x)), None, None),
    "softplus": (lambda x, a, b: np.logaddexp(x, 0), None, None),
}


def _activations(ctx: KernelContext, defaults: Sequence[str], num_directions: int) -> list[list[Activation]]:
    """The activation functions of each direction; alphas/betas are consumed only by those that take one."""
    names = ctx.attr("activations") or list(defaults) * num_directions
    if len(names) != len(defaults) * num_directions:
        raise ValueError(
            f"{ctx.op_type}: expected {len(defaults) * num_directions} activations, got {len(names)}"
        )
    alphas = list(ctx.attr("activation_alpha", []))
    betas = list(ctx.attr("activation_beta", []))
    functions: list[Activation] = []
    for name in names:
        if name.lower() not in _ACTIVATIONS:
            raise ValueError(f"{ctx.op_type}: unsupported activation {name!r}")
        fn, alpha, beta = _ACTIVATIONS[name.lower()]
        if alpha is not None and alphas:
            alpha = alphas.pop(0)
        if beta is not None and betas:
            beta = betas.pop(0)
        functions.append(lambda x, fn=fn, a=alpha, b=beta: fn(x, a, b).astype(x.dtype))
    per_direction = len(defaults)
    return [functions[d * per_direction : (d + 1) * per_direction] for d in range(num_directions)]


@dataclass(frozen=True)
class _Setup:
    """Inputs of a recurrent op in the seq-major layout, split by direction, in the compute dtype."""

    x: np.ndarray  # (seq, batch, input)
    w: np.ndarray  # (directions, gates * hidden, input)
    r: np.ndarray  # (directions, gates * hidden, hidden)
    w_bias: np.ndarray  # (directions, gates * hidden)
    r_bias: np.ndarray  # (directions, gates * hidden)
    seq_lens: np.ndarray  # (batch,)
    directions: tuple[bool, ...]  # reverse? per direction
    hidden: int
    batch_major: bool

    def initial(self, state: np.ndarray | None) -> np.ndarray:
        """An initial state input as (directions, batch, hidden); zeros when absent."""
        if state is None:
            return np.zeros((len(self.directions), self.x.shape[1], self.hidden), self.x.dtype)
        state = state.astype(self.x.dtype)
        return state.transpose(1, 0, 2) if self.batch_major else state


def _setup(
    ctx: KernelContext,
    gates: int,
    x: np.ndarray,
    w: np.ndarray,
    r: np.ndarray,
    b: np.ndarray | None,
    sequence_lens: np.ndarray | None,
) -> _Setup:
    direction = ctx.attr("direction", "forward")
    reverse = {"forward": (False,), "reverse": (True,), "bidirectional": (False, True)}.get(direction)
    if reverse is None:
        raise ValueError(f"{ctx.op_type}: unsupported direction {direction!r}")
    layout = int(ctx.attr("layout", 0))
    if layout not in (0, 1):
        raise ValueError(f"{ctx.op_type}: unsupported layout {layout}")
    dtype = compute_dtype(x.dtype)
    x = x.astype(dtype)
    if layout == 1:
        x = x.transpose(1, 0, 2)
    hidden = int(ctx.attr("hidden_size", r.shape[-1]))
    if b is None:
        b = np.zeros((len(reverse), 2 * gates * hidden), dtype)
    seq_len, batch = x.shape[:2]
    lens = np.full(batch, seq_len, np.int64) if sequence_lens is None else sequence_lens.astype(np.int64)
    b = b.astype(dtype)
    split = gates * hidden
    return _Setup(
        x, w.astype(dtype), r.astype(dtype), b[:, :split], b[:, split:], lens, reverse, hidden, layout == 1
    )


def _scan(
    setup: _Setup, d: int, cell: Cell, states: tuple[np.ndarray, ...]
) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """Run one direction over time: the hidden state of every step (seq, batch, hidden), final states."""
    projected = setup.x @ setup.w[d].T + setup.w_bias[d]
    seq_len = setup.x.shape[0]
    outputs = np.zeros((seq_len, *states[0].shape), states[0].dtype)
    steps = range(seq_len - 1, -1, -1) if setup.directions[d] else range(seq_len)
    for t in steps:
        active = (t < setup.seq_lens)[:, None]
        updated = cell(projected[t], states)
        states = tuple(np.where(active, new, old) for new, old in zip(updated, states))
        outputs[t] = np.where(active, states[0], 0)
    return outputs, states


def _run(
    setup: _Setup,
    out_dtype: np.dtype,
    make_cell: Callable[[int], Cell],
    initial_states: Sequence[np.ndarray],
) -> list[np.ndarray]:
    """All directions: Y then one final-state output per state, in the op's layout and dtype."""
    ys, finals = [], []
    for d in range(len(setup.directions)):
        y, states = _scan(setup, d, make_cell(d), tuple(s[d] for s in initial_states))
        ys.append(y)
        finals.append(states)
    y = np.stack(ys, axis=1)  # (seq, directions, batch, hidden)
    final_states = [np.stack(per_state) for per_state in zip(*finals)]  # each (directions, batch, hidden)
    if setup.batch_major:
        y = y.transpose(2, 0, 1, 3)
        final_states = [s.transpose(1, 0, 2) for s in final_states]
    return [a.astype(out_dtype) for a in (y, *final_states)]


def _clipper(ctx: KernelContext) -> Activation:
    """Cell clipping bounds every activation's input to [-clip, clip]."""
    clip = ctx.attr("clip")
    if clip is None:
        return lambda x: x
    return lambda x: np.clip(x, -clip, clip)


def _prepare(
    ctx: KernelContext,
    gates: int,
    default_activations: Sequence[str],
    x: np.ndarray,
    w: np.ndarray,
    r: np.ndarray,
    b: np.ndarray | None,
    sequence_lens: np.ndarray | None,
) -> tuple[_Setup, list[list[Activation]], Activation]:
    """What every recurrent op starts from: its setup, each direction's activations and the clipper."""
    setup = _setup(ctx, gates, x, w, r, b, sequence_lens)
    return setup, _activations(ctx, default_activations, len(setup.directions)), _clipper(ctx)


@kernel("RNN")
def rnn(
    ctx: KernelContext,
    x: np.ndarray,
    w: np.ndarray,
    r: np.ndarray,
    b: np.ndarray | None = None,
    sequence_lens: np.ndarray | None = None,
    initial_h: np.ndarray | None = None,
) -> list[np.ndarray]:
    setup, activations, clip = _prepare(ctx, 1, ["Tanh"], x, w, r, b, sequence_lens)

    def make_cell(d: int) -> Cell:
        (f,) = activations[d]
        r_d, r_bias = setup.r[d].T, setup.r_bias[d]
        return lambda xw, states: (f(clip(xw + states[0] @ r_d + r_bias)),)

    return _run(setup, x.dtype, make_cell, [setup.initial(initial_h)])


@kernel("GRU")
def gru(
    ctx: KernelContext,
    x: np.ndarray,
    w: np.ndarray,
    r: np.ndarray,
    b: np.ndarray | None = None,
    sequence_lens: np.ndarray | None = None,
    initial_h: np.ndarray | None = None,
) -> list[np.ndarray]:
    setup, activations, clip = _prepare(ctx, 3, ["Sigmoid", "Tanh"], x, w, r, b, sequence_lens)
    linear_before_reset = bool(ctx.attr("linear_before_reset", 0))
    hidden = setup.hidden

    def make_cell(d: int) -> Cell:
        f, g = activations[d]
        r_d, r_bias = setup.r[d], setup.r_bias[d]
        r_update_reset, r_candidate = r_d[: 2 * hidden].T, r_d[2 * hidden :].T
        bias_update_reset, bias_candidate = r_bias[: 2 * hidden], r_bias[2 * hidden :]

        def cell(xw: np.ndarray, states: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
            (h,) = states
            update_reset = f(clip(xw[:, : 2 * hidden] + h @ r_update_reset + bias_update_reset))
            update, reset = update_reset[:, :hidden], update_reset[:, hidden:]
            if linear_before_reset:
                recurrent = reset * (h @ r_candidate + bias_candidate)
            else:
                recurrent = (reset * h) @ r_candidate + bias_candidate
            candidate = g(clip(xw[:, 2 * hidden :] + recurrent))
            return ((1 - update) * candidate + update * h,)

        return cell

    return _run(setup, x.dtype, make_cell, [setup.initial(initial_h)])


@kernel("LSTM")
def lstm(
    ctx: KernelContext,
    x: np.ndarray,
    w: np.ndarray,
    r: np.ndarray,
    b: np.ndarray | None = None,
    sequence_lens: np.ndarray | None = None,
    initial_h: np.ndarray | None = None,
    initial_c: np.ndarray | None = None,
    p: np.ndarray | None = None,
) -> list[np.ndarray]:
    setup, activations, clip = _prepare(ctx, 4, ["Sigmoid", "Tanh", "Tanh"], x, w, r, b, sequence_lens)
    input_forget = bool(ctx.attr("input_forget", 0))
    hidden = setup.hidden
    dtype = setup.x.dtype
    peepholes = np.zeros((len(setup.directions), 3 * hidden), dtype) if p is None else p.astype(dtype)

    def make_cell(d: int) -> Cell:
        f, g, h_act = activations[d]
        r_d, r_bias = setup.r[d].T, setup.r_bias[d]
        p_input, p_output, p_forget = np.split(peepholes[d], 3)

        def cell(xw: np.ndarray, states: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
            h, c = states
            gates = xw + h @ r_d + r_bias  # gate order: input, output, forget, cell
            i_pre, o_pre, f_pre, c_pre = np.split(gates, 4, axis=1)
            input_gate = f(clip(i_pre + p_input * c))
            forget_gate = 1 - input_gate if input_forget else f(clip(f_pre + p_forget * c))
            new_c = forget_gate * c + input_gate * g(clip(c_pre))
            output_gate = f(clip(o_pre + p_output * new_c))
            return output_gate * h_act(new_c), new_c

        return cell

    return _run(setup, x.dtype, make_cell, [setup.initial(initial_h), setup.initial(initial_c)])
