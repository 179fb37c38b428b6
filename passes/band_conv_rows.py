"""A narrow convolution a MaxPool reads packs p bands of image rows side by side in the lanes.

A convolution with few input channels and a narrow result (MTCNN ONet's first one: K 27, N 32 over
46x46 pixels) streams one pixel per vector: the MXM, the maps after it and the pool each stream all
2116 rows over 32 of the 320 lanes. Packing p consecutive result rows side by side (pack_conv_rows,
quantize_int8) shortens the product, but a MaxPool needs the pixels back one per row (an SXM copy of
every row) unless p divides the image width (split_packed_pool), and 46 = 2 * 23.

This pass packs p horizontal *bands* of the image instead: lane group g of packed row j holds result
row start_g + j, so the packed result is a channels-last image of Hb rows and p * N channels, and the
pool runs on it as it is (a window's pixels share their lane group). Each band covers the result
rows of some pooled rows (with the pool's halo); UnbandRows then copies every band's pooled rows into
place: [Ho', Wo, p N] -> [Ho, Wo, N], the pooled pixels only (a quarter of the unpooled ones after a
stride-2 pool).

Bands overlap by the pool's halo (ONet's 46 result rows: fp16 5 bands of 12, int8 8 of 8). The last
band ends at the image's end, so its end padding is the model's; the others keep only the pooled rows
whose windows lie inside them. The MXM multiplies the zero blocks and the overlapping rows too; the
product's model_blocks count at most the convolution's own MACs.
"""

from __future__ import annotations

import math

import numpy as np

from lpuc.ir.graph import LPUC_DOMAIN, Graph, Node
from lpuc.ir.model_work import ATTR as MODEL_BLOCKS
from lpuc.ir.model_work import flat
from lpuc.ops import is_elementwise
from lpuc.passes.builder import NodeBuilder
from lpuc.passes.eliminate_dead_code import eliminate_dead_code
from lpuc.passes.pack_conv_rows import PACK_MIN_SHORT_ROWS

# Only results this tall band (as pack_conv_rows packs: shorter ones gain less than the extra SXM
# copy costs). Large ones band too: each copy of the banded Im2Col and of UnbandRows reads only the
# input rows of its bands (lpuc.lowering.windowed.banded_slabs; read whole, light SqueezeNet's 111x111
# stem banded by 5 was slower: fp16 43,614 -> 44,397 cycles; in windows 42,130 (41,318 booking one port:
# lpuc.schedule.scheduler), int8 38,430 -> 35,709).
BAND_MIN_ROWS = PACK_MIN_SHORT_ROWS


def band_conv_rows(graph: Graph, ctx) -> Graph:
    mode = ctx.target.mxm_mode(ctx.precision)
    consumers = graph.consumers()
    plans = []
    for node in graph.nodes:
        plan = _plan(node, graph, consumers, ctx.target.lanes, mode.k_tile)
        if plan is not None:
            plans.append(plan)
    if not plans:
        return graph
    replaced = {n.name: plan for plan in plans for n in plan.nodes}
    out = graph.copy(nodes=[])
    for node in graph.nodes:
        plan = replaced.get(node.name)
        if plan is None:
            out.nodes.append(node)
        elif node is plan.nodes[-1]:  # the pool: emit the banded chain in its place
            b = NodeBuilder(out, node)
            _band(b, plan)
            out.nodes.extend(b.nodes)
    return eliminate_dead_code(out.prune_values())


class _Plan:
    """The nodes from an Im2Col to the MaxPool reading its product, and the bands to pack."""

    def __init__(self, nodes: list[Node], p: int, starts: list[int], keep: list[int], band_rows: int):
        self.nodes, self.p, self.starts, self.keep, self.band_rows = nodes, p, starts, keep, band_rows


def _plan(
    im2col: Node,
    graph: Graph,
    consumers: dict[str, list[Node]],
    lanes: int,
    k_tile: int,
) -> _Plan | None:
    if im2col.op != "Im2Col" or im2col.domain != LPUC_DOMAIN or _packed(im2col):
        return None
    chain = _chain(im2col, graph, consumers)
    if chain is None:
        return None
    matmul, pool = chain[0], chain[-1]
    (m, k), n = graph.values[im2col.outputs[0]].shape, graph.values[matmul.inputs[1]].shape[1]
    _, hc, wc, channels = graph.values[pool.inputs[0]].shape
    if m < BAND_MIN_ROWS or m != hc * wc or channels != n:
        return None
    p = min(lanes // n, k_tile // k)
    if p < 2:
        return None
    (kh, _), (sh, _) = pool.attr("kernel_shape"), pool.attr("strides") or [1, 1]
    ho = graph.values[pool.outputs[0]].shape[1]
    bands = row_bands(hc, ho, kh, sh, p)
    if bands is None or len(bands[0]) < 2:
        return None
    starts, keep, band_rows = bands
    p = len(starts)
    if 2 * band_rows * wc > m:  # (at least half the rows go: else the unbanding copy does not pay)
        return None
    return _Plan([im2col, *chain], p, starts, keep, band_rows)


def row_bands(hc: int, ho: int, kh: int, sh: int, p: int) -> tuple[list[int], list[int], int] | None:
    """(first pooled row of each of at most p bands, pooled rows each band keeps, result rows per band) for a
    pool of kh rows striding sh over hc result rows into ho (its end padding only past the last):
    the fewest result rows per band. Every band is as tall as the last, which ends at the image's
    end; the others keep the pooled rows whose windows lie inside them."""
    for last in range(math.ceil(ho / p), ho + 1):
        first = ho - last  # the last band's first pooled row
        rows = hc - sh * first
        inside = (rows - kh) // sh + 1 if rows >= kh else 0  # pooled rows without end padding
        if inside < 1 or (p - 1) * inside < first:
            continue
        starts = sorted({min(g * inside, first) for g in range(p)})  # (fewer bands may do)
        keep = [b - a for a, b in zip(starts, starts[1:])] + [last]
        return starts, keep, rows
    return None


def _packed(im2col: Node) -> bool:
    return any(im2col.attr(a) for a in ("pack_rows", "row_tiles", "const_columns", "slab", "row_bands"))


def _chain(im2col: Node, graph: Graph, consumers: dict[str, list[Node]]) -> list[Node] | None:
    """[MatMul, per-channel maps and the NHWC Reshape ..., MaxPool] reading the Im2Col's result in
    a line (each value read by the next alone), or None."""
    value, nodes = im2col.outputs[0], []
    while True:
        readers = consumers.get(value, [])
        if len(readers) != 1 or value in graph.outputs:
            return None
        node = readers[0]
        if not nodes:
            ok = node.op == "MatMul" and not node.domain and node.inputs[0] == value
            ok = ok and graph.is_const(node.inputs[1]) and len(graph.values[node.inputs[1]].shape) == 2
        elif node.op == "MaxPool" and node.domain == LPUC_DOMAIN:
            return [*nodes, node] if _poolable(node, graph) else None
        elif node.op == "Reshape" and not node.domain:
            ok = node.inputs[0] == value and len(graph.values[node.outputs[0]].shape) == 4
        else:
            ok = is_elementwise(node.op, node.domain) and _per_channel(node, value, graph)
        if not ok or len([o for o in node.outputs if o]) != 1:
            return None
        nodes.append(node)
        value = node.outputs[0]


def _poolable(pool: Node, graph: Graph) -> bool:
    shape = graph.values[pool.inputs[0]].shape
    top = (pool.attr("pads") or [0, 0, 0, 0])[0]
    return (
        shape is not None
        and len(shape) == 4
        and shape[0] == 1
        and len(pool.attr("kernel_shape") or []) == 2
        and int(top) == 0
        and not pool.attr("ceil_mode", 0)
        and not pool.attr("storage_order", 0)
        and all(int(d) == 1 for d in pool.attr("dilations") or [1, 1])
        and len([o for o in pool.outputs if o]) == 1
        and pool.text_attr("auto_pad", "NOTSET") == "NOTSET"
    )


def _per_channel(node: Node, value: str, graph: Graph) -> bool:
    """An elementwise op of `value` and constants that vary along the last axis at most."""
    if node.inputs[:1] != (value,) or graph.values[node.outputs[0]].shape != graph.values[value].shape:
        return False
    for name in node.inputs[1:]:
        if name and (not graph.is_const(name) or any(d != 1 for d in graph.values[name].shape[:-1])):
            return False
    return True


def _band(b: NodeBuilder, plan: _Plan) -> None:
    im2col, matmul, *maps, pool = plan.nodes
    p, graph = plan.p, b.graph
    (m, k), (_, n) = b.shape(im2col.outputs[0]), b.shape(matmul.inputs[1])
    _, hc, wc, _ = b.shape(pool.inputs[0])
    sh = (pool.attr("strides") or [1, 1])[0]
    rows = plan.band_rows * wc
    cols = b.emit(
        "Im2Col",
        list(im2col.inputs),
        (rows, p * k),
        b.dtype(im2col.outputs[0]),
        "im2col_banded",
        domain=LPUC_DOMAIN,
        **im2col.attrs,
        pack_rows=p,
        row_bands=[sh * s * wc for s in plan.starts],
        band_rows=rows,
    )
    weights = graph.values[matmul.inputs[1]].const
    value = b.emit(
        "MatMul",
        [cols, b.const("weights_banded", np.kron(np.eye(p, dtype=weights.dtype), weights))],
        (rows, p * n),
        b.dtype(matmul.outputs[0]),
        "matmul_banded",
        **{MODEL_BLOCKS: flat(model_blocks(p, k, n, rows, m))},
    )
    for node in maps:
        shape = b.shape(node.outputs[0])
        banded = (1, plan.band_rows, wc, p * n) if len(shape) == 4 else (rows, p * n)
        if node.op == "Reshape":
            value = b.reshape(value, banded, "banded_nhwc")
            continue
        operands = [value] + [_tiled(b, name, p) for name in node.inputs[1:]]
        value = b.emit(node.op, operands, banded, b.dtype(node.outputs[0]), node.op.lower(), **node.attrs)
    _, ho, wo, _ = b.shape(pool.outputs[0])
    pooled = b.emit(
        "MaxPool",
        [value],
        (1, max(plan.keep), wo, p * n),
        b.dtype(pool.outputs[0]),
        "pool_banded",
        domain=LPUC_DOMAIN,
        **pool.attrs,
    )
    bands = [v for s, keep in zip(plan.starts, plan.keep) for v in (s, keep)]
    unbanded = b.emit(
        "UnbandRows",
        [pooled],
        (1, ho, wo, n),
        b.dtype(pool.outputs[0]),
        "unband",
        domain=LPUC_DOMAIN,
        bands=bands,
    )
    b.bind_output(unbanded, pool.outputs[0])


def _tiled(b: NodeBuilder, name: str, p: int) -> str:
    """A per-channel constant repeated for p lane groups (one repeated along no axis stays)."""
    if not name:
        return name
    const = b.graph.values[name].const
    if const.ndim == 0 or const.shape[-1] == 1:
        return name
    return b.const("banded", np.tile(const, (1,) * (const.ndim - 1) + (p,)))


def model_blocks(p: int, k: int, n: int, rows: int, model_rows: int) -> list[tuple[int, int, int, int]]:
    """Blocks of kron(I_p, W) counted as model work per banded row, at most the convolution's own
    MACs over all `rows` (the bands' overlapping rows are multiplied twice): each diagonal block's
    columns cut to the share of the result rows that are the model's."""
    cols = min(n, n * model_rows // (p * rows))
    return [(j * k, (j + 1) * k, j * n, j * n + cols) for j in range(p)]
