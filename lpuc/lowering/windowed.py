"""Where the slabs of a sliding-window op (Im2Col, channels-last pooling) read and write.

A slab computes one result tile row and reads only the input rows its windows touch
(lpuc.kernels.windows), as row windows of the input tiles: a slab is charged for the rows it streams
and waits only for the producers of those rows. A channels-first input (a model's NCHW image, read
by the first convolution's Im2Col) holds a position's channels in separate planes of rows: its
slab reads one window per plane. A packed Im2Col (pack_rows p: p result rows side by side) computes
p result rows per row of its tiles.

(Cutting every Im2Col slab further at the result's tile columns, so that a matmul's first K chunks
start on the first column tile, was measured slower on ResNet-50: a K-split conv needs all of its
column tiles at once, and each column slab streams the input rows again. A result of one tile row
is cut in two column halves, so that both SXMs work on it: ResNet-50 v1.5 int8 103,631 -> 102,491.)
"""

from __future__ import annotations

import math
from collections.abc import Iterator

from lpuc.ir.graph import LPUC_DOMAIN, Node
from lpuc.ir.tiled import TensorTiles
from lpuc.kernels.windows import halo_tiles, input_row_runs, input_windows

# View rows [r0, r1) x cols [c0, c1) of a tensor.
Window = tuple[int, int, int, int]


# Channels-first Im2Col is cut into slabs only for few channels (an image's RGB planes at the stem).
# A channels-first map of many channels (after a depthwise Conv kernel) would read a window of every
# plane in every slab: MobileNet-style fp16 took 359,755 cycles that way, 213,449 in one op.
CHANNELS_FIRST_SLAB_MAX = 4
# A channels-last Im2Col slab reads its input rows in up to this many runs (a 1x1 stride-2 window
# reads every other image row: one run each), beyond that in one range spanning them.
MAX_ROW_RUNS = 16


def window_slabs(node: Node, x: TensorTiles, y: TensorTiles) -> Iterator[tuple[Window, list[Window], dict]]:
    """(result window, input windows, the kernel's slab attribute) of each slab of `node`, which
    reads x and writes y, one result tile row at a time."""
    channels_first = node.op == "Im2Col" and not node.attr("channels_last", 0)
    if channels_first and x.shape[1] > CHANNELS_FIRST_SLAB_MAX:
        return  # each slab would gather a row window from every channel plane: one op streams better
    pack = int(node.attr("pack_rows", 1)) if node.op == "Im2Col" else 1
    # A channels-last Im2Col's slab reads only the input rows and channels its columns use.
    # (Not a packed one: its columns hold p result rows side by side.)
    channels_last_im2col = node.op == "Im2Col" and not channels_first and pack == 1
    for (r0, r1), out_rows in _result_slabs(node, y, pack):
        if channels_last_im2col and node.attr("halo_columns") is not None:
            ranges = _tails_input_runs(node, x, *out_rows)
        elif channels_last_im2col:
            ranges = input_row_runs(node.attrs, x.shape, *out_rows, MAX_ROW_RUNS)
        else:
            ranges = input_windows(node.attrs, x.shape, *out_rows, channels_first)
        slab = {"out_rows": out_rows, "in_row0": ranges[0][0] // x.block_rows * x.block_rows}
        if pack > 1 and node.attr("pack_blocks"):
            slab["packed_rows"] = [r0, r1]
        slab["in_shape"] = list(x.shape)
        if channels_first:
            slab["channels_first"] = True
        for c0, c1 in _column_pieces(node, x, y):
            lanes = _channels_read(node, x, c0, c1) if channels_last_im2col else (0, x.cols)
            yield _written(node, y, (r0, r1, c0, c1), out_rows), [(i0, i1, *lanes) for i0, i1 in ranges], slab


def _written(node: Node, y: TensorTiles, window: Window, out_rows: list[int]) -> Window | list[Window]:
    """What a slab writes: its result window; of a tapped Im2Col with tails (halo_columns h, a
    multiple of the lanes), the lane tiles from column h on only in the rows before the tile's step
    (its halo rows hold no tails: no tap reads them there, lpuc.kernels.lowered), as two windows."""
    h = node.attr("halo_columns") if node.op == "Im2Col" else None
    r0, r1, c0, c1 = window
    if h is None or int(h) % y.lanes or int(h) >= c1:
        return window
    rows, step, _ = (int(v) for v in node.attr("row_tiles"))
    tails_rows = min(out_rows[0] + step, rows) - out_rows[0]  # (a tile starts before the last row)
    h = max(int(h), c0)
    return ([(r0, r1, c0, h)] if c0 < h else []) + [(r0, r0 + tails_rows, h, c1)]


def _tails_input_runs(node: Node, x: TensorTiles, v0: int, v1: int) -> list[tuple[int, int]]:
    """The input rows a slab of a tapped Im2Col with tails (passes/row_taps: keep_columns,
    halo_columns) reads, sequence rows [v0, v1) of a halo layout's tile: its first columns, kernel
    row 0's 1 x kw window, in every row; the tails, of the whole kh x kw window, only in the rows
    before the tile's step (lpuc.kernels.lowered: the halo rows hold the pad value there)."""
    rows, step, _ = (int(v) for v in node.attr("row_tiles"))
    kh = int(node.attr("kernel_shape")[0])
    pads = [int(p) for p in node.attr("pads")]
    first_row = {**node.attrs, "kernel_shape": [1, *node.attr("kernel_shape")[1:]]}
    first_row["pads"] = [pads[0], pads[1], pads[2] - (kh - 1), pads[3]]
    ranges = input_row_runs(first_row, x.shape, v0, v1, MAX_ROW_RUNS)
    tails_end = min(v0 + step, rows)
    if tails_end > v0:
        ranges += input_row_runs(node.attrs, x.shape, v0, tails_end, MAX_ROW_RUNS)
    return _joined(ranges)


def _result_slabs(node: Node, y: TensorTiles, pack: int) -> list[tuple[tuple[int, int], list[int]]]:
    """((the result rows [r0, r1) a slab writes), the unpacked result rows it computes) per tile row
    of the result; of a result in a halo layout (row_tiles: a row-tapped product's columns), the
    rows of the sequence each tile holds."""
    if node.op == "Im2Col" and node.attr("row_tiles"):
        tiles = halo_tiles(*(int(v) for v in node.attr("row_tiles")))
        starts = range(0, y.rows, y.block_rows)
        return [((r0, r0 + v1 - v0), [v0, v1]) for r0, (v0, v1) in zip(starts, tiles)]
    blocks = node.attr("pack_blocks") if node.op == "Im2Col" and pack > 1 else None
    slabs = []
    for r0 in range(0, y.rows, y.block_rows):
        r1 = min(y.rows, r0 + y.block_rows)
        if blocks:  # (passes/pool_ordered_pack) the whole image rows its packed rows take pixels of
            per_row, width = int(blocks[0]), int(blocks[3])
            slabs.append(((r0, r1), [r0 // per_row * width, -(-r1 // per_row) * width]))
        else:
            slabs.append(((r0, r1), [r0 * pack, r1 * pack]))
    return slabs


def unpack_block_slabs(
    x: TensorTiles, y: TensorTiles, q: int, blocks: int
) -> Iterator[tuple[Window, list[Window], dict]]:
    """The same for an UnpackBlocks (passes/pool_ordered_pack) of x [rows, blocks * C] (q rows an
    image row) to y [rows * blocks, C]: result tile row [r0, r1) takes its image rows' q input rows
    each."""
    per_image_row = q * blocks
    for r0 in range(0, y.rows, y.block_rows):
        r1 = min(y.rows, r0 + y.block_rows)
        i0, i1 = r0 // per_image_row * q, -(-r1 // per_image_row) * q
        slab = {"out_rows": [r0, r1], "in_row0": i0 // x.block_rows * x.block_rows}
        yield (r0, r1, 0, y.cols), [(i0, i1, 0, x.cols)], slab


def _column_pieces(node: Node, x: TensorTiles, y: TensorTiles) -> list[tuple[int, int]]:
    """The result columns a slab writes: all of them; or (an Im2Col whose result is one tile row of
    several lane tiles: ResNet's 7x7 layers, 49 rows of 15 tiles) two halves at a lane tile edge, so
    that both SXMs copy one, each half streaming the slab's few input rows again (of the channels it
    uses); or (a channels-last 1x1 Im2Col, the strided subsampling of a downsample convolution) one
    piece per lane tile, which reads only the same lanes of the input: no input row is read twice."""
    tiles = -(-y.cols // y.lanes)
    if node.op != "Im2Col" or tiles < 2:
        return [(0, y.cols)]
    one_tap = math.prod(int(k) for k in node.attr("kernel_shape")) == 1
    unpacked = int(node.attr("pack_rows", 1)) == 1
    if one_tap and unpacked and node.attr("channels_last", 0) and x.lanes == y.lanes:
        return [(c0, min(y.cols, c0 + y.lanes)) for c0 in range(0, y.cols, y.lanes)]
    middle = (tiles + 1) // 2 * y.lanes
    # (constant columns come last and read no input: a half of only those has no lanes to read)
    if y.rows > y.block_rows or middle >= y.cols - len(node.attr("const_columns") or ()):
        return [(0, y.cols)]
    return [(0, middle), (middle, y.cols)]


def _channels_read(node: Node, x: TensorTiles, c0: int, c1: int) -> tuple[int, int]:
    """The input lanes [l0, l1) result columns [c0, c1) of a channels-last Im2Col read: its columns
    are channel-major (channel c's taps side by side), constant columns (const_columns) after them;
    of one that keeps only some of them (keep_columns: passes/row_taps' tails), those columns'."""
    taps = math.prod(int(k) for k in node.attr("kernel_shape"))
    keep = node.attr("keep_columns")
    if keep:
        channels = [int(col) // taps for col in keep[c0:c1]]
        return (min(channels), max(channels) + 1) if channels else (0, 1)
    return c0 // taps, (min(c1, taps * x.cols) - 1) // taps + 1


def reshape_slabs(
    x: TensorTiles, y: TensorTiles, tiles: int = 1
) -> Iterator[tuple[Window, list[Window], dict]]:
    """The same for a reshape that changes the [rows, cols] view (int8 packing: [R, p*C] <-> [R*p, C]):
    a row-major copy, so result rows [r0, r1) are the input's flat values [r0 * y.cols, r1 * y.cols),
    which lie in input rows [r0 * y.cols // x.cols, ceil(r1 * y.cols / x.cols)). Each copy writes
    `tiles` result tile rows (reshape_slab_tiles)."""
    step = max(1, tiles) * y.block_rows
    for r0 in range(0, y.rows, step):
        r1 = min(y.rows, r0 + step)
        i0, i1 = r0 * y.cols // x.cols, -(-r1 * y.cols // x.cols)
        slab = {"out_rows": [r0, r1], "in_row0": i0 // x.block_rows * x.block_rows, "out_cols": y.cols}
        yield (r0, r1, 0, y.cols), [(i0, i1, 0, x.cols)], slab


# A banded op's slabs read an input of at most this many rows whole: per-band windows save few rows
# there and made MTCNN ONet slower (fp16 7,289 -> 7,438 cycles, int8 5,937 -> 6,196: the
# copies' timing moves the schedule after them), while light SqueezeNet's 672-row image read in
# windows gains (fp16 43,614 -> 42,130, int8 38,430 -> 35,709).
BANDED_WHOLE_MAX_ROWS = 256


def banded_slabs(node: Node, x: TensorTiles, y: TensorTiles) -> Iterator[tuple[Window, list[Window], dict]]:
    """The same for an op of passes/band_conv_rows (a banded Im2Col, an UnbandRows): one copy per
    result tile row, so that the copies run on both SXMs and the next op starts on the first. Each
    reads, per band, only the input rows its result rows come from (a window per band, merged where
    they overlap): reading the input whole made every copy of a large map stream all of it."""
    for r0 in range(0, y.rows, y.block_rows):
        r1 = min(y.rows, r0 + y.block_rows)
        if x.rows <= BANDED_WHOLE_MAX_ROWS:
            windows = [(0, x.rows, 0, x.cols)]
        elif node.op == "UnbandRows":
            windows = _unband_windows(node, x, y, r0, r1)
        else:
            windows = _banded_im2col_windows(node, x, r0, r1)
        slab = {
            "out_rows": [r0, r1],
            "in_row0": windows[0][0] // x.block_rows * x.block_rows,
            "in_shape": [int(d) for d in x.shape],
        }
        yield (r0, r1, 0, y.cols), windows, slab


def _banded_im2col_windows(node: Node, x: TensorTiles, r0: int, r1: int) -> list[Window]:
    """Rows [r0, r1) of a banded Im2Col: lane group g holds the Im2Col's rows row_bands[g] + [r0, r1),
    whose windows read input rows near the band's (one range per plane of a channels-first image)."""
    channels_first = not node.attr("channels_last", 0)
    ranges = []
    for start in node.attr("row_bands"):
        lo, hi = int(start) + r0, int(start) + r1
        if channels_first:
            ranges += input_windows(node.attrs, x.shape, lo, hi, True)
        else:
            ranges += input_row_runs(node.attrs, x.shape, lo, hi, MAX_ROW_RUNS)
    return [(i0, i1, 0, x.cols) for i0, i1 in _joined(ranges)]


def _unband_windows(node: Node, x: TensorTiles, y: TensorTiles, r0: int, r1: int) -> list[Window]:
    """Result view rows [r0, r1) of an UnbandRows: the rows of band g, (start, count) image rows from
    image row start on, are the banded input's first count image rows in lane group g (a vector
    read carries every group: the bands' row ranges are read once)."""
    bands = [int(v) for v in node.attr("bands")]
    pairs = list(zip(bands[0::2], bands[1::2]))
    width = y.rows // (pairs[-1][0] + pairs[-1][1])  # view rows per image row
    ranges = []
    for start, count in pairs:
        lo, hi = max(r0, start * width), min(r1, (start + count) * width)
        if lo < hi:
            ranges.append((lo - start * width, hi - start * width))
    return [(i0, i1, 0, x.cols) for i0, i1 in _merged(ranges, x.block_rows)]


def _joined(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Row ranges sorted, those that overlap or touch joined (each input row is streamed once)."""
    out: list[tuple[int, int]] = []
    for i0, i1 in sorted(ranges):
        if out and i0 <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], i1))
        else:
            out.append((i0, i1))
    return out


def _merged(ranges: list[tuple[int, int]], block_rows: int) -> list[tuple[int, int]]:
    """Row ranges sorted, and within each tile row of block_rows rows joined into one spanning them:
    each access books a port on its slice, so a slab reads each tile it needs once."""
    spans: dict[int, tuple[int, int]] = {}
    for i0, i1 in ranges:
        for t in range(i0 // block_rows, (i1 - 1) // block_rows + 1):
            lo, hi = max(i0, t * block_rows), min(i1, (t + 1) * block_rows)
            old = spans.get(t, (lo, hi))
            spans[t] = (min(old[0], lo), max(old[1], hi))
    return _joined(list(spans.values()))  # (contiguous across a tile edge: one window)


def reshape_slab_tiles(y: TensorTiles, reader: Node, pooled_rows: int, pooled_block_rows: int) -> int:
    """Result tile rows per copy of a row-regrouping reshape: one, or as many as a slab of its one
    reader reads when that is a channels-last 1 x kw MaxPool striding s input rows per result row
    (split_packed_pool's pool after the unpacking) whose slabs end at the reshape's tile edges. Slab
    j of the pool waits for the reshape's rows up to (j + 1) * s * its tile rows anyway, so copies
    ending there start it no later, and each pays the SXM's latency once for several tiles:
    ResNet-50 v1.5 int8 84,175 -> 83,081 cycles (the stem pool's 20 unpacking copies become 10)."""
    if reader.op != "MaxPool" or reader.domain != LPUC_DOMAIN or pooled_rows <= 0 or y.rows % pooled_rows:
        return 1
    if int((reader.attr("kernel_shape") or [0])[0]) != 1:  # (a pool over image rows reads more of them)
        return 1
    per_slab = pooled_block_rows * (y.rows // pooled_rows)  # the reshape's rows one pool slab reads
    return per_slab // y.block_rows if per_slab % y.block_rows == 0 else 1


def transpose_slabs(
    node: Node, x: TensorTiles, y: TensorTiles
) -> Iterator[tuple[Window, list[Window], dict]]:
    """The same for a Transpose of one matrix (a [1, S, D] K -> [1, D, S] K^T): result tile row
    [r0, r1) is input lanes [r0, r1) of every input row, so each slab reads one lane tile of the
    input and starts once that tile is written (the projection writes K a column tile at a time),
    and the slabs run on the SXMs side by side. None for anything else (batches of matrices)."""
    if node.op != "Transpose" or node.domain or x.shape is None or len(x.shape) < 2:
        return
    rank = len(x.shape)
    perm = tuple(int(p) for p in node.attr("perm") or reversed(range(rank)))
    if perm != (*range(rank - 2), rank - 1, rank - 2) or any(int(d) != 1 for d in x.shape[:-2]):
        return
    for r0 in range(0, y.rows, y.block_rows):
        r1 = min(y.rows, r0 + y.block_rows)
        yield (r0, r1, 0, y.cols), [(0, x.rows, r0, r1)], {"out_rows": [r0, r1]}
