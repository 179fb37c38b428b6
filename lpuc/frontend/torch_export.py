"""PyTorch frontend: torch.nn.Module -> in-memory ONNX ModelProto, and `pkg.mod:factory` specs.

`export_module` runs torch.onnx.export into a temporary directory and loads the result back with its
external data, so weights written beside the model (> 2 GB, or the dynamo exporter's
`external_data=True`) end up inline in the returned ModelProto. Graph inputs are named after the
parameters of `forward` (input_0.. when it takes *args) and outputs output_0.., whichever exporter
ran. Every failure is a one-line LpucError naming the module class and the exporter.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx

from lpuc.errors import LpucError

if TYPE_CHECKING:
    import torch

EXPORTERS = ("torchscript", "dynamo")

_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


def export_module(module: Any, example_inputs: Any, exporter: str = "torchscript") -> onnx.ModelProto:
    """Export `module` (in eval mode) with `example_inputs` (a tensor or a tuple of tensors) to ONNX.

    `exporter` is "torchscript" (torch.onnx.export with dynamo=False) or "dynamo" (the
    torch.export-based exporter; needs onnxscript). The module's training mode is restored afterwards.
    """
    torch = _import_torch()
    if not isinstance(module, torch.nn.Module):
        raise LpucError(
            f"cannot compile a {type(module).__name__}: expected an .onnx path, an onnx.ModelProto "
            f"or a torch.nn.Module"
        )
    label = type(module).__name__
    _check_exporter(exporter, label)
    args = _example_tuple(example_inputs, label, torch)
    failure = f"cannot export {label} with the {exporter} exporter"
    was_training = module.training
    module.eval()
    try:
        output_count = _count_outputs(module, args, failure, torch)
        input_names = _input_names(module, len(args))
        output_names = [f"output_{i}" for i in range(output_count)]
        model = _export_and_load(module, args, exporter, input_names, output_names, failure, torch)
    finally:
        module.train(was_training)
    model.graph.name = label
    return model


def factory_from_spec(spec: str) -> torch.nn.Module:
    """Import "pkg.module:function" or "path/to/file.py:function" and call the factory with no arguments.

    The current directory (or the file's directory) goes on sys.path first, so a factory next to the
    user's working directory imports like `python -m` would import it.
    """
    torch = _import_torch()
    where, sep, attr = spec.rpartition(":")
    if not sep or not where or not attr:
        raise LpucError(f"{spec}: expected a factory spec pkg.module:function or path/to/file.py:function")
    module = _import_spec_module(spec, where)
    factory = _resolve_attribute(spec, module, attr)
    if not callable(factory):
        raise LpucError(f"{spec}: {attr} is a {type(factory).__name__}, not a callable factory")
    try:
        built = factory()
    except Exception as e:  # noqa: BLE001 - any failure in user code becomes a one-line error
        raise LpucError(f"{spec}: the factory raised {_describe(e)}") from e
    if not isinstance(built, torch.nn.Module):
        raise LpucError(f"{spec}: the factory returned a {type(built).__name__}, not a torch.nn.Module")
    return built


# -- export ---------------------------------------------------------------------------------------
def _import_torch():
    try:
        import torch
    except ImportError:
        raise LpucError("the PyTorch frontend needs torch (pip install 'lpuc[torch]')") from None
    return torch


def _check_exporter(exporter: str, label: str) -> None:
    if exporter not in EXPORTERS:
        raise LpucError(f"{label}: unknown exporter {exporter!r} (choose {', '.join(EXPORTERS)})")
    if exporter == "dynamo" and importlib.util.find_spec("onnxscript") is None:
        raise LpucError(f"{label}: the dynamo exporter needs onnxscript (pip install onnxscript)")


def _example_tuple(example_inputs: Any, label: str, torch) -> tuple:
    if example_inputs is None or (isinstance(example_inputs, (tuple, list)) and not example_inputs):
        raise LpucError(
            f"{label}: exporting a torch module needs example inputs (example_inputs= in lpuc.compile, "
            f"--example-input on the command line)"
        )
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list)):
        if all(isinstance(t, torch.Tensor) for t in example_inputs):
            return tuple(example_inputs)
    raise LpucError(
        f"{label}: example_inputs must be a tensor or a tuple of tensors "
        f"(got {type(example_inputs).__name__})"
    )


def _count_outputs(module, args: tuple, failure: str, torch) -> int:
    """Run forward once: the exporters need every output named up front."""
    try:
        with torch.no_grad():
            result = module(*args)
    except Exception as e:  # noqa: BLE001 - any failure in user code becomes a one-line error
        raise LpucError(f"{failure}: forward raised {_describe(e)} on the example inputs") from e
    count = len(_tensor_leaves(result, torch))
    if count == 0:
        raise LpucError(f"{failure}: forward returned no tensors")
    return count


def _tensor_leaves(result: Any, torch) -> list:
    """Tensors of a (nested) forward result in the order the exporters flatten them."""
    if isinstance(result, torch.Tensor):
        return [result]
    if isinstance(result, (tuple, list)):
        return [leaf for item in result for leaf in _tensor_leaves(item, torch)]
    if isinstance(result, dict):
        return [leaf for item in result.values() for leaf in _tensor_leaves(item, torch)]
    return []


def _input_names(module, count: int) -> list[str]:
    """forward's positional parameter names when it has enough of them, else input_0.."""
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    try:
        params = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):  # builtins and some wrapped forwards have no signature
        params = []
    names = [p.name for p in params if p.kind in kinds]
    if len(names) >= count:
        return names[:count]
    return [f"input_{i}" for i in range(count)]


def _export_and_load(
    module, args: tuple, exporter: str, input_names: list[str], output_names: list[str], failure: str, torch
) -> onnx.ModelProto:
    options: dict[str, Any] = {"dynamo": exporter == "dynamo"}
    if exporter == "dynamo":
        options.update(verbose=False, external_data=True)
    with tempfile.TemporaryDirectory(prefix="lpuc-export-") as tmp:
        path = Path(tmp) / "model.onnx"
        try:
            with _quiet_exporter():
                torch.onnx.export(
                    module, args, str(path), input_names=input_names, output_names=output_names, **options
                )
        except Exception as e:  # noqa: BLE001 - the exporters raise many types; all are bad input
            raise LpucError(f"{failure}: {_describe(e)}") from e
        try:
            # Loads any .data files beside the model into the tensors, so nothing refers to tmp.
            return onnx.load(str(path), load_external_data=True)
        except Exception as e:  # noqa: BLE001 - protobuf and external-data errors have many types
            raise LpucError(f"{failure}: the exported model cannot be read back ({_describe(e)})") from e


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporters' warnings and progress lines, including the TorchScript exporter's
    C++ log (it dumps the Torch IR graph on failure), so lpuc's errors stay one line."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with tempfile.TemporaryFile() as sink, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                for stream in (sys.stdout, sys.stderr):
                    stream.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
    finally:
        for fd in saved:
            os.close(fd)


def _describe(error: BaseException) -> str:
    """`Type: first line` of the innermost cause: the dynamo exporter wraps the real error in a
    generic multi-line 'Failed to export ... step 1/3' message."""
    while error.__cause__ is not None:
        error = error.__cause__
    lines = _ANSI_ESCAPE.sub("", str(error)).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


# -- factory specs --------------------------------------------------------------------------------
def _import_spec_module(spec: str, where: str):
    if where.endswith(".py"):
        return _import_file(spec, Path(where))
    _prepend_sys_path(os.getcwd())
    importlib.invalidate_caches()  # the module file may have been written after the last import
    try:
        return importlib.import_module(where)
    except Exception as e:  # noqa: BLE001 - a module may fail to import in any way
        raise LpucError(f"{spec}: cannot import module {where!r} ({_describe(e)})") from e


def _import_file(spec: str, path: Path):
    if not path.is_file():
        raise LpucError(f"{spec}: no such file {str(path)!r}")
    _prepend_sys_path(str(path.resolve().parent))
    loader_spec = importlib.util.spec_from_file_location(path.stem, path)
    if loader_spec is None or loader_spec.loader is None:
        raise LpucError(f"{spec}: cannot import {str(path)!r} as a Python module")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[path.stem] = module  # as an import would: dataclasses and pickling look it up there
    try:
        loader_spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - a module may fail to import in any way
        del sys.modules[path.stem]
        raise LpucError(f"{spec}: cannot import {str(path)!r} ({_describe(e)})") from e
    return module


def _prepend_sys_path(directory: str) -> None:
    if directory not in sys.path:
        sys.path.insert(0, directory)


def _resolve_attribute(spec: str, module, attr: str):
    """`attr` may be dotted (pkg.mod:Model.build)."""
    found = module
    for part in attr.split("."):
        if not hasattr(found, part):
            raise LpucError(f"{spec}: module {module.__name__!r} has no attribute {attr!r}")
        found = getattr(found, part)
    return found
