"""Ops executed as one kernel over whole tensors (or over row slabs) on a VXM, SXM or the host.

The instruction reads every tile of its operands and writes every tile of its results; its
attributes describe how tiles assemble into the operand tensors, so the runtime can apply the op's
kernel. Row-wise ops along the last axis (softmax, layer norm, ...) become one instruction per row
slab, which lets slabs run on different ALUs in parallel.
"""

from __future__ import annotations

import numpy as np

from lpuc.cost import Work
from lpuc.dtypes import dtype_name
from lpuc.ir.graph import LPUC_DOMAIN, Graph, Node
from lpuc.ir.tiled import Ref, TensorTiles
from lpuc.jsonable import to_json
from lpuc.kernels._common import normalize_axis
from lpuc.lowering.builder import TiledBuilder, split_range, view_of
from lpuc.lowering.windowed import Window as _Window
from lpuc.lowering.windowed import (
    banded_slabs,
    reshape_slab_tiles,
    reshape_slabs,
    transpose_slabs,
    unpack_block_slabs,
    window_slabs,
)
from lpuc.ops import Placement

# Ops whose first input is addressed (gathered from), not streamed in full.
_GATHERS = frozenset({"Gather", "GatherElements", "GatherND"})
# Before opset 13 these flatten the input to 2-D at `axis`, whose default was 1 (not the last axis).
_SOFTMAX_FAMILY = frozenset({"Softmax", "LogSoftmax", "Hardmax"})


def _operand(
    b: TiledBuilder,
    t: TensorTiles,
    first: int,
    span: tuple[int, int] | None,
    windows: list[_Window] | None = None,
) -> tuple[dict, list[Ref]]:
    """Refs to the tiles of `t` (or to the tile rows holding view rows [lo, hi) `span` of it, or to
    `windows`: view rows [r0, r1) x cols [c0, c1) each) and how they assemble into the kernel operand.

    The runtime places each tile at its buffer's (r0 - row_offset, c0) in a [rows, cols] array and
    reshapes that to `shape` (a slab is handed over as a 2-D [slab_rows, cols] array). Windows
    declare only the rows and lanes the op uses: the cost model charges those, and the scheduler
    orders the op after the writers of those rows only; the kernel ignores the rest of its tiles.
    """
    br = t.block_rows
    if windows:
        # (windows in any order: an UnbandRows' bands lie side by side in the lanes)
        tile_rows = range(min(w[0] for w in windows) // br, (max(w[1] for w in windows) - 1) // br + 1)
        refs = [
            b.window(t, lo, hi, clo, chi)
            for r0, r1, c0, c1 in windows
            for lo, hi in split_range(r0, r1, br)
            for clo, chi in split_range(c0, c1, t.lanes)
        ]
    else:
        tile_rows = range(len(t.grid)) if span is None else range(span[0] // br, -(-span[1] // br))
        refs = [b.whole(buf) for row in t.grid[tile_rows.start : tile_rows.stop] for buf in row]
    desc = {"dtype": dtype_name(t.dtype), "first": first, "count": len(refs)}
    if _is_host(b, t):
        return {
            **desc,
            "host": True,
            "shape": None if t.shape is None else list(t.shape),
            "row_offset": 0,
        }, refs
    if span is None and not windows:
        return {**desc, "shape": list(t.shape), "row_offset": 0}, refs
    row_offset = tile_rows.start * br
    slab_rows = min(t.rows, tile_rows.stop * br) - row_offset
    return {**desc, "shape": [slab_rows, t.cols], "row_offset": row_offset}, refs


def rowwise_last_axis(node: Node, graph: Graph, placement: Placement) -> bool:
    """A row-wise op over the last axis: each result row depends on the same input row alone."""
    if not placement.rowwise or len([o for o in node.outputs if o]) != 1:
        return False
    rank = len(graph.values[node.inputs[0]].shape)
    default = 1 if node.op in _SOFTMAX_FAMILY and 0 < node.opset < 13 else -1
    return rank >= 1 and normalize_axis(int(node.attr("axis", default)), rank) == rank - 1


def is_windowed(node: Node, placement: Placement) -> bool:
    """A sliding window op (an Im2Col, a channels-last pooling) that lowering can cut into result row
    slabs."""
    if not placement.windowed or len([o for o in node.outputs if o]) != 1 or not node.attr("kernel_shape"):
        return False
    padded_by_rule = node.text_attr("auto_pad", "NOTSET") != "NOTSET"
    if node.attr("row_bands"):  # (a banded Im2Col's rows come from several bands: see _banded)
        return False
    return not padded_by_rule and not node.attr("ceil_mode", 0) and not node.attr("storage_order", 0)


def lower_stream(b: TiledBuilder, node: Node, placement: Placement, unit_class: str, opcode: str) -> None:
    ins = [b.tensor(i) if i else None for i in node.inputs]
    outs = [b.define(o) if o else None for o in node.outputs]
    if all(t is None or not t.tiles() for t in outs):
        return  # nothing to write: empty results
    slabs, kernel = [], None
    if unit_class != "HOST" and b.enabled("row_slabs") and is_windowed(node, placement):
        slabs = list(window_slabs(node, ins[0], outs[0]))
    elif unit_class != "HOST" and b.enabled("row_slabs") and placement.unit == "ALIAS" and outs[0].shape:
        # A reshape that is not a view (it regroups rows): a row-major copy, slab by slab.
        tiles = _reshape_slab_tiles(b, node, outs[0]) if b.enabled("pooled_unpack") else 1
        slabs, kernel = list(reshape_slabs(ins[0], outs[0], tiles)), ("ReshapeRows", LPUC_DOMAIN)
    elif unit_class == "SXM" and b.enabled("row_slabs") and node.op == "UnpackBlocks":
        q, blocks = int(node.attr("block_rows")), int(node.attr("blocks"))
        slabs = list(unpack_block_slabs(ins[0], outs[0], q, blocks))
    elif unit_class == "SXM" and b.enabled("row_slabs") and _banded(node):
        slabs = list(banded_slabs(node, ins[0], outs[0]))
    elif unit_class == "SXM" and b.enabled("row_slabs"):
        slabs, kernel = list(transpose_slabs(node, ins[0], outs[0])), ("TransposeRows", LPUC_DOMAIN)
    if len(slabs) > 1:
        # Slabs read the data (not a reshape's target shape), and a windowed op's weights whole.
        operands = ins if kernel is None and placement.windowed else ins[:1]
        for out_window, in_windows, slab in slabs:
            written = out_window if isinstance(out_window, list) else [out_window]
            windows, attrs = (in_windows, written), {"slab": slab}
            _emit(b, node, placement, unit_class, opcode, operands, outs, None, windows, attrs, kernel)
    elif unit_class == "SXM" and b.enabled("row_slabs") and len(spans := lane_slabs(node, ins, outs)) > 1:
        # Concat / Split along the lanes: each result row comes from the same row of every operand,
        # so the op copies tile row by tile row (consumers start on the first, both SXMs copy).
        data = len(ins) if node.op == "Concat" else 1
        for span in spans:
            _emit(b, node, placement, unit_class, opcode, ins, outs, span, spanned_inputs=data)
    elif unit_class != "HOST" and rowwise_last_axis(node, b.graph, placement):
        spans = _common_slabs(ins[0], outs[0])
        for i, span in enumerate(spans):
            _emit(b, node, placement, unit_class, opcode, _replicas(b, node, ins, i, len(spans)), outs, span)
    else:
        _emit(b, node, placement, unit_class, opcode, ins, outs, None)


def _banded(node: Node) -> bool:
    """An op of passes/band_conv_rows (a banded Im2Col, an UnbandRows)."""
    return node.domain == LPUC_DOMAIN and (
        node.op == "UnbandRows" or (node.op == "Im2Col" and bool(node.attr("row_bands")))
    )


def _reshape_slab_tiles(b: TiledBuilder, node: Node, y: TensorTiles) -> int:
    """Result tile rows per copy of a reshape that regroups rows (lpuc.lowering.windowed)."""
    readers = b.consumers.get(node.outputs[0], [])
    if len(readers) != 1 or not readers[0].outputs or not readers[0].outputs[0]:
        return 1
    name = readers[0].outputs[0]
    shape = b.graph.values[name].shape
    if shape is None or name in b.segment_rows or name in b.stacked_values or name in b.plane_rows:
        return 1  # (tiles cut otherwise than the reshape's)
    rows = view_of(tuple(shape))[0]
    return reshape_slab_tiles(y, readers[0], rows, b.rows_per_tile(rows))


def lane_slabs(node: Node, ins: list, outs: list) -> list[tuple[int, int]]:
    """Row spans a Concat or Split along the last axis can copy one at a time: spans ending at tile
    edges of every data operand and result ([] for any other op)."""
    if node.op not in ("Concat", "Split") or node.domain or ins[0] is None or ins[0].shape is None:
        return []
    data = list(ins) if node.op == "Concat" else ins[:1]
    tensors = [*data, *outs]
    rank = len(ins[0].shape)
    if rank < 2 or any(t is None or t.shape is None for t in tensors):
        return []
    default = 1 if node.op == "Concat" else 0
    if normalize_axis(int(node.attr("axis", default)), rank) != rank - 1:
        return []
    edge_sets = [{min(t.rows, r * t.block_rows) for r in range(len(t.grid) + 1)} for t in tensors]
    y = tensors[-1]
    spans, start = [], 0
    for rb in range(len(y.grid)):
        end = min(y.rows, (rb + 1) * y.block_rows)
        if all(end in edges for edges in edge_sets):
            spans.append((start, end))
            start = end
    return spans


def _replicas(b: TiledBuilder, node: Node, ins: list, index: int, count: int) -> list:
    """The operands slab `index` of `count` reads: a constant other than the first input (a
    LayerNorm's scale and bias rows) from copy index % copies, as maps do (constant_replicas), so
    the slabs running side by side do not queue for one slice's ports."""
    copies = min(count, -(-b.target.vxm_alus // b.target.mem_banks))
    if not b.enabled("constant_replicas") or index % max(1, copies) == 0:
        return ins
    return [
        b.const_tensor(name, t.dtype, replica=index % copies)
        if k > 0 and t is not None and b.graph.values[name].is_const and name not in b.host_tables
        else t
        for k, (name, t) in enumerate(zip(node.inputs, ins))
    ]


def _common_slabs(x: TensorTiles, y: TensorTiles) -> list[tuple[int, int]]:
    """Row spans that start and end at tile edges of both `x` and `y` (one per tile row when row
    segments gave them the same tiles): a kernel reads and writes whole tiles."""
    x_edges = {min(x.rows, r * x.block_rows) for r in range(len(x.grid) + 1)}
    slabs, start = [], 0
    for rb in range(len(y.grid)):
        end = min(y.rows, (rb + 1) * y.block_rows)
        if end in x_edges:
            slabs.append((start, end))
            start = end
    return slabs


def _emit(
    b,
    node,
    placement,
    unit_class,
    opcode,
    ins,
    outs,
    slab: tuple[int, int] | None,
    windows=None,
    windowed=None,
    kernel: tuple[str, str] | None = None,
    spanned_inputs: int = 1,
) -> None:
    """One instruction: whole tensors, the rows [lo, hi) `slab` of the results from the same rows of
    the first `spanned_inputs` inputs (row-wise ops; a lane Concat's every operand), or (windowed
    ops, `windowed` attrs) the result windows windows[1] from the windows windows[0] of the first
    input. `kernel`: (op, domain) of the kernel the runtime applies when it is not the node's own."""
    in_windows, out_windows = windows or (None, None)
    reads: list[Ref] = []
    in_desc: list[dict | None] = []
    for k, t in enumerate(ins):
        desc, refs = (
            (None, [])
            if t is None
            else _operand(
                b, t, len(reads), slab if k < spanned_inputs else None, in_windows if k == 0 else None
            )
        )
        in_desc.append(desc)
        reads += refs
    writes: list[Ref] = []
    out_desc: list[dict | None] = []
    for t in outs:
        desc, refs = (None, []) if t is None else _operand(b, t, len(writes), slab, out_windows)
        out_desc.append(desc)
        writes += refs
    node_attrs = dict(node.attrs)
    if windowed:
        node_attrs.update(windowed)
    elif slab is not None:
        node_attrs["axis"] = -1  # the kernel sees a 2-D [rows, cols] slab
        if "triangles" in node_attrs:
            node_attrs["row0"] = slab[0]  # where its generated causal mask starts
    op, domain = kernel or (node.op, node.domain)
    attrs = {
        "kernel": op,
        "domain": domain,
        "opset": node.opset,
        "attrs": to_json(node_attrs),
        "inputs": in_desc,
        "outputs": out_desc,
        "opsets": dict(sorted(b.graph.opsets.items())),
    }
    if unit_class == "HOST":
        b.emit(opcode, "HOST", reads, writes, node.name, _host_work(b, node, ins, outs), attrs=attrs)
        return
    streamed = reads
    if node.op in _GATHERS and in_desc[0] is not None:
        streamed = reads[in_desc[0]["count"] :]  # the table is addressed, only gathered rows move
    in_vectors = sum(r.nrows for r in streamed)
    out_vectors = sum(r.nrows for r in writes)
    out_elems = sum(r.nrows * r.nlanes for r in writes)
    if placement.input_reads:
        vectors = placement.input_reads * in_vectors + out_vectors
    else:
        vectors = int(np.ceil(placement.passes_for(node, b.graph) * (in_vectors + out_vectors)))
    if placement.alu_ops is not None:
        alu_ops = placement.alu_ops(node, b.graph, in_vectors, out_vectors, b.lanes)
        elem_ops = int(np.ceil(alu_ops * out_elems / max(1, out_vectors)))
    else:  # one ALU op per vector streamed
        alu_ops = vectors
        elem_ops = int(placement.passes_for(node, b.graph) * out_elems)
    work = Work(
        vectors=vectors,
        alu_ops=alu_ops if unit_class == "VXM" else 0,
        elem_ops=elem_ops if unit_class == "VXM" else 0,
    )
    b.emit(opcode, unit_class, reads, writes, node.name, work, attrs=attrs)


def _host_work(b: TiledBuilder, node: Node, ins: list, outs: list) -> Work:
    """A host op's work: it touches every operand byte (and does about one FLOP per element, a
    transform N log N), once per trip of a Loop; PCIe carries only what lives in SRAM and not on the
    host already (the model's inputs). Sizes that
    depend on data are taken at their compile-time maximum."""
    in_bytes = [_max_bytes(b, t) for t in ins if t is not None]
    out_bytes = [_max_bytes(b, t) for t in outs if t is not None]
    if node.op == "Gather" and ins[0] is not None and ins[0].name in b.host_tables:
        in_bytes[0] = sum(out_bytes)  # the host reads only the gathered rows of its table
    data_dependent = any(t is not None and t.shape is None for t in ins + outs)
    for t, nbytes in zip([t for t in outs if t is not None], out_bytes):
        if t.shape is None:
            b.max_bytes[t.name] = max(nbytes, sum(in_bytes))  # a result is at most as big as its inputs
            data_dependent = True
    trips = _trip_count(b, node)
    touched = trips * (sum(in_bytes) + sum(out_bytes))
    elems = trips * sum(
        nb // max(1, np.dtype(t.dtype).itemsize)
        for t, nb in zip(ins + outs, in_bytes + out_bytes)
        if t is not None
    )
    flops = elems * (max(1, int(np.log2(max(2, elems)))) if node.op in _TRANSFORMS else 1)
    # The model's own inputs start on the host: a host op reads its copy, nothing crosses PCIe for them.
    on_chip = [t for t in ins if t is not None and not _is_host(b, t) and t.name not in b.graph.inputs]
    to_host = sum(_nbytes(t) for t in on_chip)
    to_chip = sum(_nbytes(t) for t in outs if t is not None and not _is_host(b, t))
    return Work(
        host_flops=flops,
        host_bytes=touched,
        pcie_to_host=to_host,
        pcie_to_chip=to_chip,
        at_max=data_dependent or node.op in ("Loop", "Scan", "If"),
    )


# Host ops whose arithmetic grows as N log N (FFT-based).
_TRANSFORMS = frozenset({"DFT", "STFT"})


def _trip_count(b: TiledBuilder, node: Node) -> int:
    """A Loop's trip count when the compiler knows it (its M input is a constant), else one trip."""
    if node.op != "Loop" or not node.inputs or not node.inputs[0]:
        return 1
    value = b.graph.values[node.inputs[0]]
    if value.is_const:
        return max(1, int(np.asarray(value.const).reshape(-1)[0]))
    return 1


def _max_bytes(b: TiledBuilder, t: TensorTiles) -> int:
    if t.shape is not None:
        return _nbytes(t)
    return b.max_bytes.get(t.name, 0)


def _is_host(b: TiledBuilder, t: TensorTiles) -> bool:
    return bool(t.grid and t.grid[0]) and b.buffers[t.grid[0][0]].host


def _nbytes(t: TensorTiles) -> int:
    """Size of a static tensor (a dynamic one's is only known from its producer's maximum)."""
    return 0 if t.shape is None else t.rows * t.cols * np.dtype(t.dtype).itemsize
