"""Binding the model's dynamic input dimensions to static sizes (`--input-shape NAME=1x128`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import onnx

from lpuc.errors import ShapeError


def parse_dims(text: str, option: str) -> tuple[int, ...]:
    """`"1x3x224x224"` -> (1, 3, 224, 224); "" is a scalar."""
    try:
        shape = tuple(int(d) for d in text.lower().split("x")) if text else ()
    except ValueError:
        raise ShapeError(f"{option} {text!r}: dims must be integers joined by 'x' (e.g. 1x128)") from None
    if any(d < 0 for d in shape):
        raise ShapeError(f"{option} {text!r}: dims must be >= 0")
    return shape


def parse_shape_specs(specs: Iterable[str]) -> dict[str, tuple[int, ...]]:
    """`["x=1x3x224x224", "mask=1x128"]` -> {"x": (1, 3, 224, 224), "mask": (1, 128)}."""
    shapes: dict[str, tuple[int, ...]] = {}
    for spec in specs:
        name, sep, dims = spec.rpartition("=")
        if not sep or not name:
            raise ShapeError(f"--input-shape {spec!r}: expected NAME=D0xD1x... (e.g. x=1x128)")
        shapes[name] = parse_dims(dims, f"--input-shape {name}=")
    return shapes


def bind_input_shapes(
    model: onnx.ModelProto, shapes: Mapping[str, tuple[int, ...]], where: str, strict: bool = True
) -> onnx.ModelProto:
    """A copy of `model` whose runtime inputs all have static shapes.

    With `strict=False`, a given shape replaces the declared one even where it disagrees.
    """
    initializers = {i.name for i in model.graph.initializer}
    runtime_inputs = [i for i in model.graph.input if i.name not in initializers]
    unknown = sorted(set(shapes) - {i.name for i in runtime_inputs})
    if unknown:
        known = ", ".join(i.name for i in runtime_inputs)
        raise ShapeError(
            f"{where}: --input-shape names unknown input(s) {', '.join(unknown)} (inputs: {known})"
        )
    bound = onnx.ModelProto()
    bound.CopyFrom(model)
    for vi in bound.graph.input:
        if vi.name in initializers or not vi.type.HasField("tensor_type"):
            continue
        dims = vi.type.tensor_type.shape.dim
        if vi.name in shapes:
            _apply(vi, shapes[vi.name], where, strict)
            continue
        for axis, d in enumerate(dims):
            if is_dynamic_dim(d) and not (d.HasField("dim_value") and d.dim_value == 0):
                label = f" ('{d.dim_param}')" if d.dim_param else f" ({d.dim_value})" if d.dim_value else ""
                raise ShapeError(
                    f"{where}: input '{vi.name}' dim {axis}{label} is dynamic; bind it with "
                    f"--input-shape {vi.name}=" + "x".join(str(max(x.dim_value, 1)) for x in dims)
                )
        if not vi.type.tensor_type.HasField("shape"):
            raise ShapeError(f"{where}: input '{vi.name}' has unknown rank; bind it with --input-shape")
    return bound


def is_dynamic_dim(d: onnx.TensorShapeProto.Dimension) -> bool:
    """A symbolic or missing dim, or -1 / 0: exporters (Paddle, some others) write those for
    dynamic dims, so `--input-shape` may bind them. Left unbound, -1 must be bound, while 0 stays a
    real empty dim (ONNX's node tests have empty inputs)."""
    return not d.HasField("dim_value") or d.dim_value <= 0


def _apply(vi: onnx.ValueInfoProto, shape: tuple[int, ...], where: str, strict: bool) -> None:
    tt = vi.type.tensor_type
    old = list(tt.shape.dim) if tt.HasField("shape") and strict else None
    if old is not None and len(old) != len(shape):
        raise ShapeError(f"{where}: input '{vi.name}' has rank {len(old)}, --input-shape gives {len(shape)}")
    for axis, (d, size) in enumerate(zip(old or [], shape)):
        if not is_dynamic_dim(d) and d.dim_value != size:
            raise ShapeError(
                f"{where}: input '{vi.name}' dim {axis} is fixed at {d.dim_value}, --input-shape gives {size}"
            )
    tt.shape.ClearField("dim")
    for size in shape:
        tt.shape.dim.add().dim_value = size
