"""A packed convolution a strided MaxPool reads packs each image row's pixels in pool-sized blocks.

quantize_int8 packs p result pixels of a narrow convolution side by side in the lanes: row r holds
pixels p r .. p r + p - 1 of an image row. split_packed_pool pools down the image rows on that
layout, but the pool across the columns needs each pixel's neighbours in the same lanes, so the SXM
unpacks every pixel into a row of its own first (ResNet's stem: 56 x 112 rows of 64 lanes, one
vector each, for a pool that keeps 56 x 56 of them).

Here the packed rows of an image row hold p blocks of its pixels instead: block b of packed row k is
pixel start + b * step + k, for k < L, with step = s * Q pixels between blocks (Q = Wo / p pooled
results a block) and L = s (Q - 1) + kw rows an image row, start = -(left pad); pixels before 0 or
past the last are clamped to it, a pixel the same pool window holds (pads are smaller than the
kernel), so the max is unchanged. Neighbouring pixels are then in neighbouring rows at the same
lanes, and the whole kh x kw pool runs on the packed rows (padded only above and below):

    Im2Col (pack_rows p) -> product -> maps -> Reshape [N, H, W/p, pC] -> MaxPool kh x 1
        -> Reshape [N, Ho, W, C] (SXM: N Ho (W + W / p) vectors) -> MaxPool 1 x kw
becomes
    Im2Col (pack_rows p, pack_blocks [L, step, start, W]) -> product -> maps
        -> Reshape [N, H, L, pC] -> MaxPool kh x kw -> UnpackBlocks [N, Ho, Wo, C]
        (SXM: N Ho (Wo + Q) vectors)

(One kh x kw pool rather than split_packed_pool's kh x 1 and 1 x kw: fewer ALU ops here, kh kw Ho Q
against kh Ho L + kw Ho Q, and one kernel less between the product and the unpacking: ResNet-50
v1.5 int8 81,422 cycles with the two, 80,681 with one.)

The convolution computes L - W / p rows more an image row (the halo: ResNet-50's stem 29 instead
of 28, 3.6% more MXM rows and Im2Col vectors), so it is rewritten only where the SXM vectors saved
outweigh the MXM row passes added (_worth_it: int8 builds; in fp16 the MXM bounds the stem, and
ResNet-50 v1.5 fp16 took 158,275 cycles instead of 156,582 this way). Exact: the same pixels'
values, pooled over the same windows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lpuc.ir.graph import LPUC_DOMAIN, Graph, Node
from lpuc.passes.eliminate_dead_code import eliminate_dead_code
from lpuc.passes.row_taps import Rates

# Row-wise maps between the product and the pool a block layout passes through unchanged: each
# result row from the same row of its operand, constants broadcast over the rows.
_ROW_MAPS = frozenset({"Cast", "Mul", "Add", "Sub", "Relu", "Round", "Clip", "Max", "Min"})


@dataclass(frozen=True)
class _Match:
    im2col: Node
    product: Node
    maps: tuple[Node, ...]
    packed_rows: Node  # Reshape [R, p C] -> [N, H, W / p, p C]
    pool_rows: Node  # MaxPool kh x 1
    unpack: Node  # Reshape -> [N, Ho, W, C]
    pool_cols: Node  # MaxPool 1 x kw
    pack: int
    width: int  # W: result pixels of an image row
    pooled: int  # Wo


def pool_ordered_pack(graph: Graph, ctx: object = None) -> Graph:
    if ctx is None:
        return graph
    mode = ctx.target.mxm_mode(ctx.precision)
    rates = Rates(ctx.target.lanes, mode.k_tile, mode.cycles_per_row, ctx.target.num_sxm, ctx.target.num_mxm)
    producers, consumers = graph.producers(), graph.consumers()
    out = graph.copy()
    replacements: dict[str, list[Node]] = {}
    for node in graph.nodes:
        match = _match(node, graph, producers, consumers)
        if match is not None and _worth_it(match, graph, rates):
            replacements.update(_rewrite(out, match))
    if not replacements:
        return graph
    out.nodes = [new for n in graph.nodes for new in replacements.get(n.name, [n])]
    return eliminate_dead_code(out.prune_values())


def _only_reader(name: str, graph: Graph, consumers: dict[str, list[Node]]) -> Node | None:
    readers = consumers.get(name, [])
    return readers[0] if len(readers) == 1 and name not in graph.outputs else None


def _plain_pool(node: Node | None) -> bool:
    return (
        node is not None
        and node.op == "MaxPool"
        and node.domain == LPUC_DOMAIN
        and len([o for o in node.outputs if o]) == 1
        and all(int(d) == 1 for d in node.attr("dilations") or [1, 1])
        and not node.attr("ceil_mode", 0)
        and not node.attr("storage_order", 0)
        and node.text_attr("auto_pad", "NOTSET") == "NOTSET"
    )


def _match(node: Node, graph: Graph, producers: dict, consumers: dict) -> _Match | None:
    """The split_packed_pool chain ending at `node` (its 1 x kw pool), from a packed Im2Col, or None."""
    if not _plain_pool(node) or list(node.attr("kernel_shape") or [])[:1] != [1]:
        return None
    unpack = producers.get(node.inputs[0])
    if (
        unpack is None
        or unpack.op != "Reshape"
        or unpack.domain
        or _only_reader(unpack.outputs[0], graph, consumers) is None
    ):
        return None
    pool_rows = producers.get(unpack.inputs[0])
    if not _plain_pool(pool_rows) or list(pool_rows.attr("kernel_shape"))[1:] != [1]:
        return None
    if _only_reader(pool_rows.outputs[0], graph, consumers) is not unpack:
        return None
    packed_rows = producers.get(pool_rows.inputs[0])
    if packed_rows is None or packed_rows.op != "Reshape" or packed_rows.domain:
        return None
    if _only_reader(packed_rows.outputs[0], graph, consumers) is not pool_rows:
        return None
    maps: list[Node] = []
    value = packed_rows.inputs[0]
    while (p := producers.get(value)) is not None and p.op in _ROW_MAPS and not p.domain:
        if _only_reader(value, graph, consumers) is None or not _row_map(p, graph):
            return None
        maps.append(p)
        value = next(i for i in p.inputs if i and not graph.is_const(i))
    product = producers.get(value)
    if product is None or product.op not in ("MatMulInteger", "MatMul") or product.domain:
        return None
    if _only_reader(value, graph, consumers) is None:
        return None
    im2col = producers.get(product.inputs[0])
    if im2col is None or im2col.op != "Im2Col" or im2col.domain != LPUC_DOMAIN:
        return None
    pack = int(im2col.attr("pack_rows", 1))
    if pack < 2 or any(im2col.attr(a) for a in ("row_tiles", "pack_blocks", "row_bands")):
        return None
    if _only_reader(im2col.outputs[0], graph, consumers) is not product:
        return None
    n, h, per_row, packed_width = graph.values[packed_rows.outputs[0]].shape
    _, ho, wo, c = graph.values[node.outputs[0]].shape
    if packed_width != pack * c or graph.values[unpack.outputs[0]].shape != (n, ho, per_row * pack, c):
        return None
    if wo % pack or graph.values[value].shape[0] != n * h * per_row:
        return None
    if any(int(d) for d in (pool_rows.attr("pads") or [0] * 4)[1::2]):  # (no padding across the columns)
        return None
    left, right = (int(d) for d in (node.attr("pads") or [0] * 4)[1::2])
    kw = int(node.attr("kernel_shape")[1])
    if left >= kw or right >= kw:
        return None
    return _Match(
        im2col, product, tuple(reversed(maps)), packed_rows, pool_rows, unpack, node, pack, per_row * pack, wo
    )


def _row_map(node: Node, graph: Graph) -> bool:
    """A map of one computed operand whose others are constants broadcast over the rows (a scalar
    or one row)."""
    if len([o for o in node.outputs if o]) != 1:
        return False
    computed = [i for i in node.inputs if i and not graph.is_const(i)]
    constants = [graph.values[i].shape for i in node.inputs if i and graph.is_const(i)]
    return len(computed) == 1 and all(math.prod(shape[:-1]) == 1 for shape in constants)


def _geometry(m: _Match) -> tuple[int, int, int, int]:
    """(L, step, start, Q): packed rows an image row, pixels between blocks, block 0's first pixel,
    pooled results a block."""
    kw = int(m.pool_cols.attr("kernel_shape")[1])
    stride = int((m.pool_cols.attr("strides") or [1, 1])[1])
    left = int((m.pool_cols.attr("pads") or [0] * 4)[1])
    q = m.pooled // m.pack
    return stride * (q - 1) + kw, stride * q, -left, q


def _worth_it(m: _Match, graph: Graph, rates: Rates) -> bool:
    """Whether the SXM vectors saved outweigh the MXM row passes added (row_taps' rule: a vector
    costs an SXM a cycle, a row pass a plane cycles_per_row, lpuc.cost). The unpacking streams a
    vector per row read and written; the Im2Col writes ceil(K / lanes) vectors a halo row more, the
    product passes it through ceil(K / k_tile) weight tiles. In the float modes the MXM bounds the
    build (a row pass of 2 or 6 cycles): no pass is added there."""
    n, h, per_row, _ = graph.values[m.packed_rows.outputs[0]].shape
    ho = graph.values[m.pool_cols.outputs[0]].shape[1]
    rows, _, _, q = _geometry(m)
    k = graph.values[m.im2col.outputs[0]].shape[1]
    halo_rows = n * h * (rows - per_row)
    saved = n * ho * (m.width + per_row) - n * ho * (m.pooled + q) - halo_rows * math.ceil(k / rates.lanes)
    passes_added = halo_rows * math.ceil(k / rates.k_tile)
    if rates.cycles_per_row > 1 and passes_added > 0:
        return False
    return saved * rates.planes > passes_added * rates.cycles_per_row * rates.sxms


def _rewrite(out: Graph, m: _Match) -> dict[str, list[Node]]:
    """Replacement nodes by the name of the node they replace (an empty list: dropped)."""
    rows, step, start, q = _geometry(m)
    n, h, _, packed_width = out.values[m.packed_rows.outputs[0]].shape
    ho = out.values[m.pool_cols.outputs[0]].shape[1]
    total = n * h * rows

    def relaid(name: str, shape: tuple[int, ...]) -> str:
        return out.add_value(f"{name}/blocks", shape, out.values[name].dtype)

    cols_name = m.im2col.outputs[0]
    cols = relaid(cols_name, (total, out.values[cols_name].shape[1]))
    attrs = {**m.im2col.attrs, "pack_blocks": [rows, step, start, m.width]}
    new = {m.im2col.name: [m.im2col.with_(outputs=(cols,), attrs=attrs)]}
    renamed = {cols_name: cols}
    for node in (m.product, *m.maps):
        y = node.outputs[0]
        renamed[y] = relaid(y, (total, out.values[y].shape[1]))
        inputs = tuple(renamed.get(i, i) for i in node.inputs)
        new[node.name] = [node.with_(inputs=inputs, outputs=(renamed[y],))]
    image = relaid(m.packed_rows.outputs[0], (n, h, rows, packed_width))
    shape = out.add_const(f"{image}_shape", np.array([n, h, rows, packed_width], dtype=np.int64))
    new[m.packed_rows.name] = [
        m.packed_rows.with_(inputs=(renamed[m.packed_rows.inputs[0]], shape), outputs=(image,))
    ]
    new[m.unpack.name] = []
    across = out.add_value(
        f"{m.pool_cols.outputs[0]}/blocks", (n, ho, q, packed_width), out.values[m.pool_cols.outputs[0]].dtype
    )
    kh, kw = int(m.pool_rows.attr("kernel_shape")[0]), int(m.pool_cols.attr("kernel_shape")[1])
    sh, sw = int((m.pool_rows.attr("strides") or [1, 1])[0]), int((m.pool_cols.attr("strides") or [1, 1])[1])
    top, _, bottom, _ = (int(d) for d in m.pool_rows.attr("pads") or [0] * 4)
    new[m.pool_rows.name] = []
    pool = m.pool_cols.with_(
        name=f"{m.pool_cols.name}/blocks",
        outputs=(across,),
        inputs=(image,),
        attrs={
            **m.pool_cols.attrs,
            "kernel_shape": [kh, kw],
            "strides": [sh, sw],
            "pads": [top, 0, bottom, 0],
        },
    )
    unpack = Node(
        "UnpackBlocks",
        f"{m.pool_cols.name}/unpack_blocks",
        (across,),
        m.pool_cols.outputs,
        {"blocks": m.pack, "block_rows": q},
        LPUC_DOMAIN,
        m.pool_cols.opset,
    )
    new[m.pool_cols.name] = [pool, unpack]
    return new
