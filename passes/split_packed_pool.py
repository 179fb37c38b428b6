"""A channels-last MaxPool of packed rows pools down the columns before unpacking, across them after.

quantize_int8 packs p result rows of a narrow convolution side by side in the lanes ([R, p*C]: p
neighbouring pixels of one image row per row). A MaxPool after it reads the unpacked map, so the
SXM first copies all of it into rows of C lanes ([N, H, W, C]). A max over a window is a max over
its columns of a max over its rows, and the max over rows needs no unpacking: row y of the packed
map holds the same pixels' lanes as row y of the image. So

    Reshape [R, p*C] -> [N, H, W, C] (SXM) -> MaxPool kh x kw
becomes
    MaxPool kh x 1 on [N, H, W/p, p*C] (the packed rows, a free view) -> Reshape [N, Ho, W, C] (SXM)
    -> MaxPool 1 x kw

which unpacks Ho / H of the map (half after a stride 2 pool) and takes kh + kw instead of kh * kw
VXM ops per result. Exact: both pools pad with the same fill, and each row window holds an image
row (pads are smaller than the kernel).
"""

from __future__ import annotations

import numpy as np

from lpuc.ir.graph import LPUC_DOMAIN, Graph, Node
from lpuc.passes.builder import NodeBuilder, replace_nodes
from lpuc.passes.eliminate_dead_code import eliminate_dead_code


def split_packed_pool(graph: Graph, ctx: object = None) -> Graph:
    producers, consumers = graph.producers(), graph.consumers()
    sources = {n.name: s for n in graph.nodes if (s := _packed_source(n, graph, producers, consumers))}
    if not sources:
        return graph
    out = replace_nodes(graph, lambda n, _: n.name in sources, lambda b: _split(b, sources[b.node.name]))
    return eliminate_dead_code(out)  # the unpacking Reshapes the pools read before are dead now


def _packed_source(
    node: Node, graph: Graph, producers: dict[str, Node], consumers: dict[str, list[Node]]
) -> str | None:
    """The packed [..., p*C] value a 2-D channels-last MaxPool reads through an unpacking Reshape
    (read by the pool alone), or None."""
    if node.op != "MaxPool" or node.domain != LPUC_DOMAIN or len([o for o in node.outputs if o]) != 1:
        return None
    kernel = list(node.attr("kernel_shape") or [])
    if (
        len(kernel) != 2
        or kernel[0] < 2
        or any(int(d) != 1 for d in node.attr("dilations") or [1, 1])
        or node.attr("ceil_mode", 0)
        or node.attr("storage_order", 0)
        or node.text_attr("auto_pad", "NOTSET") != "NOTSET"
    ):
        return None
    reshape = producers.get(node.inputs[0])
    if reshape is None or reshape.op != "Reshape" or reshape.domain or graph.touches_dynamic(reshape):
        return None
    if len(consumers.get(node.inputs[0], [])) != 1 or node.inputs[0] in graph.outputs:
        return None
    packed, unpacked = graph.values[reshape.inputs[0]].shape, graph.values[node.inputs[0]].shape
    if packed is None or unpacked is None or len(unpacked) != 4 or len(packed) < 2:
        return None
    _, _, w, c = unpacked
    pack, left = divmod(int(packed[-1]), int(c))
    if pack < 2 or left or w % pack or int(np.prod(packed)) != int(np.prod(unpacked)):
        return None
    return reshape.inputs[0]


def _split(b: NodeBuilder, packed: str) -> None:
    node = b.node
    n, h, w, c = b.shape(node.inputs[0])
    _, ho, wo, _ = b.shape(node.outputs[0])
    pack = b.shape(packed)[-1] // c
    (kh, kw), (sh, sw) = node.attr("kernel_shape"), node.attr("strides") or [1, 1]
    top, left, bottom, right = node.attr("pads") or [0, 0, 0, 0]
    dtype = b.dtype(node.outputs[0])
    common = {"ceil_mode": 0, "dilations": [1, 1]}
    rows = b.reshape(packed, (n, h, w // pack, pack * c), "packed_rows")  # the same [rows, cols] view
    down = b.emit(
        "MaxPool",
        [rows],
        (n, ho, w // pack, pack * c),
        dtype,
        "pool_rows",
        domain=LPUC_DOMAIN,
        kernel_shape=[kh, 1],
        strides=[sh, 1],
        pads=[top, 0, bottom, 0],
        **common,
    )
    unpacked = b.reshape(down, (n, ho, w, c), "unpack")
    across = b.emit(
        "MaxPool",
        [unpacked],
        (n, ho, wo, c),
        dtype,
        "pool_cols",
        domain=LPUC_DOMAIN,
        kernel_shape=[1, kw],
        strides=[1, sw],
        pads=[0, left, 0, right],
        **common,
    )
    b.bind_output(across, node.outputs[0])
