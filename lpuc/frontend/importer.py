"""ONNX -> Graph IR: static shapes for every value, constants folded as they appear.

Nodes are imported in order. A node whose inputs are all constant is evaluated with the kernels
(this is how shape subgraphs such as Shape -> Gather -> Concat -> Reshape become constants).
Otherwise its output types come from onnx's single-node inference, fed with the constant operands
(so a Reshape whose target shape was just folded gets a static shape), and failing that from onnx's
whole-model inference. A value whose shape is still unknown is an error naming the node.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper, shape_inference

from lpuc.errors import ModelError, ShapeError, UnsupportedError
from lpuc.frontend.attributes import node_attributes
from lpuc.frontend.input_shapes import bind_input_shapes
from lpuc.frontend.limits import check_before_folding, check_value_size
from lpuc.frontend.loader import canonicalize_weightless, raw_data_too_small, weightless
from lpuc.ir.graph import Graph, Node, Value, constant_value
from lpuc.kernels import KernelContext, get_kernel, run_kernel
from lpuc.kernels.registry import CAPTURES_ATTR, canonical_domain
from lpuc.ops import DATA_DEPENDENT_SHAPES, SHAPE_OPERANDS, placement
from lpuc.passes.fold_constants import try_fold
from lpuc.target import Target

# Constant operands larger than this are not handed to onnx's inference (it only needs shapes).
_INFERENCE_DATA_LIMIT = 1 << 16


def import_model(
    model: onnx.ModelProto,
    where: str,
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
    const_inputs: Mapping[str, np.ndarray] | None = None,
    strict_input_shapes: bool = True,
    target: Target | None = None,
    weights: Mapping[str, np.ndarray] | None = None,
) -> Graph:
    """Build the Graph IR of `model` with every dynamic dim bound and constants folded.

    `weights`: initializers read apart from the protobuf (lpuc.frontend.loader.load_model_and_weights),
    by name; the model's own tensors of those names are placeholders.

    `const_inputs` binds runtime inputs to compile-time values (used by the ONNX backend for
    inputs that feed shape operands, which a statically scheduled chip must know).
    """
    const_inputs = dict(const_inputs or {})
    # Everything but reading the weights works on a weightless copy; the weights are read once,
    # from `model`'s own tensors, when they become constants below.
    tensors = {t.name: t for t in model.graph.initializer}
    light = canonicalize_weightless(weightless(model))
    model = light.model
    check_supported(model, where)
    shapes = dict(input_shapes or {})
    for name, value in const_inputs.items():
        shapes[name] = tuple(np.shape(value))
    model = bind_input_shapes(model, shapes, where, strict=strict_input_shapes)
    inferred = _whole_model_types(model)
    opsets = {canonical_domain(o.domain): int(o.version) for o in model.opset_import}

    values: dict[str, Value] = {}
    weights = weights or {}
    for init in model.graph.initializer:
        array = weights.get(init.name)
        if array is None:
            stubbed = init.name in light.stubbed
            array = _initializer_array(tensors[init.name] if stubbed else init, stubbed, where)
        values[init.name] = constant_value(init.name, array)
    for sp in model.graph.sparse_initializer:
        from lpuc.frontend.attributes import _sparse_to_dense

        dense = _decoded(_sparse_to_dense, sp, sp.values.name, where)
        values[sp.values.name] = constant_value(sp.values.name, dense)
    inputs: list[str] = []
    for vi in model.graph.input:
        if vi.name in values:
            continue  # an initializer listed as input (IR < 4): a constant for compilation
        if vi.name in const_inputs:
            values[vi.name] = constant_value(vi.name, np.asarray(const_inputs[vi.name]))
            continue
        values[vi.name] = _value_from_type(vi.name, vi.type, where, f"input '{vi.name}'")
        check_value_size(values[vi.name], where, f"input '{vi.name}'", target)
        inputs.append(vi.name)

    nodes: list[Node] = []
    for index, proto in enumerate(model.graph.node):
        domain = canonical_domain(proto.domain)
        try:
            attrs = node_attributes(proto)
        except (ValueError, KeyError, TypeError) as e:  # a tensor attribute whose data is corrupt
            name = proto.name or f"{proto.op_type}_{index}"
            raise ModelError(f"{where}: node '{name}' ({proto.op_type}): bad attribute ({e})") from None
        captures = [n for n in captured_names(proto) if n in values]
        if captures:
            attrs[CAPTURES_ATTR] = captures
        node = Node(
            op=proto.op_type,
            name=proto.name or f"{proto.op_type}_{index}",
            inputs=tuple(proto.input) + tuple(captures),
            outputs=tuple(proto.output),
            attrs=attrs,
            domain=domain,
            opset=opsets.get(domain, 0),
        )
        _check_input_types(proto, node, values, where)
        check_before_folding(node, values, where)
        try:
            folded = None if _quantized_weights(node, values) else try_fold(node, values, opsets)
        except MemoryError:
            raise ShapeError(
                f"{where}: node '{node.name}' ({node.op}): output too large to evaluate"
            ) from None
        if folded is not None:
            for name, array in zip(node.outputs, folded):
                if name:
                    values[name] = constant_value(name, array)
                    # Constants are checked against SRAM later, once deduplicated and at their
                    # stored precision (lpuc.schedule.build); here only against the element limit.
                    check_value_size(values[name], where, _what(name, node), None)
            continue
        for name, value in _infer_outputs(proto, node, values, inferred, opsets, where).items():
            check_value_size(value, where, _what(name, node), target)
            values[name] = value
        nodes.append(node)

    outputs = [o.name for o in model.graph.output]
    for o in outputs:
        if o not in values:
            raise ShapeError(f"{where}: graph output '{o}' is not produced by any node")
    graph = Graph(model.graph.name or "model", nodes, values, inputs, outputs, opsets)
    return graph.prune_values()


def _quantized_weights(node: Node, values: dict[str, Value]) -> bool:
    """A DequantizeLinear of constant 8-bit integers: kept for passes/lower_quantized, which maps it
    onto the int8 MXM mode (fold_constants folds what it leaves)."""
    if node.op != "DequantizeLinear" or node.domain:
        return False
    q = values.get(node.inputs[0])
    return q is not None and q.is_const and q.dtype in (np.dtype(np.int8), np.dtype(np.uint8))


def _check_input_types(proto: onnx.NodeProto, node: Node, values: Mapping[str, Value], where: str) -> None:
    """Refuse inputs of a type the op's schema does not allow (onnxruntime refuses those too)."""
    try:
        schema = onnx.defs.get_schema(node.op, node.opset, node.domain)
    except onnx.defs.SchemaError:
        return  # no schema (lpuc or custom domains): the kernel decides
    formals = list(schema.inputs)
    allowed = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
    for k, name in enumerate(proto.input):
        if not name or name not in values or not formals:
            continue
        formal = formals[min(k, len(formals) - 1)]  # a variadic last formal covers the rest
        if k >= len(formals) and formal.option != onnx.defs.OpSchema.FormalParameterOption.Variadic:
            continue
        types = allowed.get(formal.type_str, {formal.type_str})
        dtype = values[name].dtype
        try:
            got = (
                "tensor("
                + TensorProto.DataType.Name(onnx.helper.np_dtype_to_tensor_dtype(dtype)).lower()
                + ")"
            )
        except (KeyError, ValueError, TypeError):
            continue
        if got not in types and not any(t.startswith(("seq", "optional", "map")) for t in types):
            names = ", ".join(sorted(t[7:-1] for t in types if t.startswith("tensor(")))
            raise UnsupportedError(
                f"{where}: node '{node.name}' ({node.op}): input {k} '{name}' is {got[7:-1]}; "
                f"opset {node.opset} {node.op} takes {names}"
            )


def _initializer_array(tensor: onnx.TensorProto, stubbed: bool, where: str) -> np.ndarray:
    try:
        return numpy_helper.to_array(tensor)
    except (ValueError, KeyError, TypeError):
        # The checker saw a stub of this tensor, so it could not refuse raw data too short for
        # the dims: refused here in its words.
        message = raw_data_too_small(tensor) if stubbed else None
        if message:
            raise ModelError(f"{where}: invalid ONNX model ({message})") from None
    return _decoded(numpy_helper.to_array, tensor, tensor.name, where)


def _decoded(decode, proto, name: str, where: str) -> np.ndarray:
    """A stored tensor's data; dims, dtype and data that disagree are the model's fault."""
    try:
        return decode(proto)
    except (ValueError, KeyError, TypeError) as e:
        raise ModelError(f"{where}: initializer '{name}' is corrupt ({type(e).__name__}: {e})") from None


def _what(name: str, node: Node) -> str:
    return f"output '{name}' of {node.op} node '{node.name}'"


def captured_names(node: onnx.NodeProto) -> list[str]:
    """Values of enclosing scopes that the node's subgraphs read (in first-use order)."""
    found: list[str] = []
    for attr in node.attribute:
        for g in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
            defined = {i.name for i in g.input} | {i.name for i in g.initializer}
            for inner in g.node:
                for name in list(inner.input) + captured_names(inner):
                    if name and name not in defined and name not in found:
                        found.append(name)
                defined.update(inner.output)
    return found


def check_supported(model: onnx.ModelProto, where: str) -> None:
    """One error listing every op type lpuc has no kernel for, with node names and opset."""
    opsets = {canonical_domain(o.domain): o.version for o in model.opset_import}
    missing: dict[tuple[str, str], list[str]] = {}
    for i, n in enumerate(model.graph.node):
        if get_kernel(n.op_type, n.domain) is None:
            missing.setdefault((canonical_domain(n.domain), n.op_type), []).append(n.name or f"#{i}")
    if not missing:
        return
    parts = []
    for (domain, op), names in sorted(missing.items()):
        shown = ", ".join(names[:3]) + (f", +{len(names) - 3} more" if len(names) > 3 else "")
        parts.append(f"{op} (opset {domain or 'ai.onnx'} {opsets.get(domain, '?')}; nodes: {shown})")
    raise UnsupportedError(f"{where}: unsupported ops: " + "; ".join(parts))


def _whole_model_types(model: onnx.ModelProto) -> dict[str, onnx.TypeProto]:
    try:
        inferred = shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=True)
    except Exception:  # noqa: BLE001 - inference is a hint here; per-node inference still runs
        return {}
    g = inferred.graph
    return {vi.name: vi.type for vi in list(g.value_info) + list(g.output)}


def _infer_outputs(
    proto: onnx.NodeProto,
    node: Node,
    values: Mapping[str, Value],
    inferred: Mapping[str, onnx.TypeProto],
    opsets: Mapping[str, int],
    where: str,
) -> dict[str, Value]:
    # Host ops are typed by their kernel, the definition of what they compute (onnx's inference
    # disagrees with the spec for a few of them); chip ops by onnx's inference, which is cheaper.
    evaluated = (
        _types_by_evaluation(node, values, opsets) if placement(node.op, node.domain).unit == "HOST" else None
    )
    types = {} if evaluated else _single_node_types(proto, node, values, opsets)
    # onnx's node inference refused these operands: whole-model types (e.g. declared output
    # shapes) are not evidence then, the kernel is asked instead.
    doubtful = types is None and placement(node.op, node.domain).unit != "HOST"
    types = types or {}
    out: dict[str, Value] = {}
    errors: list[str] = []
    reads_dynamic = any(n and values[n].is_dynamic for n in node.inputs)
    for name in node.outputs:
        if not name:
            continue
        what = f"output '{name}' of {node.op} node '{node.name}'"
        # Whole-model inference may have assumed values for dynamic inputs: not trusted then.
        t = types.get(name) or (None if reads_dynamic else inferred.get(name))
        value = (evaluated or {}).get(name)
        if value is None and doubtful:
            if evaluated is None:
                evaluated = _types_by_evaluation(node, values, opsets, errors)
            value = evaluated.get(name)
        if value is None and t is not None and _is_static(t) and not errors:
            value = _value_from_type(name, t, where, what)
        if value is None:
            if evaluated is None:
                evaluated = _types_by_evaluation(node, values, opsets, errors)
            value = evaluated.get(name)
        if value is None and errors and placement(node.op, node.domain).unit != "HOST":
            # The kernel refused operands of these shapes and attributes: an invalid node, which
            # would otherwise fail only when the program runs.
            raise ShapeError(f"{where}: node '{node.name}' ({node.op}): {errors[0]}")
        if value is None:
            # A shape that depends on data: the value lives on the host, where its producer and
            # every consumer then run (lowering checks this).
            value = _dynamic_value(name, t, where, what)
        out[name] = value
    return out


def _dynamic_value(name: str, t: onnx.TypeProto | None, where: str, what: str) -> Value:
    if t is None or not t.HasField("tensor_type") or not t.tensor_type.elem_type:
        raise ShapeError(f"{where}: cannot infer the type of {what}")
    tt = onnx.TypeProto()
    tt.CopyFrom(t)
    tt.tensor_type.ClearField("shape")
    tt.tensor_type.shape.SetInParent()
    value = _value_from_type(name, tt, where, what)
    return Value(name, None, value.dtype)


def _is_static(t: onnx.TypeProto) -> bool:
    tt = t.tensor_type
    return (
        t.HasField("tensor_type")
        and tt.HasField("shape")
        and all(d.HasField("dim_value") and d.dim_value >= 0 for d in tt.shape.dim)
    )


def _types_by_evaluation(
    node: Node, values: Mapping[str, Value], opsets: Mapping[str, int], errors: list[str] | None = None
) -> dict[str, Value]:
    """Output types found by running the kernel on placeholder inputs of the right shapes.

    Only for ops whose output shapes cannot depend on input values (constants are passed as they are).
    """
    kernel = get_kernel(node.op, node.domain)
    if (
        kernel is None
        or node.op in DATA_DEPENDENT_SHAPES
        or any(n and values[n].is_dynamic for n in node.inputs)
    ):
        return {}
    shape_operands = [node.inputs[k] for k in SHAPE_OPERANDS.get(node.op, ()) if k < len(node.inputs)]
    if any(n and not values[n].is_const for n in shape_operands):
        return {}  # the shape depends on values we do not have
    args = [
        None
        if not n
        else values[n].const
        if values[n].is_const
        else np.zeros(values[n].shape, values[n].dtype)
        for n in node.inputs
    ]
    ctx = KernelContext(node.op, node.attrs, node.opset, len(node.outputs), node.domain, opsets)
    try:
        with np.errstate(all="ignore"):
            results = run_kernel(ctx, args)
    except Exception as e:  # noqa: BLE001 - a placeholder may be invalid data for the op: no type then
        if errors is not None:
            errors.append(str(e).splitlines()[0][:200] if str(e) else type(e).__name__)
        return {}
    return {n: Value(n, tuple(int(d) for d in r.shape), r.dtype) for n, r in zip(node.outputs, results) if n}


def _single_node_types(
    proto: onnx.NodeProto, node: Node, values: Mapping[str, Value], opsets: Mapping[str, int]
) -> dict[str, onnx.TypeProto] | None:
    try:
        schema = onnx.defs.get_schema(node.op, opsets.get(node.domain, 1), node.domain)
    except onnx.defs.SchemaError:
        return {}
    input_types, input_data = {}, {}
    for name in node.inputs:
        if not name:
            continue
        v = values[name]
        input_types[name] = onnx.helper.make_tensor_type_proto(
            onnx.helper.np_dtype_to_tensor_dtype(np.dtype(v.dtype)),
            None if v.shape is None else list(v.shape),
        )
        if v.is_const and v.size <= _INFERENCE_DATA_LIMIT:
            input_data[name] = numpy_helper.from_array(np.ascontiguousarray(v.const), name)
    try:
        return dict(shape_inference.infer_node_outputs(schema, proto, input_types, input_data))
    except Exception:  # noqa: BLE001 - None: refused (the caller falls back to other evidence)
        return None


def _value_from_type(name: str, t: onnx.TypeProto, where: str, what: str) -> Value:
    if not t.HasField("tensor_type"):
        raise UnsupportedError(f"{where}: {what} is a {t.WhichOneof('value')}; only tensors are supported")
    tt = t.tensor_type
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type))
    except (KeyError, ValueError, TypeError):
        raise UnsupportedError(f"{where}: {what} has unsupported element type {tt.elem_type}") from None
    if dtype.kind == "O":
        raise UnsupportedError(f"{where}: {what} is a string tensor; strings are not supported")
    if not tt.HasField("shape") or any(not d.HasField("dim_value") or d.dim_value < 0 for d in tt.shape.dim):
        raise ShapeError(f"{where}: cannot infer a static shape for {what}")
    return Value(name, tuple(int(d.dim_value) for d in tt.shape.dim), dtype)
