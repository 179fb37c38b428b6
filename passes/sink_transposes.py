"""Transposes carried forward unmaterialized until they cancel or reach an op that needs them.

lower_conv leaves each convolution's result channels-last ([N, *spatial, M]) followed by a Transpose
back to NCHW, and between two convolutions a tensor usually passes only elementwise ops (bias, ReLU,
a residual Add), which do not care about layout; Im2Col can read channels-last directly. So a
Transpose is not emitted where it stands: its result is *pending* (the source value and the perm).
- an elementwise op whose operands are pending with one perm (and otherwise constants, transposed
  here at compile time) runs on the sources; its result is pending too;
- a Transpose of a pending value composes the perms (and cancels when they are inverse);
- an Im2Col of a pending channels-last value reads that value (attribute channels_last; a 1x1
  window is just a Reshape of it, which costs nothing), and a
  pooling op runs channels-last (lpuc domain), and so does a depthwise Conv (lpuc DepthwiseConv: one
  weight vector per window tap, channels on lanes); a Concat of pending operands concatenates the
  sources;
- anything else gets the Transpose emitted, once per value, under the value's own name.
Whole-tensor SXM transposes between convolutions disappear, and the ops in between run on
channels-last rows, whose lanes hold channels (64-2048) instead of one row of pixels (7-56).
"""

from __future__ import annotations

import numpy as np

from lpuc.ir.graph import LPUC_DOMAIN, Graph, Node, constant_value
from lpuc.ops import is_elementwise

Perm = tuple[int, ...]
# Pooling ops with a channels-last form (lpuc domain, see lpuc.kernels.lowered).
CHANNELS_LAST_POOLS = frozenset({"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"})


def sink_transposes(graph: Graph, ctx: object = None) -> Graph:
    disabled = getattr(ctx, "disabled", frozenset())
    return _Sinker(graph, "channels_last_depthwise" not in disabled).run()


def channels_last_to_first(rank: int) -> Perm:
    """The perm that turns [N, *spatial, C] into [N, C, *spatial]."""
    return (0, rank - 1, *range(1, rank - 1))


def _pointwise(im2col: Node) -> bool:
    """A 1x1 window at stride 1 without padding: every pixel is one row of columns."""
    return (
        all(int(k) == 1 for k in im2col.attr("kernel_shape"))
        and all(int(st) == 1 for st in im2col.attr("strides"))
        and not any(int(p) for p in im2col.attr("pads"))
    )


def _floor_mode_attrs(node: Node, x_shape: tuple[int, ...], y_shape: tuple[int, ...]) -> dict:
    """A MaxPool's attributes with ceil_mode 1 turned into end pads (padding never wins a max): the
    same windows, in the form lowering cuts into row slabs (lpuc.kernels.windows). Unchanged for
    anything else, or where the pads would not give the result's shape."""
    attrs = dict(node.attrs)
    explicit_pads = node.text_attr("auto_pad", "NOTSET") == "NOTSET"
    if node.op != "MaxPool" or not attrs.get("ceil_mode", 0) or not explicit_pads:
        return attrs
    spatial, out = [int(d) for d in x_shape[2:]], [int(d) for d in y_shape[2:]]
    rank = len(spatial)
    kernel = [int(k) for k in attrs["kernel_shape"]]
    strides = [int(v) for v in attrs.get("strides") or [1] * rank]
    dilations = [int(v) for v in attrs.get("dilations") or [1] * rank]
    pads = [int(v) for v in attrs.get("pads") or [0] * 2 * rank]
    for j in range(rank):
        span = dilations[j] * (kernel[j] - 1) + 1
        pads[rank + j] += max(0, (out[j] - 1) * strides[j] + span - (spatial[j] + pads[j] + pads[rank + j]))
        if (spatial[j] + pads[j] + pads[rank + j] - span) // strides[j] + 1 != out[j]:
            return dict(node.attrs)
    return {**attrs, "ceil_mode": 0, "pads": pads}


class _Sinker:
    def __init__(self, graph: Graph, channels_last_depthwise: bool = True) -> None:
        self.channels_last_depthwise = channels_last_depthwise
        self.graph = graph.copy(nodes=[])
        self.source = graph
        self.pending: dict[str, tuple[str, Perm]] = {}  # value -> (source value, perm)
        self.alias: dict[str, str] = {}  # value -> the value it equals (transposes that cancelled)
        self.written_by: dict[str, str] = {}  # pending value -> the Transpose node that made it
        self.opset = graph.opsets.get("", 21)

    def run(self) -> Graph:
        for node in self.source.nodes:
            node = node.with_(inputs=tuple(self.alias.get(i, i) for i in node.inputs))
            if not self._absorb(node):
                self._emit(node)
        for name in self.source.outputs:
            if name in self.alias:
                self._add(
                    Node("Identity", f"{name}/identity", (self.alias[name],), (name,), opset=self.opset)
                )
            self._materialize(name)
        return self.graph.prune_values()

    # -- ops that keep a transpose pending -----------------------------------------------------------
    def _absorb(self, node: Node) -> bool:
        if self.graph.touches_dynamic(node):
            return False
        if node.op == "Transpose" and not node.domain:
            return self._transpose(node)
        if node.op == "Im2Col" and node.domain == LPUC_DOMAIN:
            return self._im2col(node)
        if node.op in CHANNELS_LAST_POOLS and not node.domain and len(node.outputs) == 1:
            return self._pool(node)
        if node.op == "Concat" and not node.domain:
            return self._concat(node)
        if node.op == "Conv" and not node.domain and self.channels_last_depthwise:
            return self._depthwise(node)
        if is_elementwise(node.op, node.domain) and len(node.outputs) == 1:
            return self._elementwise(node)
        return False

    def _transpose(self, node: Node) -> bool:
        x, y = node.inputs[0], node.outputs[0]
        rank = len(self.graph.values[x].shape)
        perm = tuple(int(p) for p in node.attr("perm") or reversed(range(rank)))
        source, before = self.pending.get(x, (x, tuple(range(rank))))
        composed = tuple(before[p] for p in perm)
        if composed == tuple(range(rank)):
            self.alias[y] = source  # a transpose pair cancels
        else:
            self.pending[y] = (source, composed)
            self.written_by[y] = node.name  # if emitted after all, it keeps its name
        return True

    def _im2col(self, node: Node) -> bool:
        x = node.inputs[0]
        if x not in self.pending:
            return False
        source, perm = self.pending[x]
        if perm != channels_last_to_first(len(perm)):
            return False
        if _pointwise(node):  # a 1x1 window: channels-last rows already are the columns
            shape = self.graph.add_const(
                f"{node.outputs[0]}_shape", np.asarray(self.graph.values[node.outputs[0]].shape)
            )
            self._add(Node("Reshape", f"{node.name}/rows", (source, shape), node.outputs, opset=self.opset))
        else:
            self._add(node.with_(inputs=(source,), attrs={**node.attrs, "channels_last": 1}))
        return True

    def _pool(self, node: Node) -> bool:
        x, y = node.inputs[0], node.outputs[0]
        if x not in self.pending or self.pending[x][1] != channels_last_to_first(len(self.pending[x][1])):
            return False
        source, perm = self.pending[x]
        attrs = _floor_mode_attrs(node, self.graph.values[x].shape, self.graph.values[y].shape)
        self._pending_result(node.with_(inputs=(source,), domain=LPUC_DOMAIN, attrs=attrs), y, perm)
        return True

    def _depthwise(self, node: Node) -> bool:
        """A depthwise 2-D Conv (one input channel per output channel, constant weights) of a pending
        channels-last value runs channels-last: the NCHW round trip (a whole-tensor transpose each
        way) disappears, and its rows hold channels on lanes."""
        x, w = node.inputs[0], node.inputs[1]
        bias = node.inputs[2] if len(node.inputs) > 2 else ""
        if x not in self.pending or self.pending[x][1] != channels_last_to_first(4):
            return False
        weights, channels = self.graph.values[w], self.graph.values[x].shape[1]
        group = int(node.attr("group", 1))
        if (
            not weights.is_const
            or len(weights.shape) != 4
            or group != channels
            or tuple(weights.shape[:2]) != (channels, 1)
            or node.text_attr("auto_pad", "NOTSET") != "NOTSET"
            or (bias and not self.graph.values[bias].is_const)
        ):
            return False
        kernel = [int(k) for k in weights.shape[2:]]
        taps = np.asarray(weights.const).reshape(channels, -1).T  # [taps, C]: one weight vector per tap
        name = self.graph.unique_name(f"{w}_taps")
        self.graph.values[name] = constant_value(name, np.ascontiguousarray(taps))
        attrs = {
            "kernel_shape": kernel,
            "strides": [int(v) for v in node.attr("strides") or [1, 1]],
            "pads": [int(v) for v in node.attr("pads") or [0, 0, 0, 0]],
            "dilations": [int(v) for v in node.attr("dilations") or [1, 1]],
        }
        source, perm = self.pending[x]
        inputs = (source, name, bias) if bias else (source, name)
        conv = Node("DepthwiseConv", node.name, inputs, node.outputs, attrs, LPUC_DOMAIN, self.opset)
        self._pending_result(conv, node.outputs[0], perm)
        return True

    def _concat(self, node: Node) -> bool:
        perms = {self.pending[i][1] if i in self.pending else None for i in node.inputs}
        if len(perms) != 1 or None in perms:
            return False  # every operand pending with one perm
        (perm,) = perms
        axis = int(node.attr("axis")) % len(perm)
        sources = tuple(self.pending[i][0] for i in node.inputs)
        self._pending_result(
            node.with_(inputs=sources, attrs={**node.attrs, "axis": perm[axis]}), node.outputs[0], perm
        )
        return True

    def _pending_result(self, node: Node, out: str, perm: Perm) -> None:
        """Emit `node` computing `out` in its source layout: `out` becomes pending `perm`."""
        value = self.graph.values[out]
        shape = tuple(value.shape[p] for p in np.argsort(perm))
        name = self.graph.add_value(f"{out}_cl", shape, value.dtype)
        self._add(node.with_(name=f"{node.name}/cl", outputs=(name,)))
        self.pending[out] = (name, perm)

    def _elementwise(self, node: Node) -> bool:
        out = self.graph.values[node.outputs[0]]
        perms = {self.pending[i][1] for i in node.inputs if i in self.pending}
        if len(perms) != 1:
            return False
        (perm,) = perms
        inverse = tuple(int(p) for p in np.argsort(perm))
        inputs = []
        for i in node.inputs:
            if not i:
                inputs.append(i)
            elif i in self.pending:
                if self.graph.values[i].shape != out.shape:
                    return False  # broadcast on the pending side: keep it simple
                inputs.append(self.pending[i][0])
            elif self.graph.values[i].is_const:
                inputs.append(self._transposed_const(i, len(perm), inverse))
            else:
                return False  # a runtime operand in the original layout
        self._pending_result(node.with_(inputs=tuple(inputs)), node.outputs[0], perm)
        return True

    def _transposed_const(self, name: str, rank: int, inverse: Perm) -> str:
        data = np.asarray(self.graph.values[name].const)
        full = data.reshape((1,) * (rank - data.ndim) + data.shape)
        moved = self.graph.unique_name(f"{name}_cl")
        self.graph.values[moved] = constant_value(moved, np.transpose(full, inverse))
        return moved

    # -- everything else -----------------------------------------------------------------------------
    def _emit(self, node: Node) -> None:
        for i in node.inputs:
            self._materialize(i)
        self._add(node)

    def _materialize(self, name: str) -> None:
        if name not in self.pending:
            return
        source, perm = self.pending.pop(name)
        node_name = self.written_by.get(name, f"{name}/transpose")
        self._add(Node("Transpose", node_name, (source,), (name,), {"perm": list(perm)}, opset=self.opset))

    def _add(self, node: Node) -> None:
        self.graph.nodes.append(node)
