"""The nine light zoo models with seeded random weights, lpuc (fp32) against onnxruntime.

The shipped light models build every weight with ConstantOfShape (one constant value), so each
output is the same for every class and tells little. Here every float weight becomes a seeded
random tensor scaled by its role (He-normal by fan-in for Conv/Gemm weights, positive BatchNorm
variances with scales that keep the activations' scale, the last layer scaled to logits of std 2),
the logits (the Softmax input) become an extra output, and both lpuc and onnxruntime run the
modified model. The outputs must also vary, across classes and across inputs.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import lpuc
from lpuc.target import Target, load_target, target_from_dict
from tests.kernels.oracle import run_onnxruntime
from tests.test_light_zoo import DATA

FAST = ["squeezenet", "shufflenet"]
SLOW = ["bvlc_alexnet", "zfnet512", "vgg19", "resnet50", "inception_v1", "inception_v2", "densenet121"]
# SRAM multiples of tsp-v1 for models whose random (not deduplicable) fp32 constants do not fit it:
# the numerics are the point here. inception_v2 and densenet121 hold ~43 / ~32 MB of weights but need
# 442 MiB / 1.7 GiB: legalize_broadcast materializes per-channel scales at activation size and narrow
# rows pad to the lane width.
SRAM_SCALE = {"bvlc_alexnet": 2, "zfnet512": 2, "vgg19": 4, "inception_v2": 4, "densenet121": 10}
# Ops a weight passes through unchanged on its way to the op that gives it its role.
_PASS_THROUGH = {"Unsqueeze", "Reshape", "Identity", "Squeeze"}


def _consumers(graph: onnx.GraphProto) -> dict[str, list[tuple[onnx.NodeProto, int]]]:
    out: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in graph.node:
        for k, name in enumerate(node.input):
            out.setdefault(name, []).append((node, k))
    return out


def _role(name: str, consumers: dict) -> tuple[str, int, onnx.NodeProto | None]:
    """The op (and input index) that uses tensor `name`, looking through pass-through ops."""
    uses = consumers.get(name, [])
    if not uses:
        return "", -1, None
    node, k = uses[0]
    if node.op_type in _PASS_THROUGH and k == 0:
        return _role(node.output[0], consumers)
    return node.op_type, k, node


def _random_weight(
    rng: np.random.Generator, shape: tuple[int, ...], role: tuple[str, int, onnx.NodeProto | None]
) -> np.ndarray:
    """A random weight for its role. Scales are near 1 with a mean square of ~1: over a hundred
    layers any gain above 1 compounds to overflow."""
    op, k, node = role
    if op == "Conv" and k == 1:
        fan_in = int(np.prod(shape[1:]))
    elif op == "Gemm" and k == 1:
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        fan_in = shape[1] if trans_b else shape[0]
    elif op == "BatchNormalization" and k == 4:
        return rng.uniform(0.5, 1.5, shape).astype(np.float32)  # variances (scales: _balance)
    elif op == "Mul":
        return rng.uniform(0.8, 1.2, shape).astype(np.float32)  # scale layers
    else:
        return (0.1 * rng.standard_normal(shape)).astype(np.float32)  # biases and means
    # He-normal: keeps the mean square of activations through ReLU layers.
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)


def _initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {i.name: i for i in model.graph.initializer}


def _set(init: onnx.TensorProto, value: np.ndarray) -> None:
    init.CopyFrom(numpy_helper.from_array(value.astype(np.float32), init.name))


def _randomize(model: onnx.ModelProto, rng: np.random.Generator) -> None:
    """Every ConstantOfShape weight and float initializer becomes a random initializer."""
    graph = model.graph
    consumers = _consumers(graph)
    inits = _initializers(model)
    new_weights, kept_nodes = [], []
    for node in graph.node:
        if node.op_type == "ConstantOfShape" and node.input[0] in inits:
            shape = tuple(int(d) for d in numpy_helper.to_array(inits[node.input[0]]))
            weight = _random_weight(rng, shape, _role(node.output[0], consumers))
            new_weights.append(numpy_helper.from_array(weight, node.output[0]))
        else:
            kept_nodes.append(node)
    for init in graph.initializer:
        if init.data_type == onnx.TensorProto.FLOAT:
            _set(init, _random_weight(rng, tuple(init.dims), _role(init.name, consumers)))
    del graph.node[:]
    graph.node.extend(kept_nodes)
    graph.initializer.extend(new_weights)
    # These models are IR version 3, where every initializer is also a graph input.
    graph.input.extend(
        helper.make_tensor_value_info(w.name, onnx.TensorProto.FLOAT, list(w.dims)) for w in new_weights
    )
    # The ConstantOfShape shapes are unused now (onnxruntime warns about each one).
    used = {name for node in graph.node for name in node.input}
    unused = {i.name for i in graph.initializer if i.name not in used}
    kept_inits = [i for i in graph.initializer if i.name not in unused]
    kept_inputs = [i for i in graph.input if i.name not in unused]
    del graph.initializer[:], graph.input[:]
    graph.initializer.extend(kept_inits)
    graph.input.extend(kept_inputs)


def _with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of `model` whose outputs are the intermediate tensors `names` (typed by inference)."""
    inferred = {v.name: v for v in onnx.shape_inference.infer_shapes(model).graph.value_info}
    inferred.update({v.name: v for v in model.graph.output})
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.extend(inferred[n] for n in names)
    return probe


def _balance_batchnorm(model: onnx.ModelProto, rng: np.random.Generator) -> None:
    """BatchNorm scales of sqrt(var + eps) times ~1: each layer keeps its input's scale (random
    statistics do not match the activations, so BatchNorm does not renormalize them)."""
    inits = _initializers(model)
    for bn in (n for n in model.graph.node if n.op_type == "BatchNormalization"):
        eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        var = numpy_helper.to_array(inits[bn.input[4]])
        _set(inits[bn.input[1]], np.sqrt(var + eps) * rng.uniform(0.8, 1.2, var.shape))


def _scale_logits(model: onnx.ModelProto, logits: str, feeds: dict, target_std: float = 2.0) -> None:
    """Scale the last Conv/Gemm so the logits have std `target_std` (what follows it is
    positively homogeneous: ReLU, pooling, reshapes), so that softmax is neither flat nor one-hot."""
    producers = {o: n for n in model.graph.node for o in n.output}
    inits = _initializers(model)
    node = producers[logits]
    while node.op_type not in ("Conv", "Gemm"):
        node = producers[node.input[0]]
    (value,) = run_onnxruntime(_with_outputs(model, [logits]), feeds)
    factor = target_std / float(np.std(value))
    for name in node.input[1:3]:
        while name not in inits:  # a weight reshaped on its way in
            name = producers[name].input[0]
        _set(inits[name], numpy_helper.to_array(inits[name]) * factor)


def seeded_model(name: str, seed: int = 0) -> onnx.ModelProto:
    """The light model `name` with random weights; its logits (the Softmax input) an extra output."""
    model = onnx.load(str(DATA / "light" / f"light_{name}.onnx"), load_external_data=False)
    rng = np.random.default_rng(seed)
    _randomize(model, rng)
    softmax = next((n for n in model.graph.node if n.op_type == "Softmax"), None)
    logits = softmax.input[0] if softmax else model.graph.output[0].name
    if softmax:
        model.graph.output.extend(_with_outputs(model, [logits]).graph.output)
    _balance_batchnorm(model, rng)
    _scale_logits(model, logits, _input(model, seed=99))
    onnx.checker.check_model(model)
    return model


def _input(model: onnx.ModelProto, seed: int) -> dict[str, np.ndarray]:
    """A smooth random image (8x8 blocks of 28x28 pixels): white noise averages out in the global
    pools, so every input would give nearly the same output."""
    inits = {i.name for i in model.graph.initializer}
    (x,) = [i for i in model.graph.input if i.name not in inits]
    n, c, h, w = (d.dim_value for d in x.type.tensor_type.shape.dim)
    coarse = np.random.default_rng(100 + seed).standard_normal((n, c, 8, 8))
    image = np.repeat(np.repeat(coarse, h // 8, axis=2), w // 8, axis=3)
    return {x.name: image.astype(np.float32)}


def _target(name: str) -> Target | str:
    scale = SRAM_SCALE.get(name, 1)
    if scale == 1:
        return "tsp-v1"
    raw = load_target("tsp-v1").as_dict()
    raw["name"] = f"tsp-v1-sram-x{scale}"
    raw["mem"]["addresses_per_slice"] *= scale
    return target_from_dict(raw)


def _check(name: str) -> None:
    model = seeded_model(name)
    program = lpuc.compile(model, target=_target(name), precision="fp32", host_fallback=False)
    names = [o.name for o in model.graph.output]
    results = []
    for seed in (0, 1):
        feeds = _input(model, seed)
        got = program.run(feeds)
        want = run_onnxruntime(model, feeds)
        for out, expected in zip(names, want, strict=True):
            # atol relative to the output's scale: softmax probabilities are ~1e-3 each.
            atol = 1e-4 * float(np.max(np.abs(expected)))
            np.testing.assert_allclose(got[out], expected, rtol=1e-3, atol=atol, err_msg=f"{name}: {out}")
        results.append(want)
    first, second = results
    logits = first[-1]  # the logits are the last output (the only one without a Softmax)
    # Random weights make classes differ (constant weights gave equal logits for all classes)...
    assert np.std(logits) > 0.1 * np.max(np.abs(logits)), f"{name}: logits barely vary"
    # ...and outputs depend on the input.
    change = np.max(np.abs(first[0] - second[0]))
    assert change > 0.01 * np.max(np.abs(first[0])), f"{name}: output ignores its input"


@pytest.mark.parametrize("name", FAST)
def test_seeded_light_model(name):
    _check(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW)
def test_seeded_light_model_slow(name):
    _check(name)
