"""Float builds: a tall, narrow convolution packs p of its Im2Col rows side by side in the lanes.

A convolution with few input channels (a stem: K = 3 * kh * kw) and a narrow result (N output
channels) fills K of the MXM's k_tile rows and N of its lanes, and streams one activation row per
result row. With p rows packed ([M, K] -> [M / p, p K], weights block-diagonal [p K, p N]) the MXM
streams M / p rows, each through ceil(p K / k_tile) weight tiles, and every map after the product
(bias, ReLU) runs over M / p rows of p N lanes. The packed result is one row-major reshape away from
[M, N] (sink_reshapes moves it below those maps; split_packed_pool below a MaxPool's row pass).

quantize_int8 does the same for int8 products (its own p, from 10000 rows on); this pass handles
the MatMuls it leaves: fp16 and fp32, whose k_tile (160 on tsp-v1) makes the best p the one with
the fewest weight passes per result row. The MXM multiplies the zero blocks too, but the lower
bounds count only the convolution's own MACs and weights (the product's model_blocks are the
diagonal blocks, lpuc.ir.model_work; lowering marks its weight loads block_diagonal p for the
weight-load bound), so packing cannot lower the bound it is measured by.
"""

from __future__ import annotations

import math

import numpy as np

from lpuc.ir.graph import LPUC_DOMAIN, Graph, Node
from lpuc.ir.model_work import ATTR as MODEL_BLOCKS
from lpuc.ir.model_work import block_diagonal, flat
from lpuc.passes.builder import NodeBuilder, replace_nodes
from lpuc.passes.eliminate_dead_code import eliminate_dead_code

# Packing pays for its unpacking (an SXM copy) in any case only for results at least this tall; a
# shorter one packs only for at least half the MXM passes. Measured on tsp-v1 fp16 (cnn_bench):
# packing ties at any height took light SqueezeNet from 51,394 to 56,757 cycles (its 3x3
# convolutions of 16 channels, K 144, by 2 at 55x55), and any fewer passes took the golden test's
# small ResNet (K 144 by 10 in 9 weight tiles) from 7,105 to 8,564; from 10000 rows on (stems:
# light Inception v2 136,313 -> 121,750) ties pay, and MTCNN ONet's 2116 rows of K 27 by 4 in one
# weight tile do (9,283 -> 8,549).
PACK_MIN_ROWS = 10000
# Nor does a product of fewer rows than this pack at all: it saves at most a few hundred MXM cycles,
# and its unpacking is one more SXM instruction (with the SXM's delay) on the way.
PACK_MIN_SHORT_ROWS = 1024


def pack_conv_rows(graph: Graph, ctx) -> Graph:
    if ctx.precision == "int8":  # quantize_int8 packed the int8 products already
        return graph
    mode = ctx.target.mxm_mode(ctx.precision)
    producers, consumers = graph.producers(), graph.consumers()
    packing = {}
    for node in graph.nodes:
        p = _packing(node, graph, producers, consumers, ctx.target.lanes, mode.k_tile, mode.n_tile)
        if p > 1:
            packing[node.name] = p
    if not packing:
        return graph
    out = replace_nodes(
        graph, lambda n, _: n.name in packing, lambda b: _pack(b, producers, packing[b.node.name])
    )
    return eliminate_dead_code(out)  # the unpacked Im2Cols


def _packing(
    node: Node,
    graph: Graph,
    producers: dict[str, Node],
    consumers: dict[str, list[Node]],
    lanes: int,
    k_tile: int,
    n_tile: int,
) -> int:
    """p for a MatMul of an Im2Col (read by it alone) by constant 2-D weights, else 1."""
    if node.op != "MatMul" or node.domain or len(node.inputs) != 2 or not graph.is_const(node.inputs[1]):
        return 1
    im2col = producers.get(node.inputs[0])
    if im2col is None or im2col.op != "Im2Col" or im2col.domain != LPUC_DOMAIN:
        return 1
    if int(im2col.attr("pack_rows", 1)) != 1 or len(consumers.get(node.inputs[0], [])) != 1:
        return 1
    a, w = graph.values[node.inputs[0]].shape, graph.values[node.inputs[1]].shape
    if len(a) != 2 or len(w) != 2 or a[0] < PACK_MIN_SHORT_ROWS:
        return 1
    p, passes = rows_side_by_side(a[0], a[1], w[1], min(lanes, n_tile), k_tile, ties=a[0] >= PACK_MIN_ROWS)
    # A shorter result packs only for at least half the MXM passes: its unpacking (an SXM copy of
    # every row) costs about what a smaller saving would gain
    return p if a[0] >= PACK_MIN_ROWS or 2 * passes <= p else 1


def rows_side_by_side(m: int, k: int, n: int, lanes: int, k_tile: int, ties: bool = True) -> tuple[int, int]:
    """(p, weight tiles a packed row passes through): p rows side by side (p dividing M, p N <=
    lanes) for a product whose K fills less than one weight tile, with the fewest MXM row passes
    M / p * ceil(p K / k_tile); with `ties`, also a p that only matches the fewest (the larger wins:
    the maps after the product stream fewer rows). (1, 1) for a K of a tile or more: its rows fill
    the plane already, and packing would multiply the weights by p^2 to save a partial tile's pass
    (ResNet-50's 3x3 convolutions of 64 channels, K 576, packed by 2: ResNet-50 v1.5 fp16 160,424 ->
    181,737 cycles)."""
    best, best_passes = 1, 1  # weight tiles each packed row passes through
    if k >= k_tile:
        return best, math.ceil(k / k_tile)
    for p in range(2, lanes // max(1, n) + 1):
        passes = math.ceil(p * k / k_tile)
        fewer = passes * best < best_passes * p  # passes / p < best_passes / best
        if m % p == 0 and (fewer or (ties and passes * best == best_passes * p)):
            best, best_passes = p, passes
    return best, best_passes


def _pack(b: NodeBuilder, producers: dict[str, Node], p: int) -> None:
    node = b.node
    im2col = producers[node.inputs[0]]
    (m, k), (n,) = b.shape(node.inputs[0]), b.shape(node.inputs[1])[1:]
    cols = b.emit(
        "Im2Col",
        list(im2col.inputs),
        (m // p, p * k),
        b.dtype(node.inputs[0]),
        "im2col_packed",
        domain=LPUC_DOMAIN,
        **im2col.attrs,
        pack_rows=p,
    )
    weights = b.graph.values[node.inputs[1]].const
    blocks = b.const("weights_packed", np.kron(np.eye(p, dtype=weights.dtype), weights))
    product = b.emit(
        "MatMul",
        [cols, blocks],
        (m // p, p * n),
        b.dtype(node.outputs[0]),
        "matmul_packed",
        **{MODEL_BLOCKS: flat(block_diagonal(p, k, n))},
    )
    b.bind_output(b.reshape(product, (m, n), "unpack"), node.outputs[0])
