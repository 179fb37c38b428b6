"""LSTM / GRU / RNN -> MatMul + elementwise ops + Split/Slice/Concat/Reshape, unrolled over time.

The sequence length is static, so each recurrent node becomes straight-line code:

- one MatMul projects the inputs of every time step and direction at once,
  [T*B, I] @ [I, D*G*H] (+ the bias sums); Splits cut it into one [B, H] block per direction, gate
  and step (a Split streams its input once, where a Slice per step would stream it every step);
- per direction and step: one MatMul of the hidden state with Rᵀ (GRU without linear_before_reset:
  a second one for the candidate, which reads reset * h), one Split of it into gates and the
  cell's elementwise ops (activations, clip, peepholes);
- Y / Y_h / Y_c are Concats (+ free Reshapes) of the per-step states, built only when used.

Weight transposes, direction slices and bias sums are ops like any other, evaluated here when their
inputs are constants (so constant W/R/B/P become ready-made constants), emitted otherwise. A zero
initial state folds the first step's recurrent MatMul away.

sequence_lens shorter than T are exact with a per-step mask, as the kernel defines them: a Where
keeps the state of finished batch entries and zeroes their outputs (the reverse direction then
starts at each entry's own last step). A constant sequence_lens gives constant masks (none when all
lengths are T); a runtime one is compared with the step index on the VXM.

Nodes this pass cannot express (unknown activation, direction or layout; activation lists of the
wrong length) raise UnsupportedError: the host kernel rejects them too.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from lpuc.errors import UnsupportedError
from lpuc.ir.graph import Graph, Node
from lpuc.kernels._common import compute_dtype
from lpuc.passes.builder import NodeBuilder, replace_nodes

# Gate letters in the order of the rows of W, R and B.
_GATES = {"RNN": "h", "GRU": "zrh", "LSTM": "iofc"}
_DEFAULT_ACTIVATIONS = {"RNN": ("Tanh",), "GRU": ("Sigmoid", "Tanh"), "LSTM": ("Sigmoid", "Tanh", "Tanh")}
# Activation (lower case) -> (default alpha, default beta); None: it takes no such parameter.
_ACTIVATION_PARAMS: dict[str, tuple[float | None, float | None]] = {
    "relu": (None, None),
    "tanh": (None, None),
    "sigmoid": (None, None),
    "affine": (1.0, 0.0),
    "leakyrelu": (0.01, None),
    "thresholdedrelu": (1.0, None),
    "scaledtanh": (1.0, 1.0),
    "hardsigmoid": (0.2, 0.5),
    "elu": (1.0, None),
    "softsign": (None, None),
    "softplus": (None, None),
}
# Activations that are one ONNX op of the same meaning, with the attributes they take.
_SINGLE_OP_ACTIVATIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "relu": ("Relu", ()),
    "tanh": ("Tanh", ()),
    "sigmoid": ("Sigmoid", ()),
    "softsign": ("Softsign", ()),
    "softplus": ("Softplus", ()),
    "leakyrelu": ("LeakyRelu", ("alpha",)),
    "thresholdedrelu": ("ThresholdedRelu", ("alpha",)),
    "elu": ("Elu", ("alpha",)),
    "hardsigmoid": ("HardSigmoid", ("alpha", "beta")),
}
_INPUT_NAMES = ("X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P")


def decompose_rnn(graph: Graph, ctx: object = None) -> Graph:
    used = _used_values(graph)
    return replace_nodes(graph, _is_recurrent, lambda em: _decompose(em, used))


def _is_recurrent(node: Node, graph: Graph) -> bool:
    return node.op in _GATES and not node.domain


def _used_values(graph: Graph) -> frozenset[str]:
    names = set(graph.outputs)
    for node in graph.nodes:
        names.update(i for i in node.inputs if i)
    return frozenset(names)


# -- the layer's static description --------------------------------------------------------------


@dataclass(frozen=True)
class _Activation:
    name: str  # lower case
    alpha: float | None
    beta: float | None


@dataclass(frozen=True)
class _Layer:
    node: Node
    inputs: dict[str, str]  # ONNX input name -> value ("" when absent)
    gates: int
    hidden: int
    seq_len: int
    batch: int
    reverse: tuple[bool, ...]  # per direction
    batch_major: bool  # layout 1: [B, T, ...] tensors
    activations: tuple[tuple[_Activation, ...], ...]  # per direction
    clip: float | None
    dtype: np.dtype  # the compute dtype

    @property
    def width(self) -> int:
        """Columns of one direction's gates: G * H."""
        return self.gates * self.hidden

    def state_shape(self) -> tuple[int, int]:
        return self.batch, self.hidden


def _unsupported(node: Node, what: str) -> UnsupportedError:
    return UnsupportedError(f"{node.op} node '{node.name}': {what}")


def _parse(node: Node, graph: Graph) -> _Layer:
    inputs = {key: (node.inputs[k] if k < len(node.inputs) else "") for k, key in enumerate(_INPUT_NAMES)}
    direction = node.attr("direction", "forward")
    reverse = {"forward": (False,), "reverse": (True,), "bidirectional": (False, True)}.get(direction)
    if reverse is None:
        raise _unsupported(node, f"unsupported direction {direction!r}")
    layout = int(node.attr("layout", 0))
    if layout not in (0, 1):
        raise _unsupported(node, f"unsupported layout {layout}")
    x_shape = graph.values[inputs["X"]].shape
    seq_len, batch = (x_shape[1], x_shape[0]) if layout == 1 else x_shape[:2]
    clip = node.attr("clip")
    return _Layer(
        node=node,
        inputs=inputs,
        gates=len(_GATES[node.op]),
        hidden=int(node.attr("hidden_size", graph.values[inputs["R"]].shape[-1])),
        seq_len=int(seq_len),
        batch=int(batch),
        reverse=reverse,
        batch_major=layout == 1,
        activations=_activations(node, len(reverse)),
        clip=None if clip is None else float(clip),
        dtype=compute_dtype(graph.values[inputs["X"]].dtype),
    )


def _activations(node: Node, directions: int) -> tuple[tuple[_Activation, ...], ...]:
    """Activations per direction; alphas/betas are consumed in order by those that take one."""
    defaults = _DEFAULT_ACTIVATIONS[node.op]
    names = list(node.attr("activations") or defaults * directions)
    if len(names) != len(defaults) * directions:
        raise _unsupported(node, f"expected {len(defaults) * directions} activations, got {len(names)}")
    alphas = [float(a) for a in node.attr("activation_alpha") or []]
    betas = [float(b) for b in node.attr("activation_beta") or []]
    result = []
    for name in names:
        key = name.lower()
        if key not in _ACTIVATION_PARAMS:
            raise _unsupported(node, f"unsupported activation {name!r}")
        alpha, beta = _ACTIVATION_PARAMS[key]
        if alpha is not None and alphas:
            alpha = alphas.pop(0)
        if beta is not None and betas:
            beta = betas.pop(0)
        result.append(_Activation(key, alpha, beta))
    per = len(defaults)
    return tuple(tuple(result[d * per : (d + 1) * per]) for d in range(directions))


# -- the decomposition ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Direction:
    """What one direction's steps read: weights [H, *] and per-gate constants [H]."""

    activations: tuple[_Activation, ...]
    recurrent: str  # Rᵀ [H, G*H]; GRU without linear_before_reset: update/reset columns [H, 2H]
    candidate_recurrent: str  # GRU without linear_before_reset: Rᵀ of the candidate [H, H]
    candidate_bias: str  # GRU with linear_before_reset: Rb of the candidate [H]
    peepholes: tuple[str, str, str] | None  # LSTM: input, output, forget


def _decompose(em: NodeBuilder, used: frozenset[str]) -> None:
    """Emit the unrolled layer; nothing at all when none of its outputs is used."""
    node = em.node
    layer = _parse(node, em.graph)
    outputs = [o if o in used else "" for o in node.outputs]
    if not any(outputs):
        return
    layer = replace(layer, inputs=_in_compute_dtype(em, layer))
    projected = _projected_gates(em, layer)
    masks = _step_masks(em, layer)
    per_step: list[list[str]] = []  # per direction: the output of each time step
    finals: list[tuple[str, ...]] = []  # per direction: the final states
    for d in range(len(layer.reverse)):
        direction = _direction(em, layer, d)
        states = _initial_states(em, layer, d)
        ys = [""] * layer.seq_len
        steps = range(layer.seq_len - 1, -1, -1) if layer.reverse[d] else range(layer.seq_len)
        for t in steps:
            em.scope = f"d{d}/t{t}"
            x_t = tuple(gate[t] for gate in projected[d])
            updated = _STEPS[node.op](em, layer, direction, x_t, states)
            states = tuple(
                _where_running(em, masks[t], new, old, f"keep{k}")
                for k, (new, old) in enumerate(zip(updated, states))
            )
            if outputs[0]:
                ys[t] = _where_running(em, masks[t], states[0], em.scalar(0, layer.dtype), "output")
        per_step.append(ys)
        finals.append(states)
    em.scope = "outputs"
    _emit_outputs(em, layer, outputs, per_step, finals)


def _where_running(em: NodeBuilder, mask: str | None, running: str, finished: str, tag: str) -> str:
    """`running` where the batch entry's sequence still runs at this step, else `finished`."""
    return running if mask is None else em.where(mask, running, finished, tag)


def _in_compute_dtype(em: NodeBuilder, layer: _Layer) -> dict[str, str]:
    """The layer's inputs with the float ones cast to the compute dtype (once, for every direction)."""
    return {
        key: em.cast(name, layer.dtype, key) if name and key != "sequence_lens" else name
        for key, name in layer.inputs.items()
    }


def _projected_gates(em: NodeBuilder, layer: _Layer) -> list[list[list[str]]]:
    """X·Wᵀ + biases of every direction, gate and step ([d][gate][t], each [B, H]).

    One MatMul for all of them, then one Split into gate columns and one Split per gate into steps,
    so each value is streamed once (a Slice per step would stream the whole projection every time).
    """
    x = layer.inputs["X"]
    lead = em.shape(x)[:2]
    rows, size = lead[0] * lead[1], em.shape(x)[2]
    directions = len(layer.reverse)
    w = layer.inputs["W"]
    w_t = em.reshape(em.transpose(w, (2, 0, 1), "w_t"), (size, directions * layer.width), "w_t_flat")
    projected = em.matmul(em.reshape(x, (rows, size), "x_rows"), w_t, "project")
    bias = _input_bias(em, layer)
    if bias:
        projected = em.add(projected, bias, "project_bias")
    columns = em.split(projected, 1, [layer.hidden] * (directions * layer.gates), "gates")
    steps = [
        _split_steps(em, layer, gate, f"d{k // layer.gates}/x_{_GATES[layer.node.op][k % layer.gates]}")
        for k, gate in enumerate(columns)
    ]
    return [steps[d * layer.gates : (d + 1) * layer.gates] for d in range(directions)]


def _split_steps(em: NodeBuilder, layer: _Layer, gate: str, tag: str) -> list[str]:
    """The [B, H] block of each time step of one gate's projection ([T*B, H]; layout 1: [B*T, H])."""
    batch, hidden = layer.state_shape()
    if layer.batch_major:
        blocks = em.split(
            em.reshape(gate, (batch, layer.seq_len, hidden), f"{tag}_bth"), 1, [1] * layer.seq_len, tag
        )
        return [em.reshape(b, (batch, hidden), f"{tag}_t{t}") for t, b in enumerate(blocks)]
    blocks = em.split(gate, 0, [batch] * layer.seq_len, tag)
    return [em.reshape(b, (batch, hidden), f"{tag}_t{t}") for t, b in enumerate(blocks)]


def _input_bias(em: NodeBuilder, layer: _Layer) -> str:
    """The biases added to the projection [D*G*H]: Wb + Rb, except GRU's candidate Rb with
    linear_before_reset (that one is scaled by the reset gate)."""
    if not layer.inputs["B"]:
        return ""
    b = layer.inputs["B"]
    directions, width, hidden = len(layer.reverse), layer.width, layer.hidden
    w_bias = em.slice(b, (0,), (width,), (1,), "w_bias")
    r_bias = em.slice(b, (width,), (2 * width,), (1,), "r_bias")
    if layer.node.op == "GRU" and layer.node.attr("linear_before_reset", 0):
        update_reset = em.add(
            em.slice(w_bias, (0,), (2 * hidden,), (1,), "w_bias_zr"),
            em.slice(r_bias, (0,), (2 * hidden,), (1,), "r_bias_zr"),
            "bias_zr",
        )
        bias = em.concat(
            (update_reset, em.slice(w_bias, (2 * hidden,), (width,), (1,), "w_bias_h")), 1, "bias"
        )
    else:
        bias = em.add(w_bias, r_bias, "bias")
    return em.reshape(bias, (directions * width,), "bias_flat")


def _direction(em: NodeBuilder, layer: _Layer, d: int) -> _Direction:
    em.scope = f"d{d}"
    hidden, width = layer.hidden, layer.width
    r = layer.inputs["R"]
    split_candidate = layer.node.op == "GRU" and not layer.node.attr("linear_before_reset", 0)
    recurrent_rows = 2 * hidden if split_candidate else width
    candidate_bias = ""
    if layer.node.op == "GRU" and not split_candidate and layer.inputs["B"]:
        candidate_bias = _row(em, layer.inputs["B"], d, width + 2 * hidden, 2 * width, "candidate_bias")
    return _Direction(
        activations=layer.activations[d],
        recurrent=_recurrent_weights(em, r, d, 0, recurrent_rows, "r_t"),
        candidate_recurrent=_recurrent_weights(em, r, d, 2 * hidden, width, "r_t_h")
        if split_candidate
        else "",
        candidate_bias=candidate_bias,
        peepholes=_peepholes(em, layer, d),
    )


def _recurrent_weights(em: NodeBuilder, r: str, d: int, start: int, end: int, tag: str) -> str:
    """Rows [start, end) of direction d's R, transposed: [H, end - start]."""
    block = em.slice(r, (d, start), (d + 1, end), (0, 1), f"{tag}_rows")
    return em.transpose(em.reshape(block, em.shape(block)[1:], f"{tag}_2d"), (1, 0), tag)


def _row(em: NodeBuilder, x: str, d: int, start: int, end: int, tag: str) -> str:
    """x[d, start:end] of a [D, n] value: [end - start]."""
    return em.reshape(em.slice(x, (d, start), (d + 1, end), (0, 1), f"{tag}_slice"), (end - start,), tag)


def _peepholes(em: NodeBuilder, layer: _Layer, d: int) -> tuple[str, str, str] | None:
    if layer.node.op != "LSTM" or not layer.inputs["P"]:
        return None
    p = layer.inputs["P"]
    h = layer.hidden
    return (
        _row(em, p, d, 0, h, "p_input"),
        _row(em, p, d, h, 2 * h, "p_output"),
        _row(em, p, d, 2 * h, 3 * h, "p_forget"),
    )


def _initial_states(em: NodeBuilder, layer: _Layer, d: int) -> tuple[str, ...]:
    em.scope = f"d{d}"
    keys = ("initial_h", "initial_c") if layer.node.op == "LSTM" else ("initial_h",)
    return tuple(_initial_state(em, layer, d, key) for key in keys)


def _initial_state(em: NodeBuilder, layer: _Layer, d: int, key: str) -> str:
    """Direction d's slice of an initial state ([D, B, H]; layout 1: [B, D, H]) as [B, H]; zeros if absent."""
    if not layer.inputs[key]:
        return em.const(key, np.zeros(layer.state_shape(), layer.dtype))
    state = layer.inputs[key]
    axis = 1 if layer.batch_major else 0
    return em.reshape(em.slice(state, (d,), (d + 1,), (axis,), f"{key}_slice"), layer.state_shape(), key)


def _step_masks(em: NodeBuilder, layer: _Layer) -> list[str | None]:
    """Per step, a [B, H] bool mask of the batch entries still running; None where all are."""
    lens = layer.inputs["sequence_lens"]
    em.scope = "mask"
    if not lens:
        return [None] * layer.seq_len
    shape = layer.state_shape()
    if em.graph.is_const(lens):
        active = np.arange(layer.seq_len)[:, None] < em.graph.values[lens].const.astype(np.int64)[None, :]
        return [
            None
            if row.all()
            else em.const(f"t{t}", np.ascontiguousarray(np.broadcast_to(row[:, None], shape)))
            for t, row in enumerate(active)
        ]
    dtype = em.dtype(lens)
    column = em.emit("Unsqueeze", (lens, em.ints("axes", (1,))), (layer.batch, 1), dtype, "lens_column")
    spread = em.emit("Expand", (column, em.ints("lens_shape", shape)), shape, dtype, "lens")
    return [
        em.binary("Greater", spread, em.const(f"t{t}_index", np.array(t, dtype)), f"t{t}", dtype=bool)
        for t in range(layer.seq_len)
    ]


# -- cells ---------------------------------------------------------------------------------------


def _activate(
    em: NodeBuilder, layer: _Layer, act: _Activation, x: str, tag: str, clipped: bool = True
) -> str:
    """act(clip(x)) (clip only where the layer has one and `clipped`)."""
    if clipped and layer.clip is not None:
        bounds = (em.scalar(-layer.clip, layer.dtype), em.scalar(layer.clip, layer.dtype))
        x = em.emit("Clip", (x, *bounds), em.shape(x), em.dtype(x), f"{tag}_clip")
    if act.name in _SINGLE_OP_ACTIVATIONS:
        op, params = _SINGLE_OP_ACTIVATIONS[act.name]
        return em.unary(op, x, tag, **{key: getattr(act, key) for key in params})
    if act.name == "affine":  # alpha * x + beta
        scaled = em.binary("Mul", x, em.scalar(act.alpha, layer.dtype), f"{tag}_scale")
        return em.binary("Add", scaled, em.scalar(act.beta, layer.dtype), tag)
    # scaledtanh: alpha * tanh(beta * x)
    inner = em.binary("Mul", x, em.scalar(act.beta, layer.dtype), f"{tag}_inner")
    return em.binary("Mul", em.unary("Tanh", inner, f"{tag}_tanh"), em.scalar(act.alpha, layer.dtype), tag)


def _rnn_step(
    em: NodeBuilder, layer: _Layer, dr: _Direction, x_t: tuple[str, ...], states: tuple[str, ...]
) -> tuple[str]:
    (h,) = states
    pre = em.add(x_t[0], em.matmul(h, dr.recurrent, "recurrent"), "pre")
    return (_activate(em, layer, dr.activations[0], pre, "hidden"),)


def _gru_step(
    em: NodeBuilder, layer: _Layer, dr: _Direction, x_t: tuple[str, ...], states: tuple[str, ...]
) -> tuple[str]:
    (h,) = states
    f, g = dr.activations
    hr = em.matmul(h, dr.recurrent, "recurrent")  # [B, 2H]; with linear_before_reset [B, 3H]
    hr_gates = em.split(hr, 1, [layer.hidden] * (em.shape(hr)[1] // layer.hidden), "recurrent_gates")
    update = _activate(em, layer, f, em.add(x_t[0], hr_gates[0], "pre_z"), "update")
    reset = _activate(em, layer, f, em.add(x_t[1], hr_gates[1], "pre_r"), "reset")
    if dr.candidate_recurrent:  # (reset * h) @ Rhᵀ; Rb_h is in the projection's bias
        recurrent = em.matmul(em.binary("Mul", reset, h, "reset_h"), dr.candidate_recurrent, "recurrent_h")
    else:  # reset * (h @ Rhᵀ + Rb_h)
        recurrent = hr_gates[2]
        if dr.candidate_bias:
            recurrent = em.add(recurrent, dr.candidate_bias, "recurrent_h_bias")
        recurrent = em.binary("Mul", reset, recurrent, "reset_recurrent")
    candidate = _activate(em, layer, g, em.add(x_t[2], recurrent, "pre_h"), "candidate")
    keep = em.binary("Sub", em.scalar(1, layer.dtype), update, "keep")  # (1 - z) * candidate + z * h
    return (
        em.add(
            em.binary("Mul", keep, candidate, "new_part"), em.binary("Mul", update, h, "old_part"), "hidden"
        ),
    )


def _lstm_step(
    em: NodeBuilder, layer: _Layer, dr: _Direction, x_t: tuple[str, ...], states: tuple[str, ...]
) -> tuple[str, str]:
    h, c = states
    f, g, h_act = dr.activations
    hr = em.split(em.matmul(h, dr.recurrent, "recurrent"), 1, [layer.hidden] * 4, "recurrent_gates")
    # Gate order: input, output, forget, cell.
    pre_i, pre_o, pre_f, pre_c = (em.add(x, r, f"pre_{k}") for x, r, k in zip(x_t, hr, "iofc"))

    def peephole(pre_gate: str, k: int, cell: str, tag: str) -> str:
        if dr.peepholes is None:
            return pre_gate
        return em.add(pre_gate, em.binary("Mul", dr.peepholes[k], cell, f"{tag}_peephole"), f"{tag}_peeped")

    input_gate = _activate(em, layer, f, peephole(pre_i, 0, c, "i"), "input_gate")
    if layer.node.attr("input_forget", 0):
        forget_gate = em.binary("Sub", em.scalar(1, layer.dtype), input_gate, "forget_gate")
    else:
        forget_gate = _activate(em, layer, f, peephole(pre_f, 2, c, "f"), "forget_gate")
    cell_input = _activate(em, layer, g, pre_c, "cell_input")
    new_c = em.add(
        em.binary("Mul", forget_gate, c, "kept_cell"),
        em.binary("Mul", input_gate, cell_input, "new_cell"),
        "cell",
    )
    output_gate = _activate(em, layer, f, peephole(pre_o, 1, new_c, "o"), "output_gate")
    # h's activation reads the cell state unclipped, as the kernel and onnxruntime do.
    new_h = em.binary(
        "Mul", output_gate, _activate(em, layer, h_act, new_c, "cell_act", clipped=False), "hidden"
    )
    return new_h, new_c


_STEPS = {"RNN": _rnn_step, "GRU": _gru_step, "LSTM": _lstm_step}


# -- outputs -------------------------------------------------------------------------------------


def _emit_outputs(
    em: NodeBuilder,
    layer: _Layer,
    outputs: list[str],
    per_step: list[list[str]],
    finals: list[tuple[str, ...]],
) -> None:
    """Y [T, D, B, H] (layout 1: [B, T, D, H]) and the final states [D, B, H] (layout 1: [B, D, H])."""
    directions = range(len(layer.reverse))
    if outputs[0]:
        pieces = [per_step[d][t] for t in range(layer.seq_len) for d in directions]
        _stack(em, layer, pieces, outputs[0], "y")
    for k, name in enumerate(outputs[1:]):
        if name:
            _stack(em, layer, [finals[d][k] for d in directions], name, f"y_{'hc'[k]}")


def _stack(em: NodeBuilder, layer: _Layer, pieces: list[str], out: str, tag: str) -> None:
    """Stack [B, H] pieces in order along the non-batch axes of `out` and bind the result to it.

    Seq-major: the pieces are consecutive row blocks. Batch-major: each is a column of [B, n, H].
    """
    batch, hidden = layer.state_shape()
    if layer.batch_major:
        columns = [em.reshape(p, (batch, 1, hidden), f"{tag}_column") for p in pieces]
        stacked = em.concat(columns, 1, tag)
    else:
        stacked = em.concat(pieces, 0, tag)
    shaped = em.reshape(stacked, em.shape(out), f"{tag}_out")
    em.bind_output(em.cast(shaped, em.dtype(out), f"{tag}_cast"), out)
