"""PyTorch frontend: torch.nn.Module -> in-memory ONNX ModelProto, and `pkg.mod:factory` specs.

`export_module` runs torch.onnx.export into a temporary directory and loads the result back with its
external data, so weights written beside the model (> 2 GB, or the dynamo exporter's
`external_data=True`) end up inline in the returned ModelProto. Graph inputs are named after the
parameters of `forward` (input_0.. when it takes *args) and outputs output_0.., whichever exporter
ran, keyword example inputs after them in forward's order. Every failure is a one-line LpucError
naming the module class and the exporter; when the other exporter would succeed, the error says so.

The TorchScript exporter traces one run: a Python `if` on a tensor computed from the inputs is baked
in as the branch the example inputs took. Its TracerWarning is turned into an error when re-running
forward shows that the converted tensor depends on input data (not only on shapes, which are static).
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
import traceback
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx

from lpuc.errors import LpucError

if TYPE_CHECKING:
    import torch

EXPORTERS = ("torchscript", "dynamo")

# `--example-input` dtypes: the tensor dtypes lpuc compiles.
EXAMPLE_DTYPES = ("float32", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool")

# Tensor -> Python value conversions the TorchScript tracer bakes in as constants.
_CONVERSIONS = frozenset(
    {"__bool__", "item", "__int__", "__float__", "__index__", "__complex__", "tolist", "numpy"}
)
# Ops whose result depends only on their tensor arguments' shapes, never on their values.
_SHAPE_ONLY = frozenset(
    {"zeros_like", "ones_like", "empty_like", "full_like", "new_zeros", "new_ones", "new_empty", "new_full"}
)

_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


def export_module(module: Any, example_inputs: Any, exporter: str = "torchscript") -> onnx.ModelProto:
    """Export `module` (in eval mode) with `example_inputs` to ONNX.

    `example_inputs` is a tensor, a tuple of tensors (positional arguments of forward), a dict
    name -> tensor (keyword arguments), or a tuple of tensors ending in such a dict (both, as in
    torch.onnx.export). `exporter` is "torchscript" (torch.onnx.export with dynamo=False) or "dynamo"
    (the torch.export-based exporter; needs onnxscript). The module's training mode is restored.
    """
    torch = _import_torch()
    if not isinstance(module, torch.nn.Module):
        raise LpucError(
            f"cannot compile a {type(module).__name__}: expected an .onnx path, an onnx.ModelProto "
            f"or a torch.nn.Module"
        )
    label = type(module).__name__
    _check_exporter(exporter, label)
    args, kwargs = _example_args(example_inputs, label, torch)
    positional = _input_names(module, len(args))
    kwargs = _ordered_kwargs(module, positional, kwargs, label)
    failure = f"cannot export {label} with the {exporter} exporter"
    was_training = module.training
    module.eval()
    try:
        output_count = _count_outputs(module, args, kwargs, failure, torch)
        call = _Call(
            module, args, kwargs, positional + list(kwargs), [f"output_{i}" for i in range(output_count)]
        )
        model = _export_and_load(call, exporter, failure, torch)
    finally:
        module.train(was_training)
    model.graph.name = label
    return model


def example_tensors(specs: Sequence[str], option: str = "--example-input") -> Any:
    """`["1x3x8x8", "mask=1x16:int64"]` -> example inputs for export_module.

    Each spec is `[NAME=]D0xD1..[:DTYPE]` (dtype float32 by default). Unnamed specs are positional
    and come first; named ones are keyword arguments of forward. Floats are seeded normal samples,
    integers and bools are ones (a valid index, id or mask value for any model).
    """
    from lpuc.frontend.input_shapes import parse_dims

    torch = _import_torch()
    gen = torch.Generator().manual_seed(0)
    args: list = []
    kwargs: dict[str, Any] = {}
    for spec in specs:
        name, sep, rest = spec.rpartition("=")
        if sep and not name:
            raise LpucError(f"{option} {spec!r}: expected [NAME=]D0xD1..[:DTYPE] (e.g. input_ids=1x16:int64)")
        dims, _, dtype_name = rest.partition(":")
        dtype_name = dtype_name or "float32"
        if dtype_name not in EXAMPLE_DTYPES:
            raise LpucError(
                f"{option} {spec!r}: unknown dtype {dtype_name!r} (choose {', '.join(EXAMPLE_DTYPES)})"
            )
        shape = parse_dims(dims, option)
        dtype = getattr(torch, dtype_name)
        if dtype.is_floating_point:
            tensor = torch.randn(*shape, generator=gen).to(dtype)
        else:
            tensor = torch.ones(shape, dtype=dtype)
        if not name:
            if kwargs:
                raise LpucError(f"{option} {spec!r}: positional example inputs must come before named ones")
            args.append(tensor)
        elif name in kwargs:
            raise LpucError(f"{option} {spec!r}: input {name!r} is given twice")
        else:
            kwargs[name] = tensor
    if not kwargs:
        return tuple(args)
    return (*args, kwargs) if args else kwargs


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


class _Call:
    """One export request: the module, its example arguments and the ONNX input/output names."""

    def __init__(self, module, args: tuple, kwargs: dict, input_names: list[str], output_names: list[str]):
        self.module, self.args, self.kwargs = module, args, kwargs
        self.input_names, self.output_names = input_names, output_names


def _example_args(example_inputs: Any, label: str, torch) -> tuple[tuple, dict]:
    """(positional, keyword) example arguments; see export_module."""
    empty = isinstance(example_inputs, (tuple, list, Mapping)) and not example_inputs
    if example_inputs is None or empty:
        raise LpucError(
            f"{label}: exporting a torch module needs example inputs (example_inputs= in lpuc.compile, "
            f"--example-input on the command line)"
        )
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,), {}
    args: Any = example_inputs
    kwargs: Any = {}
    if isinstance(example_inputs, Mapping):
        args, kwargs = (), example_inputs
    elif isinstance(example_inputs, (tuple, list)) and isinstance(example_inputs[-1], Mapping):
        args, kwargs = example_inputs[:-1], example_inputs[-1]
    if (
        isinstance(args, (tuple, list))
        and all(isinstance(t, torch.Tensor) for t in args)
        and all(isinstance(k, str) and isinstance(t, torch.Tensor) for k, t in kwargs.items())
    ):
        return tuple(args), dict(kwargs)
    raise LpucError(
        f"{label}: example_inputs must be a tensor or a tuple of tensors, or a dict name -> tensor "
        f"(got {type(example_inputs).__name__})"
    )


def _ordered_kwargs(module, positional: list[str], kwargs: dict, label: str) -> dict:
    """Keyword inputs in forward's parameter order, so both exporters number them alike."""
    if not kwargs:
        return kwargs
    try:
        params = inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        params = {}
    takes_any = any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params.values())
    named = [n for n, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    for name in kwargs:
        if name in positional:
            raise LpucError(f"{label}: example input {name!r} is given both positionally and by name")
        if name not in named and not takes_any:
            raise LpucError(
                f"{label}: forward has no parameter {name!r} (parameters: {', '.join(named) or 'none'})"
            )
    order = [n for n in named if n in kwargs] + sorted(n for n in kwargs if n not in named)
    return {name: kwargs[name] for name in order}


def _count_outputs(module, args: tuple, kwargs: dict, failure: str, torch) -> int:
    """Run forward once: the exporters need every output named up front."""
    try:
        with torch.no_grad():
            result = module(*args, **kwargs)
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


class _DataDependent(LpucError):
    """The traced program would be wrong for inputs that take another branch."""


def _export_and_load(call: _Call, exporter: str, failure: str, torch) -> onnx.ModelProto:
    with tempfile.TemporaryDirectory(prefix="lpuc-export-") as tmp:
        path = Path(tmp) / "model.onnx"
        try:
            _export(call, exporter, path, torch)
        except _DataDependent as e:
            raise LpucError(f"{failure}: {e}") from None
        except Exception as e:  # noqa: BLE001 - the exporters raise many types; all are bad input
            raise LpucError(f"{failure}: {_describe(e)}{_other_exporter_hint(call, exporter, torch)}") from e
        try:
            # Loads any .data files beside the model into the tensors, so nothing refers to tmp.
            return onnx.load(str(path), load_external_data=True)
        except Exception as e:  # noqa: BLE001 - protobuf and external-data errors have many types
            raise LpucError(f"{failure}: the exported model cannot be read back ({_describe(e)})") from e


def _export(call: _Call, exporter: str, path: Path, torch) -> None:
    """torch.onnx.export to `path`; raises _DataDependent for a trace that bakes in a branch."""
    options: dict[str, Any] = {"dynamo": exporter == "dynamo"}
    module, args, kwargs = call.module, call.args, call.kwargs
    if exporter == "dynamo":
        options.update(verbose=False, external_data=True)
    elif kwargs:
        # The TorchScript exporter re-binds keyword inputs to forward's parameters itself and trips
        # over defaults and **kwargs (transformers models): trace a positional adapter instead.
        module, args, kwargs = _positional_adapter(module, list(kwargs), torch), (*args, *kwargs.values()), {}
    with _quiet_exporter() as caught:
        torch.onnx.export(
            module,
            args,
            str(path),
            kwargs=kwargs or None,
            input_names=call.input_names,
            output_names=call.output_names,
            **options,
        )
    if exporter == "torchscript":
        _refuse_data_dependent_trace(call, caught, torch)


def _positional_adapter(module, keywords: list[str], torch):
    """A module whose forward(*tensors) calls `module` with the last len(keywords) tensors by name."""

    class _Adapter(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.module = module

        def forward(self, *tensors):
            split = len(tensors) - len(keywords)
            return self.module(*tensors[:split], **dict(zip(keywords, tensors[split:])))

    return _Adapter()


def _other_exporter_hint(call: _Call, exporter: str, torch) -> str:
    """'; the dynamo exporter exports it (...)' when the other exporter succeeds, else ''.

    Only to decide what to suggest: lpuc never switches exporters silently.
    """
    other = "dynamo" if exporter == "torchscript" else "torchscript"
    if other == "dynamo" and importlib.util.find_spec("onnxscript") is None:
        return ""
    with tempfile.TemporaryDirectory(prefix="lpuc-export-") as tmp:
        try:
            _export(call, other, Path(tmp) / "model.onnx", torch)
        except Exception:  # noqa: BLE001 - any failure means there is nothing to suggest
            return ""
    return f"; the {other} exporter exports it (--exporter {other}, or exporter='{other}' in lpuc.compile)"


def _refuse_data_dependent_trace(call: _Call, caught: list[warnings.WarningMessage], torch) -> None:
    conversions = [
        w
        for w in caught
        if issubclass(w.category, torch.jit.TracerWarning)
        and str(w.message).startswith("Converting a tensor to a")
    ]
    if not conversions:
        return
    # Shapes are static, so a branch on a shape is right for every input lpuc will see; only a
    # traced conversion that eager forward makes on a tensor computed from input values is refused.
    sites = {(w.filename, w.lineno) for w in conversions}
    try:
        where = _data_dependent_conversion(call, sites, torch)
    except Exception:  # noqa: BLE001 - cannot tell: refuse rather than risk a wrong program
        where = f"{Path(conversions[0].filename).name}:{conversions[0].lineno}"
    if where is None:
        return
    raise _DataDependent(
        f"forward turns a tensor computed from its inputs into a Python value at {where} (data-dependent "
        f"control flow); the TorchScript trace would take the example inputs' branch for every input: "
        f"write the branch with torch.cond and use --exporter dynamo (exporter='dynamo')"
    )


def _data_dependent_conversion(call: _Call, sites: set[tuple[str, int]], torch) -> str | None:
    """`file:line (function)` where forward converts an input-derived tensor to a Python value at
    one of the traced conversion `sites` (file, line), or None.

    Re-runs forward eagerly under a TorchFunctionMode that marks every tensor computed from an
    input (parameters, buffers and shape arithmetic stay unmarked). Eager code may take paths the
    trace does not (transformers skips its mask checks while tracing), hence the sites.
    """
    from torch.overrides import TorchFunctionMode
    from torch.utils._pytree import tree_leaves
    from torch.utils.weak import WeakIdKeyDictionary

    derived = WeakIdKeyDictionary()
    found: list[str] = []

    class _Taint(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            name = getattr(func, "__name__", "")
            tainted = any(isinstance(t, torch.Tensor) and t in derived for t in tree_leaves((args, kwargs)))
            if tainted and name in _CONVERSIONS and not found:
                stack = traceback.extract_stack()
                if any((frame.filename, frame.lineno) in sites for frame in stack):
                    found.append(_user_frame(stack))
            result = func(*args, **kwargs)
            if tainted and name not in _SHAPE_ONLY:
                for leaf in tree_leaves(result):
                    if isinstance(leaf, torch.Tensor):
                        derived[leaf] = True
            return result

    for leaf in tree_leaves((call.args, call.kwargs)):
        derived[leaf] = True
    with torch.no_grad(), _Taint():
        call.module(*call.args, **call.kwargs)
    return found[0] if found else None


def _user_frame(stack: traceback.StackSummary) -> str:
    """The innermost caller outside torch and lpuc, as `file.py:line (function)`."""
    import torch

    import lpuc

    skip = tuple(str(Path(m.__file__).parent) + os.sep for m in (torch, lpuc))
    for frame in reversed(stack):
        if not frame.filename.startswith(skip):
            return f"{Path(frame.filename).name}:{frame.lineno} ({frame.name})"
    return "<unknown>"


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[list[warnings.WarningMessage]]:
    """Silence the exporters' warnings and progress lines, including the TorchScript exporter's
    C++ log (it dumps the Torch IR graph on failure), so lpuc's errors stay one line. Yields the
    warnings raised meanwhile."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with tempfile.TemporaryFile() as sink, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            try:
                yield caught
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
