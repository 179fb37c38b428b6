"""Graph IR -> ONNX ModelProto, for `--dump-ir` files that Netron opens.

The export is for looking at, not for running:
- every value gets its dtype and shape (graph inputs/outputs and value_info); a dynamic value (shape
  decided by the data) gets its dtype only, or one symbolic dim "dynamic" as a graph input/output;
- lpuc's own ops (Fused, Im2Col, ...) keep their names in the "lpuc" domain; attributes ONNX cannot
  hold (Fused's expression: a list of dicts) are stored as a JSON string attribute; lpuc's own
  attributes on a standard op (lpuc.ir.model_work's model_blocks) go to the node's doc string;
- constants up to LARGE_CONST_BYTES are initializers; larger ones are replaced, to keep dumps small,
  by a placeholder: an `lpuc.OmittedConstant` node with the constant's name as its output and its
  shape, dtype and size as attributes (an initializer cannot carry a shape without its data).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from lpuc.ir.graph import LPUC_DOMAIN, Graph, Node, Value
from lpuc.kernels.registry import CAPTURES_ATTR

LARGE_CONST_BYTES = 1 << 20  # constants above 1 MiB are left out of dumps
_LPUC_OPSET = 1


def graph_to_onnx(graph: Graph, large_const_bytes: int = LARGE_CONST_BYTES) -> onnx.ModelProto:
    """An ONNX model of `graph`: nodes in order, constants as initializers, shapes as value_info."""
    nodes: list[onnx.NodeProto] = []
    initializers: list[onnx.TensorProto] = []
    for v in sorted(graph.constants(), key=lambda v: v.name):
        if v.nbytes > large_const_bytes:
            nodes.append(_placeholder(v))
        else:
            initializers.append(numpy_helper.from_array(np.asarray(v.const), v.name))
    nodes += [_node(n) for n in graph.nodes]

    const_names = {v.name for v in graph.constants()}
    inputs = [_value_info(graph.values[n], boundary=True) for n in graph.inputs if n not in const_names]
    outputs = [_value_info(graph.values[n], boundary=True) for n in graph.outputs]
    boundary = set(graph.inputs) | set(graph.outputs) | (const_names - {n.output[0] for n in nodes})
    produced = [o for n in nodes for o in n.output if o and o not in boundary]
    value_info = [_value_info(graph.values[o]) for o in dict.fromkeys(produced)]

    proto = helper.make_graph(nodes, graph.name, inputs, outputs, initializers, value_info=value_info)
    model = helper.make_model(proto, opset_imports=_opset_imports(graph), producer_name="lpuc")
    return model


def _opset_imports(graph: Graph) -> list[onnx.OperatorSetIdProto]:
    # Passes emit nodes at a newer opset than the model imported; one model holds one version per
    # domain, so take the newest any node uses.
    versions: dict[str, int] = {("" if d == "ai.onnx" else d): v for d, v in graph.opsets.items()}
    for n in graph.nodes:
        versions[n.domain] = max(versions.get(n.domain, 0), n.opset)
    versions[LPUC_DOMAIN] = max(versions.get(LPUC_DOMAIN, 0), _LPUC_OPSET)
    if not versions.get(""):
        versions[""] = onnx.defs.onnx_opset_version()
    return [helper.make_opsetid(d, v) for d, v in sorted(versions.items()) if v > 0]


def _placeholder(v: Value) -> onnx.NodeProto:
    return helper.make_node(
        "OmittedConstant",
        [],
        [v.name],
        name=f"omitted:{v.name}",
        domain=LPUC_DOMAIN,
        doc_string=f"constant of {v.nbytes} bytes left out of the dump",
        shape=list(v.shape or ()),
        dtype=np.dtype(v.dtype).name,
        nbytes=int(v.nbytes),
    )


def _node(n: Node) -> onnx.NodeProto:
    inputs, attrs = list(n.inputs), dict(n.attrs)
    # The importer lists the outer values a subgraph reads as extra inputs; ONNX keeps them implicit.
    captures = attrs.pop(CAPTURES_ATTR, None) or []
    if captures:
        inputs = inputs[: len(inputs) - len(captures)]
    proto = helper.make_node(n.op, inputs, list(n.outputs), name=n.name, domain=n.domain)
    # lpuc's own attributes on an ONNX op (a product's model_blocks) fail the checker: they go to the
    # node's doc string, which Netron shows too.
    known = _schema_attributes(n)
    own = {k: v for k, v in attrs.items() if known is not None and k not in known}
    proto.attribute.extend(_attribute(k, v) for k, v in sorted(attrs.items()) if k not in own)
    if own:
        proto.doc_string = "lpuc attributes: " + json.dumps(own, sort_keys=True, default=_jsonable)
    return proto


def _schema_attributes(n: Node) -> set[str] | None:
    """The attribute names ONNX defines for a standard op, or None (lpuc's ops, unknown ops)."""
    if n.domain not in ("", "ai.onnx"):
        return None
    try:
        return set(onnx.defs.get_schema(n.op, domain="").attributes)
    except onnx.defs.SchemaError:
        return None


def _attribute(key: str, value: Any) -> onnx.AttributeProto:
    if isinstance(value, (bool, np.bool_)):
        return helper.make_attribute(key, int(value))
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, np.ndarray):
        return helper.make_attribute(key, numpy_helper.from_array(value))
    if isinstance(value, (list, tuple)) and not value:
        return helper.make_attribute(key, [], attr_type=onnx.AttributeProto.INTS)
    if isinstance(value, (list, tuple)) and all(isinstance(x, bool) for x in value):
        return helper.make_attribute(key, [int(x) for x in value])
    try:
        return helper.make_attribute(key, value)
    except (TypeError, ValueError):
        # Not an ONNX attribute type (e.g. Fused's expression): keep it readable as JSON.
        return helper.make_attribute(key, json.dumps(value, sort_keys=True, default=_jsonable))


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return repr(value)


def _value_info(v: Value, boundary: bool = False) -> onnx.ValueInfoProto:
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(v.dtype))
    if v.shape is not None:
        return helper.make_tensor_value_info(v.name, elem, list(v.shape))
    if not boundary:
        return helper.make_tensor_value_info(v.name, elem, None)  # dtype only
    # Graph inputs and outputs must have a shape; lpuc does not know a dynamic value's rank.
    return helper.make_tensor_value_info(v.name, elem, ["dynamic"], doc_string=_DYNAMIC)


_DYNAMIC = "shape decided by the data at run time (rank unknown to lpuc)"
