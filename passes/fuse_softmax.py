"""Fuse the elementwise prologue of a last-axis Softmax into it: one row-wise `lpuc.FusedSoftmax`.

Attention scores are scaled and masked before their softmax, e.g. Softmax(Where(mask, -inf, s / c))
or Softmax(s * c + bias). After fuse_elementwise that prologue is one `lpuc.Fused` map: a whole-tensor
VXM pass that writes the scaled scores to SRAM for the softmax to read back. FusedSoftmax evaluates the
prologue's expression inside the softmax's own passes over each row instead (it is recomputed in each
of them: cheaper than a round trip through SRAM and a separate instruction on the critical path).

The rule is anchored at a Softmax over the last axis whose input is an elementwise or Fused node of
the same shape read by nothing else; the prologue's first operand must have that shape too (the row
slabs are cut from it), the others must be one row of the last axis (a [B, 1, 1, S] padding mask), a
scalar, or a constant causal mask: every [S, S] matrix of it holds one value on and above a diagonal
and another below it (GPT-2's masked_fill with triu(ones, 1), an additive [S, S] or [1, 1, S, S]
bias of 0 and -inf). The kernel generates such a mask from each row's and lane's position (two ALU
ops per element and pass, lpuc.ops) instead of streaming it: the fusion keeps its two values (a
2-element constant) and its diagonal (attr `triangles`: operand -> diagonal). Any other full-size
operand (a [B, 1, S, S] mask computed at run time) is refused: it would stream again in each of the
softmax's passes, which costs more than the separate map reading it once. A generated mask is fused
only when the softmax's row slabs still fit the VXM's ALUs side by side (see _slabs_fit_alus).
`match_softmaxes` returns the fusions and the candidates refused, with reasons.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from lpuc.cost import Work, vxm_alus
from lpuc.ir.graph import LPUC_DOMAIN, Graph, Node
from lpuc.kernels._common import normalize_axis
from lpuc.lowering.builder import default_block_rows
from lpuc.ops import is_elementwise, placement
from lpuc.passes.fuse_elementwise import node_steps
from lpuc.passes.legalize_broadcast import operand_mode
from lpuc.passes.pattern import Fusion, Refusal, Refused, View, apply_fusions, find_fusions
from lpuc.target import Target

RULE = "softmax"


def fuse_softmax(graph: Graph, ctx=None) -> Graph:
    return apply_fusions(graph, match_softmaxes(graph, ctx.target if ctx is not None else None)[0])


def match_softmaxes(graph: Graph, target: Target | None = None) -> tuple[list[Fusion], list[Refusal]]:
    """The softmax-prologue fusions in `graph` and the candidates refused, with reasons. Without a
    target, causal masks are not generated (whether that pays depends on the VXM's ALUs)."""
    return find_fusions(graph, RULE, functools.partial(_match, target=target))


def _match(view: View, softmax: Node, target: Target | None) -> Fusion | None:
    if softmax.op != "Softmax" or softmax.domain or view.graph.touches_dynamic(softmax):
        return None
    x = softmax.inputs[0]
    prologue = view.producers.get(x)
    if prologue is None or not _is_map(prologue) or view.graph.touches_dynamic(prologue):
        return None
    shape = view.graph.values[x].shape
    rank = len(shape)
    # Before opset 13 the softmax flattens from `axis` (default 1): the last axis only when it is last.
    default = 1 if 0 < softmax.opset < 13 else -1
    if rank == 0 or normalize_axis(int(softmax.attr("axis", default)), rank) != rank - 1:
        raise Refused(f"Softmax '{softmax.name}' is not over the last axis")
    view.check_float(x)
    view.check_private([prologue, softmax], softmax)
    operands = [view.graph.values[i].shape if i else None for i in prologue.inputs]
    if not prologue.inputs or operands[0] != shape:
        raise Refused(f"the first operand of '{prologue.name}' is not shaped like the scores {shape}")
    inputs: list[str | np.ndarray] = list(prologue.inputs)
    triangles: dict[str, int] = {}
    for k, (name, operand) in enumerate(zip(prologue.inputs, operands)):
        mode = None if operand is None or k == 0 else operand_mode(operand, shape)
        if operand is None or k == 0 or mode in ("row", "scalar"):
            continue
        found = causal_mask(view.graph.values[name].const, shape) if view.graph.is_const(name) else None
        if found is None:
            # A second full-size operand (a [.., S, S] mask) would stream again in every pass of the
            # softmax: more than the separate map costs (it reads it once).
            raise Refused(f"operand '{name}' of '{prologue.name}' is not one row, a scalar or a causal mask")
        triangles[str(k)], inputs[k] = found
    attrs = {"expr": node_steps(prologue, view.graph), "axis": -1}
    if triangles:
        attrs.update(triangles=triangles, matrix_rows=int(shape[-2]))
        if target is None or not _slabs_fit_alus(view.graph, x, attrs, target):
            raise Refused(
                f"a causal mask generated in '{softmax.name}' would need more VXM ALUs than its row "
                "slabs can share side by side"
            )
    names = (prologue.name, softmax.name)
    return Fusion(RULE, names, softmax, "FusedSoftmax", tuple(inputs), attrs, 1, LPUC_DOMAIN)


def _slabs_fit_alus(graph: Graph, x: str, attrs: dict, target: Target) -> bool:
    """Whether all row slabs of the fused softmax can run side by side on the VXM's ALUs. Generating
    the mask and recomputing the prologue in each of the three passes makes every slab hold more
    ALUs than the softmax and the map it replaces; once slabs queue for them (GPT-2's 12 heads x 128
    rows: 5 slabs of 9 ALUs) the fusion lengthens the schedule (369k -> 385k cycles, 12 layers)."""
    shape = graph.values[x].shape
    rows = math.prod(int(d) for d in shape[:-1])
    block_rows = default_block_rows(target)
    vectors = min(rows, block_rows) * -(-int(shape[-1]) // target.lanes)  # one slab's result vectors
    probe = Node("FusedSoftmax", "probe", (x,), ("probe",), attrs, LPUC_DOMAIN, 1)
    rule = placement("FusedSoftmax", LPUC_DOMAIN)
    alu_ops = rule.alu_ops(probe, graph, vectors, vectors, target.lanes)
    work = Work(vectors=rule.input_reads * vectors + vectors, alu_ops=alu_ops)
    return -(-rows // block_rows) * vxm_alus(target, "vxm.kernel", work) <= target.vxm_alus


def causal_mask(value: np.ndarray, shape: tuple[int, ...]) -> tuple[int, np.ndarray] | None:
    """(d, [on, off]) if `value`, broadcast to `shape`, is in every [S, S] matrix `on` where
    column - row >= d and `off` elsewhere (with both present), else None."""
    if len(shape) < 2 or value.dtype.kind not in "biuf":
        return None
    rows, cols = int(shape[-2]), int(shape[-1])
    try:
        matrices = np.broadcast_to(value, shape).reshape(-1, rows, cols)
    except ValueError:
        return None
    m = matrices[0]
    if rows < 2 or cols < 2 or (m.dtype.kind == "f" and np.isnan(m).any()):
        return None
    on, off = m[0, -1], m[-1, 0]  # above and below the diagonal
    if on == off:
        return None
    offsets = np.arange(cols)[None, :] - np.arange(rows)[:, None]
    is_on = m == on
    if not (is_on | (m == off)).all() or not is_on.any() or is_on.all():
        return None
    diagonal = int(offsets[is_on].min())
    if not np.array_equal(is_on, offsets >= diagonal) or not (matrices == m).all():
        return None
    return diagonal, np.array([on, off], dtype=value.dtype)


def _is_map(node: Node) -> bool:
    """An elementwise node or a fused elementwise expression, with one result."""
    fused = node.domain == LPUC_DOMAIN and node.op == "Fused"
    return len(node.outputs) == 1 and (fused or is_elementwise(node.op, node.domain))
