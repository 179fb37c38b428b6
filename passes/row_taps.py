"""A KxK stride-1 convolution accumulates its kernel rows on the MXM (streamed row taps).

An Im2Col of a kh x kw window writes kh * kw * C columns per result row on the SXM, which lower_conv
multiplies by W [kh kw C, M]. Here the Im2Col gathers only a 1 x kw window over the input padded by
the kernel's row padding above and below (pads kept, kernel height 1): row (y, x) of that sequence
of (Ho + kh - 1) * Wo rows of kw C columns holds kernel row 0 of result (y, x), kernel row i of
result (y - i, x) as well. So the product is

    C[r] = sum_i A'[r + i * Wo] @ W_i        (W_i: W's rows of kernel row i, [kw C, M])

one product (MatMulInteger in int8 builds, MatMul in float ones) over K = kh * kw C with attribute
`row_taps` [0, Wo, 2 Wo, ...]: its MMs read kernel row i's K chunks from rows i * Wo further
(lpuc/lowering/matmul.py), and the plane sums them in its accumulators like any K chunks. The SXM
streams about kh times fewer result vectors; the MXM streams each result row through kh * ceil(kw C
/ k_tile) weight tiles instead of ceil(kh kw C / k_tile).

An MM reads one tile, so A is the sequence A' in a halo layout (attribute `row_tiles` [rows, step,
halo], lpuc.kernels.windows.halo_tiles): a tile per `step` result rows (the product's own tiles, as
lowering cuts them) holding the (kh - 1) * Wo rows after them too, which the SXM writes twice
(one tile per slice: the MMs of a tall A in one tile queued for one slice's ports and one side's
planes, ResNet-50 int8 94,425 cycles against 84,175 this way).

Tails (strategy "tap_tails"): where kw C is not a multiple of k_tile, each kernel row's last K
chunk is short (DenseNet's 128 -> 32 3x3 convolutions in int8: 384 + 57 bias columns = 320 + 121,
six row passes a result row where the whole Im2Col's 1209 columns take four). Then each row of the
columns holds kernel row 0's first `main` (whole lane tiles of whole K tiles) columns, which the kh taps read
from their rows as above, followed by every kernel row's remaining columns of its own result row
and the bias columns (an Im2Col of the kh x kw window that keeps those columns: attribute
keep_columns), read by one more block at offset 0 (attribute tap_columns: the columns each tap
reads): kh main chunks + one chunk of tails and bias a result row, four passes there. No tap reads
the tails of the halo rows: they hold the pad value (halo_columns), so the slabs read no more input
rows than plain taps, and write the lane tiles after `main` in the result rows only (569 columns:
two lane tiles in the result rows, one in the halo rows, where 441 took two in both). int8 takes
the layout worth most by worth_it's rule, float builds the one of fewest row passes.

Constant columns fold_bias_columns appended to the Im2Col (a bias in the accumulator) stay in every
row; only kernel row 0's weights keep their bias rows (the others get zero rows, no model work).
Batch 1 only (a batch's images would be kh - 1 rows apart), channels-last, unpacked Im2Cols read by
one product with plain model blocks, and only where it pays (worth_it: in the precision's MXM mode).
A float product sums its K in another order then (tap rows outermost), so its outputs differ from
the Im2Col build's by rounding; an integer one's are the same.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lpuc.ir.graph import LPUC_DOMAIN, Graph, Node
from lpuc.ir.model_work import ATTR as MODEL_BLOCKS
from lpuc.ir.model_work import flat, model_blocks
from lpuc.kernels.windows import halo_tiles
from lpuc.lowering.builder import default_block_rows, rows_per_tile, split_range
from lpuc.passes.eliminate_dead_code import eliminate_dead_code

ATTR = "row_taps"
# The strategy that lays each kernel row's short last K chunk side by side (module docstring).
TAILS = "tap_tails"


def row_taps(graph: Graph, ctx: object = None) -> Graph:
    precision = getattr(ctx, "precision", "")
    if precision not in ("int8", "fp16", "fp32"):
        return graph
    product_op = "MatMulInteger" if precision == "int8" else "MatMul"
    mode = ctx.target.mxm_mode(precision)
    rates = Rates(ctx.target.lanes, mode.k_tile, mode.cycles_per_row, ctx.target.num_sxm, ctx.target.num_mxm)
    block_rows = min(default_block_rows(ctx.target), ctx.target.mxm.acc_rows)
    short_tiles = "short_tiles" not in ctx.disabled
    tails = TAILS not in ctx.disabled
    producers, consumers = graph.producers(), graph.consumers()
    out = graph.copy()
    replaced: dict[str, Node] = {}
    for node in graph.nodes:
        im2col = _eligible(node, product_op, graph, producers, consumers)
        if im2col is None:
            continue
        step = rows_per_tile(graph.values[node.outputs[0]].shape[0], block_rows, short_tiles)
        layout = best_layout(graph, im2col, step, rates, tails)
        if not worth_it(graph, im2col, step, rates, layout):
            continue
        new_im2col, new_product = _rewrite(out, im2col, node, step, layout)
        if new_product is None:
            continue
        replaced[im2col.name], replaced[node.name] = new_im2col, new_product
    if not replaced:
        return graph
    out.nodes = [replaced.get(n.name, n) for n in graph.nodes]
    return eliminate_dead_code(out.prune_values())


def _eligible(node: Node, product_op: str, graph: Graph, producers: dict, consumers: dict) -> Node | None:
    """The Im2Col feeding `node` when `node` is a product (of the build's `product_op`) row taps can
    stream, else None."""
    if node.op != product_op or node.domain or len(node.inputs) != 2 or node.attr(ATTR):
        return None
    a, w = node.inputs
    im2col = producers.get(a)
    if im2col is None or im2col.op != "Im2Col" or im2col.domain != LPUC_DOMAIN or not graph.is_const(w):
        return None
    if len(consumers.get(a, [])) != 1 or a in graph.outputs or int(im2col.attr("pack_rows", 1)) != 1:
        return None
    dtype = np.dtype(graph.values[a].dtype)
    wanted = dtype == np.int8 if product_op == "MatMulInteger" else dtype.kind == "f"
    if not im2col.attr("channels_last", 0) or not wanted:
        return None
    x_shape = graph.values[im2col.inputs[0]].shape
    kernel = [int(k) for k in im2col.attr("kernel_shape")]
    if x_shape is None or len(x_shape) != 4 or int(x_shape[0]) != 1 or len(kernel) != 2 or kernel[0] < 2:
        return None
    strides = [int(s) for s in im2col.attr("strides") or [1, 1]]
    dilations = [int(d) for d in im2col.attr("dilations") or [1, 1]]
    return im2col if strides[0] == 1 and dilations[0] == 1 else None


@dataclass(frozen=True)
class Rates:
    """What worth_it weighs: lanes of a vector (the SXM streams one a cycle), the MXM mode's k_tile
    and cycles per row pass, and how many SXMs and MXM planes share the work."""

    lanes: int
    k_tile: int
    cycles_per_row: int
    sxms: int
    planes: int


@dataclass(frozen=True)
class Layout:
    """A row of a tapped Im2Col's columns: `width` columns; the kh taps read its first `main` (a
    kernel row's 1 x kw window: all of it, bias columns included, when `tails` is 0) from their
    rows, and one more block at offset 0 the rest: each kernel row's last `tails` window columns,
    then the bias columns."""

    width: int
    main: int
    tails: int = 0

    def blocks(self, kh: int) -> list[tuple[int, int]]:
        """A's columns [c0, c1) each tap block reads."""
        blocks = [(0, self.main)] * kh
        return blocks + [(self.main, self.width)] if self.tails else blocks

    def passes(self, kh: int, rates: Rates) -> int:
        """Row passes a result row takes: each block's K chunks, cut at k_tile steps from its start
        and at A's lane tiles (as lpuc.lowering.matmul cuts them)."""
        return sum(
            len(
                split_range(c0, c1, [c0 + k for k in range(rates.k_tile, c1 - c0, rates.k_tile)], rates.lanes)
            )
            for c0, c1 in self.blocks(kh)
        )


def _layouts(im2col: Node, k: int, rates: Rates, tails: bool) -> list[Layout]:
    """The layouts a row-tapped Im2Col of `k` columns (window and bias) may take."""
    kh = int(im2col.attr("kernel_shape")[0])
    extra = len(im2col.attr("const_columns") or ())
    row_window = (k - extra) // kh
    layouts = [Layout(row_window + extra, row_window + extra)]
    # Whole lane tiles of whole K tiles: the tails start on a lane tile of their own, which the halo
    # rows do not write. (fp16 tails after 160 or 1120 columns, which the halo rows wrote whole:
    # light AlexNet 87,306 -> 89,142 cycles, ONet 6,798 -> 7,042.)
    unit = math.lcm(rates.k_tile, rates.lanes)
    main = row_window // unit * unit
    width = main + kh * (row_window - main) + extra
    # Only where the tails take no lane tile more a row than the plain taps' window: light Inception
    # v2 int8 went 66,537 -> 67,250 cycles with its 192-channel ones too (576 + bias -> 320 + 768 +
    # bias columns, 3 -> 4 lane tiles, 9 -> 6 row passes).
    if (
        tails
        and 0 < main < row_window
        and -(-width // rates.lanes) <= -(-(row_window + extra) // rates.lanes)
    ):
        layouts.append(Layout(width, main, row_window - main))
    return layouts


def _gain(graph: Graph, im2col: Node, step: int, rates: Rates, layout: Layout) -> tuple[int, int]:
    """(SXM vectors saved, MXM row passes added) by the layout, against the whole Im2Col: it writes
    ceil(kh kw C / lanes) vectors a result row now, and ceil(width / lanes) a row of the halo
    layout then (each tile of `step` rows (kh - 1) image rows longer); the product passes ceil(K /
    k_tile) weight tiles a row now and layout.passes then."""
    rows, k = graph.values[im2col.outputs[0]].shape
    kh = int(im2col.attr("kernel_shape")[0])
    layout_rows = sum(v1 - v0 for v0, v1 in halo_tiles(rows, step, (kh - 1) * _out_width(graph, im2col)))
    vectors_saved = rows * math.ceil(k / rates.lanes) - layout_rows * math.ceil(layout.width / rates.lanes)
    passes_added = rows * (layout.passes(kh, rates) - math.ceil(k / rates.k_tile))
    return vectors_saved, passes_added


def best_layout(graph: Graph, im2col: Node, step: int, rates: Rates, tails: bool) -> Layout:
    """The layout (plain taps, or with tails) worth the most by worth_it's rule; in the float modes,
    where the MXM bounds the build, the one of fewest row passes first. (By fewest passes in int8
    too, ResNet-50 v1.5 went 80,681 -> 81,168 cycles: its 256-channel convolutions' tails save a
    pass of nine for a lane tile more a row, 825 -> 1081 columns, and the SXM bounds its early
    stages.)"""
    k = graph.values[im2col.outputs[0]].shape[1]
    layouts = _layouts(im2col, k, rates, tails)

    def rank(layout: Layout) -> tuple[int, int]:
        vectors_saved, passes_added = _gain(graph, im2col, step, rates, layout)
        worth = vectors_saved * rates.planes - passes_added * rates.cycles_per_row * rates.sxms
        return (passes_added if rates.cycles_per_row > 1 else 0, -worth)

    return min(layouts, key=rank)  # (the first of equals: plain taps)


def worth_it(graph: Graph, im2col: Node, step: int, rates: Rates, layout: Layout) -> bool:
    """Whether the SXM vectors saved outweigh the MXM rows added (_gain). A vector costs an SXM a
    cycle, a row pass a plane cycles_per_row (lpuc.cost), each shared over the chip's SXMs and
    planes. (Measured on ResNet-50 v1.5 int8, where every stride-1 3x3 convolution passes this:
    converting all of them beat converting only those of 14x14 and 7x7.) Where a row pass takes
    several cycles (the float modes: fp16 2, fp32 6), the MXM is what bounds the build and no row
    pass may be added: fp16 convs that save SXM vectors for one more K tile a row (128 channels
    without tails: 8 -> 9) lost on DenseNet-121 (351,928 -> 368,299 cycles, every 3x3 conv of 128
    channels) and Inception v1; those that add none (3 C a multiple of k_tile or just below one:
    160, 256 channels) won on ResNet-50 v1.5 (160,337 -> 156,814) and AlexNet (91,334 -> 85,066)."""
    vectors_saved, passes_added = _gain(graph, im2col, step, rates, layout)
    if rates.cycles_per_row > 1 and passes_added > 0:
        return False
    return vectors_saved * rates.planes > passes_added * rates.cycles_per_row * rates.sxms


def _out_width(graph: Graph, im2col: Node) -> int:
    """Result positions per image row (Wo)."""
    rows = graph.values[im2col.outputs[0]].shape[0]
    x_shape = graph.values[im2col.inputs[0]].shape
    kh = int(im2col.attr("kernel_shape")[0])
    pads = [int(p) for p in im2col.attr("pads") or [0, 0, 0, 0]]
    out_height = int(x_shape[1]) + pads[0] + pads[2] - kh + 1
    return rows // out_height


def _rewrite(out: Graph, im2col: Node, product: Node, step: int, layout: Layout) -> tuple[Node, Node | None]:
    """The tapped Im2Col (1 x kw, or kh x kw keeping the layout's columns) and the row-tapped
    product replacing `im2col` and `product` (None when the product's model blocks are not the plain
    [kh kw C, n] ones this rewrite knows how to move)."""
    cols_name = im2col.outputs[0]
    rows, k = out.values[cols_name].shape
    kh, kw = (int(d) for d in im2col.attr("kernel_shape"))
    extra = len(im2col.attr("const_columns") or ())
    model_k = k - extra
    channels = model_k // (kh * kw)
    width = _out_width(out, im2col)
    w = np.asarray(out.values[product.inputs[1]].const)
    n = w.shape[1]
    blocks = model_blocks(product, k, n)
    if any(b[0] != 0 or b[1] not in (model_k, k) for b in blocks):
        return im2col, None
    row_window = channels * kw
    # Im2Col columns are channel-major: column c * kh * kw + i * kw + j is channel c, tap (i, j).
    taps = w[:model_k].reshape(channels, kh, kw, n)
    kernel_rows = [taps[:, i].reshape(row_window, n) for i in range(kh)]
    main, tail = layout.main if layout.tails else row_window, layout.tails
    # Weights: each tap's main rows, then (tails) every kernel row's tail rows, then the bias rows.
    parts = [r[:main] for r in kernel_rows] + [r[main:] for r in kernel_rows if tail]
    bias = w[model_k:]
    if not tail:  # the bias rows after kernel row 0's (the other taps' get zero rows)
        zeros = np.zeros((extra, n), w.dtype)
        parts = [x for i, p in enumerate(parts) for x in (p, bias if i == 0 else zeros)]
    weights = np.concatenate(parts + ([bias] if tail else []), axis=0)
    k_taps = main + (0 if tail else extra)  # K rows of each tap's block
    new_blocks = [(i * k_taps, i * k_taps + main, n0, n1) for i in range(kh) for _, _, n0, n1 in blocks]
    if tail:
        tails0 = kh * main
        new_blocks += [(tails0, tails0 + kh * tail, n0, n1) for _, _, n0, n1 in blocks]
        new_blocks += [
            (tails0 + kh * tail, len(weights), n0, n1) for _, k1, n0, n1 in blocks if k1 == k and extra
        ]
    else:
        new_blocks += [(main, main + extra, n0, n1) for _, k1, n0, n1 in blocks if k1 == k and extra]
    # The columns in their halo layout: a tile per `step` result rows (the product's tiles, as
    # lowering cuts them), each with the (kh - 1) image rows after them its taps read too.
    tiles = [rows, step, (kh - 1) * width]
    layout_rows = sum(v1 - v0 for v0, v1 in halo_tiles(*tiles))
    cols = out.add_value(f"{cols_name}/row_taps", (layout_rows, layout.width), out.values[cols_name].dtype)
    attrs = {**im2col.attrs, "kernel_shape": [1, kw], "row_tiles": tiles}
    if tail:  # the whole window over kh - 1 more rows at the end, keeping the layout's columns
        pads = [int(p) for p in im2col.attr("pads") or [0, 0, 0, 0]]
        keep = [(q // kw) * kh * kw + q % kw for q in range(main)]
        keep += [(q // kw) * kh * kw + i * kw + q % kw for i in range(kh) for q in range(main, row_window)]
        pads = [pads[0], pads[1], pads[2] + kh - 1, pads[3]]
        # (the halo rows' tails are read by no tap: halo_columns spares their windows' input rows)
        attrs.update(kernel_shape=[kh, kw], pads=pads, keep_columns=keep, halo_columns=main)
    new_im2col = im2col.with_(outputs=(cols,), attrs=attrs)
    w_name = out.add_const(f"{product.inputs[1]}/row_taps", weights)
    attrs = {
        **product.attrs,
        ATTR: [i * width for i in range(kh)] + ([0] if tail else []),
        "row_tiles": tiles,
        MODEL_BLOCKS: flat(new_blocks),
    }
    if tail:
        attrs["tap_columns"] = [c for block in layout.blocks(kh) for c in block]
    return new_im2col, product.with_(inputs=(cols, w_name), attrs=attrs)
