"""Calibration inputs for int8 builds: samples from an .npz file, or seeded random-normal ones.

The file is keyed by input name; each array holds one sample with the input's shape, or several
stacked along a new leading axis. Without a file, RANDOM_SAMPLES seeded standard-normal samples
are drawn (integer and bool inputs get ones, as example inputs do); `describe` says which was used,
so the build's summary records it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lpuc.errors import LpucError
from lpuc.ir.graph import Graph

RANDOM_SAMPLES = 4
RANDOM_SEED = 0


@dataclass(frozen=True)
class Calibration:
    """Arrays read from a calibration file (None: seeded random-normal samples) and its name."""

    arrays: Mapping[str, np.ndarray] | None = field(default=None, compare=False, repr=False)
    source: str = ""  # what the summary records: the file's name (not its directory: reproducible)
    path: str = ""  # what errors name


def load_calibration(path: str | os.PathLike) -> Calibration:
    """Read an .npz of calibration inputs (allow_pickle=False); a one-line error if it cannot be."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if not hasattr(data, "files"):
                raise ValueError("not an .npz archive")
            arrays = {k: np.asarray(data[k]) for k in sorted(data.files)}
    except (OSError, ValueError, EOFError) as e:
        raise LpucError(f"{path}: cannot read calibration inputs ({e})") from None
    return Calibration(arrays, Path(path).name, str(path))


def sample_count(calibration: Calibration, graph: Graph) -> int:
    """How many samples `samples` yields; checks the file against the graph's inputs first."""
    if calibration.arrays is None:
        return RANDOM_SAMPLES
    counts = {name: _stacked(calibration, graph, name).shape[0] for name in _runtime_inputs(graph)}
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"{k}: {v}" for k, v in counts.items())
        raise LpucError(f"{calibration.path}: inputs have different sample counts ({listed})")
    return next(iter(counts.values()), 1)


def describe(calibration: Calibration, graph: Graph) -> str:
    """What the summary records: `calib.npz (16 samples)` or `random-normal (4 samples, seed 0)`."""
    count = sample_count(calibration, graph)
    plural = "s" if count != 1 else ""
    if calibration.arrays is None:
        return f"random-normal ({count} sample{plural}, seed {RANDOM_SEED})"
    return f"{calibration.source} ({count} sample{plural})"


def samples(calibration: Calibration, graph: Graph) -> Iterator[dict[str, np.ndarray]]:
    """One feed dict per sample, every runtime input of `graph` with its compiled shape and dtype."""
    names = _runtime_inputs(graph)
    if calibration.arrays is None:
        rng = np.random.default_rng(RANDOM_SEED)
        for _ in range(RANDOM_SAMPLES):
            feeds = {}
            for name in names:
                v = graph.values[name]
                if v.dtype.kind == "f":
                    feeds[name] = rng.standard_normal(v.shape).astype(v.dtype)
                else:
                    feeds[name] = np.ones(v.shape, dtype=v.dtype)
            yield feeds
        return
    stacked = {name: _stacked(calibration, graph, name) for name in names}
    for i in range(sample_count(calibration, graph)):
        yield {name: array[i] for name, array in stacked.items()}


def _runtime_inputs(graph: Graph) -> list[str]:
    return [n for n in graph.inputs if not graph.values[n].is_const]


def _stacked(calibration: Calibration, graph: Graph, name: str) -> np.ndarray:
    """The file's samples of input `name` as [S, *shape] in the input's dtype."""
    arrays = calibration.arrays or {}
    v = graph.values[name]
    if name not in arrays:
        have = ", ".join(arrays) or "nothing"
        raise LpucError(f"{calibration.path}: no calibration samples for input '{name}' (has {have})")
    array = arrays[name]
    if tuple(array.shape) == tuple(v.shape):
        array = array[None]
    if tuple(array.shape[1:]) != tuple(v.shape) or array.shape[0] == 0:
        raise LpucError(
            f"{calibration.path}: input '{name}' has shape {list(array.shape)}; expected "
            f"{list(v.shape)} or [samples, {', '.join(map(str, v.shape))}]"
        )
    if (array.dtype.kind == "f") != (v.dtype.kind == "f"):
        raise LpucError(f"{calibration.path}: input '{name}' is {array.dtype}, the model's is {v.dtype}")
    return array.astype(v.dtype, copy=False)
