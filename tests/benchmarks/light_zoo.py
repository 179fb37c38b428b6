"""onnx's light zoo models for the benches, with seeded weights in place of the one value they ship.

Exports and rewrites are cached under /tmp, each built once and renamed into place.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

CACHE = Path("/tmp")
LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


def cached(file: str, build: Callable[[Path], Path]) -> Path:
    """`file` under CACHE, built once; written under another name and renamed, never half-written."""
    path = CACHE / file
    if not path.exists():
        part = CACHE / f"{file}.{os.getpid()}.part"
        os.replace(build(part), path)
    return path


def seeded_weights(light: Path) -> Path:
    """The light model with seeded random weights. It ships each weight as a ConstantOfShape (one
    value repeated), so every weight tile would be identical and share one SRAM slot, and every weight
    load would read one slice: a bottleneck no trained model has. Weights of rank >= 2 are zero-mean
    with variance 1 / fan-in, so activations stay finite (all-positive weights overflowed fp32 in
    SqueezeNet); vectors (biases, batch-norm parameters) are in [0.5, 1), so variances are > 0."""

    def build(path: Path) -> Path:
        model = onnx.load(str(light))
        graph, rng = model.graph, np.random.default_rng(0)
        shapes = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        kept = []
        for node in graph.node:
            if node.op_type != "ConstantOfShape" or node.input[0] not in shapes:
                kept.append(node)
                continue
            value = next((numpy_helper.to_array(a.t) for a in node.attribute if a.name == "value"), None)
            dtype = np.float32 if value is None else value.dtype
            shape = shapes[node.input[0]].astype(np.int64)
            if len(shape) >= 2:
                bound = np.sqrt(3.0 / np.prod(shape[1:]))  # uniform with variance 1 / fan-in
                fresh = rng.uniform(-bound, bound, shape).astype(dtype)
            else:
                fresh = rng.uniform(0.5, 1.0, shape).astype(dtype)
            graph.initializer.append(numpy_helper.from_array(fresh, node.output[0]))
        del graph.node[:]
        graph.node.extend(kept)
        used = {i for n in graph.node for i in n.input}
        inits = [t for t in graph.initializer if t.name in used]
        del graph.initializer[:]
        graph.initializer.extend(inits)
        inputs = [i for i in graph.input if i.name in used]  # drop the removed shapes' inputs
        del graph.input[:]
        graph.input.extend(inputs)
        model.ir_version = max(model.ir_version, 4)  # IR 4+: initializers need not be graph inputs
        onnx.save(model, str(path))
        return path

    return cached(f"lpuc_bench_{light.stem}_fanin.onnx", build)
