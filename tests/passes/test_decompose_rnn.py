"""decompose_rnn: LSTM / GRU / RNN become chip ops, and the compiled program matches onnxruntime.

Every numeric test compiles with host_fallback=False (an op left for the host is an error), so a
passing test proves the recurrent layer runs on the chip.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from functools import partial

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper, numpy_helper

import lpuc
import lpuc.api
from lpuc.errors import UnsupportedError
from lpuc.frontend.importer import import_model
from lpuc.ir.graph import Graph, graph_summary
from lpuc.kernels.interpreter import evaluate_model
from lpuc.passes.decompose_rnn import decompose_rnn
from lpuc.passes.pipeline import PIPELINE, Pass, run_pipeline

RTOL, ATOL = 1e-4, 1e-5
INPUT_NAMES = ("X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P")
GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
DIRECTIONS = {"forward": 1, "reverse": 1, "bidirectional": 2}
CHIP_OPS = {"MatMul", "Add", "Sub", "Mul", "Split", "Slice", "Concat", "Reshape", "Transpose", "Where"}


def _with_decompose(passes: tuple[Pass, ...]) -> tuple[Pass, ...]:
    """The pipeline with decompose_rnn right after the first fold_constants (unless it is in already)."""
    if any(p.run is decompose_rnn for p in passes):
        return passes
    first_fold = next(i for i, p in enumerate(passes) if p.name == "fold_constants")
    return passes[: first_fold + 1] + (Pass("decompose_rnn", decompose_rnn),) + passes[first_fold + 1 :]


@pytest.fixture
def chip(monkeypatch):
    """lpuc.compile with decompose_rnn in the pipeline, fp32, no host fallback."""
    monkeypatch.setattr(lpuc.api, "run_pipeline", partial(run_pipeline, passes=_with_decompose(PIPELINE)))
    return partial(lpuc.compile, precision="fp32", host_fallback=False)


# -- model builders -------------------------------------------------------------------------------


def _recurrent_inputs(
    op: str, seq: int, batch: int, size: int, hidden: int, direction: str, seed: int = 0
) -> dict[str, np.ndarray]:
    """Seq-major X, W, R, B, initial states and (LSTM) peepholes of a recurrent op."""
    rng = np.random.default_rng(seed)
    gates, dirs = GATES[op], DIRECTIONS[direction]

    def normal(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.5).astype(np.float32)

    arrays = {
        "X": normal(seq, batch, size),
        "W": normal(dirs, gates * hidden, size),
        "R": normal(dirs, gates * hidden, hidden),
        "B": normal(dirs, 2 * gates * hidden),
        "initial_h": normal(dirs, batch, hidden),
    }
    if op == "LSTM":
        arrays["initial_c"] = normal(dirs, batch, hidden)
        arrays["P"] = normal(dirs, 3 * hidden)
    return arrays


def _recurrent_model(
    op: str,
    feeds: dict[str, np.ndarray],
    consts: dict[str, np.ndarray],
    outputs: Sequence[str],
    opset: int = 21,
    **attrs,
) -> onnx.ModelProto:
    """One recurrent node; `feeds` become graph inputs, `consts` initializers, other inputs are absent.

    `outputs` are the node's output names ("" for none); the non-empty ones are the graph outputs.
    """
    names = [n if n in feeds or n in consts else "" for n in INPUT_NAMES[: 8 if op == "LSTM" else 6]]
    while names and not names[-1]:
        names.pop()
    node = helper.make_node(op, names, list(outputs), name=f"{op.lower()}_node", **attrs)
    shapes = _output_shapes({**consts, **feeds}, attrs.get("layout", 0))
    graph = helper.make_graph(
        [node],
        f"{op.lower()}_graph",
        [helper.make_tensor_value_info(n, _elem_type(a), a.shape) for n, a in feeds.items()],
        [helper.make_tensor_value_info(n, _elem_type(feeds["X"]), s) for n, s in zip(outputs, shapes) if n],
        [numpy_helper.from_array(a, n) for n, a in consts.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model)
    return model


def _output_shapes(arrays: dict[str, np.ndarray], layout: int) -> list[list[int]]:
    """Shapes of Y and of the final states."""
    dirs, hidden = arrays["W"].shape[0], arrays["R"].shape[-1]
    if layout:
        batch, seq = arrays["X"].shape[:2]
        return [[batch, seq, dirs, hidden]] + [[batch, dirs, hidden]] * 2
    seq, batch = arrays["X"].shape[:2]
    return [[seq, dirs, batch, hidden]] + [[dirs, batch, hidden]] * 2


def _elem_type(array: np.ndarray) -> int:
    return helper.np_dtype_to_tensor_dtype(array.dtype)


def _split(arrays: dict[str, np.ndarray], fed: Sequence[str]) -> tuple[dict, dict]:
    """(graph inputs, initializers): the names in `fed` become inputs."""
    feeds = {n: a for n, a in arrays.items() if n in fed}
    consts = {n: a for n, a in arrays.items() if n not in fed}
    return feeds, consts


def _outputs(op: str) -> tuple[str, ...]:
    return ("Y", "Y_h", "Y_c") if op == "LSTM" else ("Y", "Y_h")


def _onnxruntime(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds)))


def _assert_matches(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert sorted(got) == sorted(want)
    for name, expected in want.items():
        assert got[name].shape == expected.shape, name
        np.testing.assert_allclose(got[name], expected, rtol=RTOL, atol=ATOL, err_msg=name)


def _check_against_onnxruntime(compile_chip, model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> None:
    program = compile_chip(model)
    _assert_matches(program.run(feeds), _onnxruntime(model, feeds))


def _decomposed(model: onnx.ModelProto) -> Graph:
    return decompose_rnn(import_model(model, "test"))


# -- IR changes --------------------------------------------------------------------------------------


def _lstm_model(seq=3, fed=("X",), outputs=("Y", "Y_h", "Y_c"), extra=None, **attrs) -> onnx.ModelProto:
    """A forward LSTM with constant W, R, B and no initial states (plus `extra` inputs)."""
    arrays = _recurrent_inputs("LSTM", seq=seq, batch=2, size=3, hidden=4, direction="forward")
    del arrays["initial_h"], arrays["initial_c"], arrays["P"]
    arrays.update(extra or {})
    return _recurrent_model("LSTM", *_split(arrays, fed), outputs, hidden_size=4, **attrs)


def test_lstm_becomes_one_projection_and_one_recurrent_matmul_per_step():
    graph = _decomposed(_lstm_model(seq=3))
    ops = graph_summary(graph)
    assert "LSTM" not in ops
    assert set(ops) <= CHIP_OPS | {"Sigmoid", "Tanh"}
    matmuls = [n for n in graph.nodes if n.op == "MatMul"]
    # The projection of all 3 steps, then one per step after the first (a zero h0 folds away).
    assert len(matmuls) == 3
    assert graph.values[matmuls[0].inputs[0]].shape == (3 * 2, 3)
    assert graph.values[matmuls[0].inputs[1]].shape == (3, 4 * 4)
    assert all(graph.values[m.inputs[0]].shape == (2, 4) for m in matmuls[1:])


def test_steps_are_cut_by_splits_that_stream_each_value_once():
    graph = _decomposed(_lstm_model(seq=3))
    ops = graph_summary(graph)
    assert "Slice" not in ops
    # Gate columns of the projection, each gate into its 3 steps, the recurrent gates of steps 1 and 2.
    assert ops["Split"] == 1 + 4 + 2
    consumers = graph.consumers()
    projection = next(n for n in graph.nodes if n.op == "MatMul").outputs[0]
    (bias,) = consumers[projection]
    assert bias.op == "Add"
    assert [n.op for n in consumers[bias.outputs[0]]] == ["Split"]


def test_constant_weights_fold_into_transposed_constants():
    graph = _decomposed(_lstm_model())
    assert "Transpose" not in graph_summary(graph)
    matmuls = [n for n in graph.nodes if n.op == "MatMul"]
    assert all(graph.is_const(m.inputs[1]) for m in matmuls)
    # The projection's bias is one constant: Wb + Rb.
    (bias_add,) = [n for n in graph.nodes if n.op == "Add" and matmuls[0].outputs[0] in n.inputs]
    assert graph.values[bias_add.inputs[1]].shape == (16,)


def test_runtime_weights_are_transposed_on_the_chip():
    graph = _decomposed(_lstm_model(fed=("X", "W", "R", "B")))
    assert graph_summary(graph)["Transpose"] == 2  # W for all directions, R of the one direction


def test_node_names_are_derived_and_deterministic():
    first, second = _decomposed(_lstm_model()), _decomposed(_lstm_model())
    names = [n.name for n in first.nodes]
    assert names == [n.name for n in second.nodes]
    assert len(set(names)) == len(names)
    assert all(name.startswith("lstm_node/") for name in names)
    assert "lstm_node/d0/t2/hidden" in names


def test_only_used_outputs_are_built():
    graph = _decomposed(_lstm_model(outputs=("Y", "Y_h", "Y_c")))
    assert graph_summary(graph)["Concat"] == 1  # Y; the one-direction final states are reshapes
    graph = _decomposed(_lstm_model(outputs=("", "Y_h")))
    assert "Concat" not in graph_summary(graph)
    assert graph.outputs == ["Y_h"]
    assert "Y" not in graph.values and "Y_c" not in graph.values


def test_constant_sequence_lens_of_full_length_need_no_mask():
    model = _lstm_model(extra={"sequence_lens": np.array([3, 3], np.int32)})
    assert "Where" not in graph_summary(_decomposed(model))


def test_runtime_sequence_lens_mask_every_step():
    arrays = _recurrent_inputs("GRU", seq=3, batch=2, size=3, hidden=4, direction="forward")
    arrays["sequence_lens"] = np.array([3, 1], np.int32)
    model = _recurrent_model("GRU", *_split(arrays, ("X", "sequence_lens")), ("Y", "Y_h"), hidden_size=4)
    ops = graph_summary(_decomposed(model))
    assert ops["Greater"] == 3
    assert ops["Where"] == 3 * 2  # the state and the output of each step


@pytest.mark.parametrize(
    ("activations", "message"),
    [
        (["Sigmoid", "Gelu", "Tanh"], "unsupported activation 'Gelu'"),
        (["Sigmoid", "Tanh"], "expected 3 activations, got 2"),
    ],
)
def test_unsupported_activations_name_the_node(activations, message):
    with pytest.raises(UnsupportedError, match=f"LSTM node 'lstm_node': {message}"):
        _decomposed(_lstm_model(activations=activations))


# -- numerics: torch-exported layers ---------------------------------------------------------------


class _Recurrent(torch.nn.Module):
    def __init__(self, kind: str, layers: int, bidirectional: bool, batch_first: bool, **options):
        super().__init__()
        module = getattr(torch.nn, kind)
        self.layer = module(
            5, 6, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first, **options
        )

    def forward(self, x: torch.Tensor):
        y, state = self.layer(x)
        return (y, *state) if isinstance(state, tuple) else (y, state)


def _export(module: torch.nn.Module, x: np.ndarray, seed: int = 0) -> onnx.ModelProto:
    torch.manual_seed(seed)
    for p in module.parameters():
        with torch.no_grad():
            p.copy_(torch.randn(p.shape) * 0.4)
    module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        buffer = io.BytesIO()
        torch.onnx.export(module, (torch.from_numpy(x),), buffer, input_names=["x"], dynamo=False)
    return onnx.load_from_string(buffer.getvalue())


TORCH_CASES = [
    # (layers, bidirectional, batch_first)
    (1, False, False),
    (1, True, True),
    (2, True, False),
    (2, False, True),
]


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize(("layers", "bidirectional", "batch_first"), TORCH_CASES)
def test_torch_layers_match_onnxruntime(chip, kind, layers, bidirectional, batch_first):
    shape = (3, 5, 5) if batch_first else (5, 3, 5)
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    model = _export(_Recurrent(kind, layers, bidirectional, batch_first), x)
    _check_against_onnxruntime(chip, model, {"x": x})


def test_torch_relu_rnn_matches_onnxruntime(chip):
    x = np.random.default_rng(2).standard_normal((4, 2, 5)).astype(np.float32)
    model = _export(_Recurrent("RNN", 2, True, False, nonlinearity="relu"), x)
    _check_against_onnxruntime(chip, model, {"x": x})


# -- numerics: hand-built models for what torch does not emit --------------------------------------


@pytest.mark.parametrize("direction", list(DIRECTIONS))
def test_lstm_peepholes_clip_and_initial_states(chip, direction):
    arrays = _recurrent_inputs("LSTM", seq=4, batch=3, size=3, hidden=5, direction=direction)
    feeds, consts = _split(arrays, ("X", "initial_h", "initial_c"))
    model = _recurrent_model(
        "LSTM", feeds, consts, _outputs("LSTM"), hidden_size=5, direction=direction, clip=0.6
    )
    _check_against_onnxruntime(chip, model, feeds)


def test_lstm_input_forget_and_activations_per_direction(chip):
    arrays = _recurrent_inputs("LSTM", seq=4, batch=2, size=3, hidden=5, direction="bidirectional", seed=1)
    feeds, consts = _split(arrays, ("X",))
    model = _recurrent_model(
        "LSTM",
        feeds,
        consts,
        _outputs("LSTM"),
        hidden_size=5,
        direction="bidirectional",
        clip=0.9,
        input_forget=1,
        activations=["HardSigmoid", "Tanh", "Softsign", "Sigmoid", "LeakyRelu", "ScaledTanh"],
        activation_alpha=[0.3, 0.05, 1.5],
        activation_beta=[0.4, 0.7],
    )
    _check_against_onnxruntime(chip, model, feeds)


@pytest.mark.parametrize("direction", list(DIRECTIONS))
@pytest.mark.parametrize("linear_before_reset", [0, 1])
def test_gru_linear_before_reset_and_initial_state(chip, direction, linear_before_reset):
    arrays = _recurrent_inputs("GRU", seq=5, batch=3, size=3, hidden=4, direction=direction, seed=2)
    feeds, consts = _split(arrays, ("X", "initial_h"))
    model = _recurrent_model(
        "GRU",
        feeds,
        consts,
        _outputs("GRU"),
        hidden_size=4,
        direction=direction,
        linear_before_reset=linear_before_reset,
    )
    _check_against_onnxruntime(chip, model, feeds)


def test_gru_clip_and_activations(chip):
    arrays = _recurrent_inputs("GRU", seq=4, batch=2, size=3, hidden=4, direction="bidirectional", seed=3)
    feeds, consts = _split(arrays, ("X",))
    model = _recurrent_model(
        "GRU",
        feeds,
        consts,
        _outputs("GRU"),
        hidden_size=4,
        direction="bidirectional",
        clip=0.5,
        activations=["HardSigmoid", "Softsign", "Sigmoid", "Elu"],
        activation_alpha=[0.25, 0.8],
        activation_beta=[0.45],
    )
    _check_against_onnxruntime(chip, model, feeds)


ACTIVATIONS = [
    ("Relu", None, None),
    ("Tanh", None, None),
    ("Sigmoid", None, None),
    ("Affine", 0.7, -0.2),
    ("LeakyRelu", 0.2, None),
    ("LeakyRelu", None, None),  # the default alpha
    ("ThresholdedRelu", 0.3, None),
    ("ScaledTanh", 1.3, 0.6),
    ("HardSigmoid", 0.3, 0.4),
    ("HardSigmoid", None, None),  # the default alpha and beta
    ("Elu", 0.9, None),
    ("Softsign", None, None),
    ("Softplus", None, None),
]


@pytest.mark.parametrize(("activation", "alpha", "beta"), ACTIVATIONS)
def test_rnn_activation(chip, activation, alpha, beta):
    arrays = _recurrent_inputs("RNN", seq=4, batch=2, size=3, hidden=4, direction="forward", seed=4)
    feeds, consts = _split(arrays, ("X",))
    params = {"activation_alpha": [alpha]} if alpha is not None else {}
    params.update({"activation_beta": [beta]} if beta is not None else {})
    model = _recurrent_model(
        "RNN", feeds, consts, _outputs("RNN"), hidden_size=4, activations=[activation], **params
    )
    _check_against_onnxruntime(chip, model, feeds)


def test_rnn_clip_reverse(chip):
    arrays = _recurrent_inputs("RNN", seq=4, batch=2, size=3, hidden=4, direction="reverse", seed=5)
    feeds, consts = _split(arrays, ("X", "initial_h"))
    model = _recurrent_model(
        "RNN", feeds, consts, _outputs("RNN"), hidden_size=4, direction="reverse", clip=0.4
    )
    _check_against_onnxruntime(chip, model, feeds)


def _batch_major(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Layout 1 versions of seq-major inputs: X [B, T, I], initial states [B, D, H]."""
    swapped = {"X": (1, 0, 2), "initial_h": (1, 0, 2), "initial_c": (1, 0, 2)}
    return {
        n: np.ascontiguousarray(a.transpose(swapped[n])) if n in swapped else a for n, a in arrays.items()
    }


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_batch_major_layout(chip, op):
    """onnxruntime has no layout=1: compare with its seq-major result on transposed tensors."""
    arrays = _recurrent_inputs(op, seq=4, batch=3, size=3, hidden=4, direction="bidirectional", seed=6)
    arrays["sequence_lens"] = np.array([4, 2, 3], np.int32)
    fed = ("X", "initial_h", "initial_c")
    attrs = {"hidden_size": 4, "direction": "bidirectional", "clip": 1.5}
    seq_major = _recurrent_model(op, *_split(arrays, fed), _outputs(op), **attrs)
    feeds, consts = _split(_batch_major(arrays), fed)
    batch_major = _recurrent_model(op, feeds, consts, _outputs(op), layout=1, **attrs)
    want = _onnxruntime(seq_major, _split(arrays, fed)[0])
    want = {"Y": want["Y"].transpose(2, 0, 1, 3)} | {
        n: a.transpose(1, 0, 2) for n, a in want.items() if n != "Y"
    }
    _assert_matches(chip(batch_major).run(feeds), want)


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("lens_at", ["constant", "runtime"])
def test_sequence_lens(chip, op, lens_at):
    arrays = _recurrent_inputs(op, seq=5, batch=4, size=3, hidden=4, direction="bidirectional", seed=7)
    arrays["sequence_lens"] = np.array([5, 1, 3, 4], np.int32)
    fed = ("X", "initial_h") + (("sequence_lens",) if lens_at == "runtime" else ())
    feeds, consts = _split(arrays, fed)
    model = _recurrent_model(op, feeds, consts, _outputs(op), hidden_size=4, direction="bidirectional")
    _check_against_onnxruntime(chip, model, feeds)


@pytest.mark.parametrize(
    ("op", "attrs"), [("LSTM", {}), ("GRU", {"linear_before_reset": 1}), ("GRU", {}), ("RNN", {})]
)
def test_runtime_weights(chip, op, attrs):
    """W, R, B (and P) as graph inputs: transposes, slices and bias sums run on the chip."""
    arrays = _recurrent_inputs(op, seq=3, batch=2, size=3, hidden=4, direction="bidirectional", seed=8)
    feeds, consts = _split(arrays, ("X", "W", "R", "B", "P"))
    model = _recurrent_model(
        op, feeds, consts, _outputs(op), hidden_size=4, direction="bidirectional", **attrs
    )
    _check_against_onnxruntime(chip, model, feeds)


def test_only_final_state_used(chip):
    arrays = _recurrent_inputs("LSTM", seq=4, batch=2, size=3, hidden=4, direction="bidirectional", seed=9)
    feeds, consts = _split(arrays, ("X",))
    model = _recurrent_model("LSTM", feeds, consts, ("", "", "Y_c"), hidden_size=4, direction="bidirectional")
    _check_against_onnxruntime(chip, model, feeds)


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_opset_7_model(chip, op):
    arrays = _recurrent_inputs(op, seq=3, batch=2, size=3, hidden=4, direction="bidirectional", seed=10)
    feeds, consts = _split(arrays, ("X",))
    model = _recurrent_model(
        op, feeds, consts, _outputs(op), opset=7, hidden_size=4, direction="bidirectional"
    )
    _check_against_onnxruntime(chip, model, feeds)


def test_float16_computes_in_float32_like_the_kernel(chip):
    """onnxruntime's CPU LSTM has no float16: the reference is the kernel, which computes in float32."""
    arrays = _recurrent_inputs("LSTM", seq=3, batch=2, size=3, hidden=4, direction="bidirectional", seed=11)
    arrays = {n: a.astype(np.float16) for n, a in arrays.items()}
    feeds, consts = _split(arrays, ("X", "initial_h"))
    model = _recurrent_model(
        "LSTM", feeds, consts, _outputs("LSTM"), hidden_size=4, direction="bidirectional"
    )
    want = dict(zip(_outputs("LSTM"), evaluate_model(model, feeds)))
    got = chip(model).run(feeds)
    assert all(a.dtype == np.float16 for a in got.values())
    _assert_matches(got, want)
