"""Hugging Face model directories (config.json + weights) -> ONNX, offline.

The model is loaded with transformers `from_pretrained(dir, local_files_only=True)` (the class named
in config.json's `architectures`, else AutoModel), in eval mode with the eager attention
implementation (plain MatMul/Softmax, no data-dependent mask shortcuts) and without a KV cache, and
exported by lpuc.frontend.torch_export with the example inputs its main input needs: token ids
(+ attention mask) for text models, pixel values for vision models.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx

from lpuc.errors import LpucError
from lpuc.frontend.torch_export import _describe, _import_torch, export_module

DEFAULT_BATCH = 1
DEFAULT_SEQ_LEN = 128


def is_hf_dir(path: str | os.PathLike) -> bool:
    """A directory holding a Hugging Face config.json."""
    return Path(path).is_dir() and (Path(path) / "config.json").is_file()


def export_hf_dir(
    directory: str | os.PathLike,
    exporter: str = "torchscript",
    *,
    batch: int | None = None,
    seq_len: int | None = None,
    example_inputs: Any = None,
) -> onnx.ModelProto:
    """Load the model in `directory` and export it; `example_inputs` replaces the default inputs."""
    if example_inputs is not None and (batch is not None or seq_len is not None):
        raise LpucError(f"{directory}: give either example inputs or --batch/--seq-len, not both")
    model = load_hf_model(directory)
    if example_inputs is None:
        example_inputs = default_example_inputs(model, directory, batch, seq_len)
    return export_module(model, example_inputs, exporter=exporter)


def load_hf_model(directory: str | os.PathLike) -> Any:
    """The model in `directory`, in eval mode, ready to export."""
    where = str(directory)
    if not is_hf_dir(directory):
        raise LpucError(f"{where}: not a Hugging Face model directory (no config.json)")
    transformers = _import_transformers()
    with _quiet(transformers):
        return _load(transformers, where)


@contextlib.contextmanager
def _quiet(transformers) -> Iterator[None]:
    """No progress bars or config advice from transformers: lpuc's output stays one line per command."""
    logging = transformers.utils.logging
    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


def _load(transformers, where: str) -> Any:
    try:
        config = transformers.AutoConfig.from_pretrained(where, local_files_only=True)
    except Exception as e:  # noqa: BLE001 - transformers raises many types for a bad config
        raise LpucError(f"{where}: cannot read config.json ({_describe(e)})") from e
    if hasattr(config, "use_cache"):
        config.use_cache = False  # a KV cache is an extra output the exporters cannot flatten
    architectures = getattr(config, "architectures", None) or []
    model_class = getattr(transformers, architectures[0], None) if architectures else None
    if model_class is None:
        model_class = transformers.AutoModel
    try:
        model = model_class.from_pretrained(
            where, config=config, local_files_only=True, attn_implementation="eager"
        )
    except Exception as e:  # noqa: BLE001 - missing weights, unknown model type, ...
        raise LpucError(f"{where}: cannot load {model_class.__name__} ({_describe(e)})") from e
    return model.eval()


def default_example_inputs(
    model: Any, directory: str | os.PathLike, batch: int | None = None, seq_len: int | None = None
) -> dict:
    """Inputs for the model's main input: token ids (+ attention mask) or pixel values.

    The sequence length defaults to 128, or the model's max_position_embeddings if that is shorter.
    """
    import inspect

    torch = _import_torch()
    config = model.config
    longest = getattr(config, "max_position_embeddings", None)
    if seq_len is None:
        seq_len = min(DEFAULT_SEQ_LEN, longest) if isinstance(longest, int) else DEFAULT_SEQ_LEN
    elif isinstance(longest, int) and seq_len > longest:
        raise LpucError(
            f"{directory}: --seq-len {seq_len} exceeds the model's max_position_embeddings {longest}"
        )
    batch = DEFAULT_BATCH if batch is None else batch
    if batch < 1 or seq_len < 1:
        raise LpucError(f"{directory}: --batch and --seq-len must be >= 1")
    main = getattr(model, "main_input_name", "input_ids")
    gen = torch.Generator().manual_seed(0)
    if main == "input_ids":
        vocab = int(getattr(config, "vocab_size", 2) or 2)
        inputs = {"input_ids": torch.randint(0, vocab, (batch, seq_len), generator=gen)}
        if "attention_mask" in inspect.signature(model.forward).parameters:
            inputs["attention_mask"] = torch.ones(batch, seq_len, dtype=torch.int64)
        return inputs
    if main == "pixel_values" and hasattr(config, "image_size"):
        size = config.image_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        channels = int(getattr(config, "num_channels", 3))
        return {"pixel_values": torch.randn(batch, channels, height, width, generator=gen)}
    raise LpucError(
        f"{directory}: {type(model).__name__} takes {main!r}; give its shape with --example-input "
        f"{main}=D0xD1..[:DTYPE]"
    )


def _import_transformers():
    try:
        import transformers
    except ImportError:
        raise LpucError(
            "compiling a Hugging Face model directory needs transformers (pip install 'lpuc[torch]')"
        ) from None
    return transformers
