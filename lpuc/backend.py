"""lpuc as an ONNX backend (`onnx.backend.base.Backend`), for ONNX's conformance suite and tools.

Every run goes through the whole toolchain: frontend -> passes -> lowering -> schedule -> .lpu bytes
-> load (checksum + validator) -> runtime. Programs are compiled when inputs arrive, specialized on
their shapes and on the values of inputs that decide shapes (see `lpuc.ops.SHAPE_OPERANDS`), and
cached per specialization.

    rep = lpuc.backend.prepare(model)            # precision="fp32" (exact) by default
    outputs = rep.run([x, y])                    # or {name: array}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx
from onnx.backend.base import Backend, BackendRep

import lpuc
from lpuc.backends.lpu import decode_program
from lpuc.ops import SHAPE_OPERANDS, SHAPE_READERS
from lpuc.target import DEFAULT_TARGET


def runtime_inputs(model: onnx.ModelProto) -> list[str]:
    initializers = {i.name for i in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in initializers]


def shape_operand_inputs(model: onnx.ModelProto) -> set[str]:
    """Graph inputs whose values (not just shapes) flow into an operand that decides a shape."""
    producer = {o: n for n in model.graph.node for o in n.output}
    names = set(runtime_inputs(model))
    pending = [
        n.input[k] for n in model.graph.node for k in SHAPE_OPERANDS.get(n.op_type, ()) if k < len(n.input)
    ]
    seen: set[str] = set()
    while pending:
        value = pending.pop()
        if not value or value in seen:
            continue
        seen.add(value)
        node = producer.get(value)
        if node is not None and node.op_type not in SHAPE_READERS:  # Shape(x) needs only x's shape
            pending.extend(node.input)
    return seen & names


class LpucRep(BackendRep):
    def __init__(self, model: onnx.ModelProto, target: str, precision: str, host_fallback: bool):
        self.model = model
        self.target = target
        self.precision = precision
        self.host_fallback = host_fallback
        self.input_names = runtime_inputs(model)
        self.shape_inputs = shape_operand_inputs(model)
        self._programs: dict[tuple, lpuc.Program] = {}

    def program_for(self, feeds: Mapping[str, np.ndarray]) -> lpuc.Program:
        consts = {n: feeds[n] for n in sorted(self.shape_inputs)}
        key = tuple((n, tuple(a.shape), str(a.dtype)) for n, a in sorted(feeds.items()))
        key += tuple((n, a.tobytes()) for n, a in consts.items())
        program = self._programs.get(key)
        if program is None:
            compiled = lpuc.compile(
                self.model,
                target=self.target,
                precision=self.precision,
                input_shapes={n: tuple(a.shape) for n, a in feeds.items() if n not in consts},
                const_inputs=consts,
                host_fallback=self.host_fallback,
                strict_input_shapes=False,
            )
            program = decode_program(compiled.to_bytes(), "<backend>")  # through the artifact
            self._programs[key] = program
        return program

    def run(self, inputs: Any, **kwargs: Any) -> tuple[np.ndarray, ...]:
        feeds = self._feeds(inputs)
        program = self.program_for(feeds)
        bound = {b.name for b in program.inputs}
        outputs = program.run({n: a for n, a in feeds.items() if n in bound})
        return tuple(outputs[o.name] for o in self.model.graph.output)

    def _feeds(self, inputs: Any) -> dict[str, np.ndarray]:
        if isinstance(inputs, Mapping):
            return {k: np.asarray(v) for k, v in inputs.items()}
        if isinstance(inputs, np.ndarray):
            inputs = [inputs]
        values = list(inputs)
        if len(values) > len(self.input_names):
            raise lpuc.errors.LpucError(f"{len(values)} inputs given, the model has {len(self.input_names)}")
        return {n: np.asarray(v) for n, v in zip(self.input_names, values)}


class LpucBackend(Backend):
    @classmethod
    def prepare(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> LpucRep:
        super().prepare(model, device, **kwargs)
        return LpucRep(
            model,
            target=kwargs.get("target", DEFAULT_TARGET),
            precision=kwargs.get("precision", "fp32"),
            host_fallback=kwargs.get("host_fallback", True),
        )

    @classmethod
    def run_model(cls, model: onnx.ModelProto, inputs: Any, device: str = "CPU", **kwargs: Any):
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def run_node(
        cls, node: onnx.NodeProto, inputs: Any, device: str = "CPU", outputs_info=None, **kwargs: Any
    ):
        """Wrap one node in a model (input types from the arrays) and run it."""
        values = list(inputs.values()) if isinstance(inputs, Mapping) else list(inputs)
        names = list(inputs) if isinstance(inputs, Mapping) else [n for n in node.input if n]
        graph_inputs = [
            onnx.helper.make_tensor_value_info(
                n, onnx.helper.np_dtype_to_tensor_dtype(np.asarray(v).dtype), np.shape(v)
            )
            for n, v in zip(names, values)
        ]
        graph_outputs = [onnx.helper.make_empty_tensor_value_info(o) for o in node.output if o]
        opset = kwargs.pop("opset_version", onnx.defs.onnx_opset_version())
        model = onnx.helper.make_model(
            onnx.helper.make_graph([node], "run_node", graph_inputs, graph_outputs),
            opset_imports=[onnx.helper.make_opsetid(node.domain or "", opset)],
        )
        return cls.prepare(model, device, **kwargs).run(dict(zip(names, values)))

    @classmethod
    def supports_device(cls, device: str) -> bool:
        # The reference runtime executes the chip's programs on the host CPU.
        return device in ("CPU", "cpu")


prepare = LpucBackend.prepare
run_model = LpucBackend.run_model
run_node = LpucBackend.run_node
supports_device = LpucBackend.supports_device
