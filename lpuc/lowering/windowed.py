"""Where the slabs of a channels-last sliding-window op (Im2Col, pooling) read and write.

A slab computes one result tile row (rows [r0, r1)) and reads only the input rows its windows touch
(lpuc.kernels.windows), as row windows of the input tiles: a slab is charged for the rows it streams
and waits only for the producers of those rows.

(Cutting an Im2Col slab further at the result's tile columns, so that a matmul's first K chunks
start on the first column tile, was measured slower on ResNet-50: a K-split conv needs all of its
column tiles at once, and each column slab streams the input rows again.)
"""

from __future__ import annotations

from collections.abc import Iterator

from lpuc.ir.graph import Node
from lpuc.ir.tiled import TensorTiles
from lpuc.kernels.windows import input_rows

# View rows [r0, r1) x cols [c0, c1) of a tensor.
Window = tuple[int, int, int, int]


def window_slabs(node: Node, x: TensorTiles, y: TensorTiles) -> Iterator[tuple[Window, Window, dict]]:
    """(result window, input window, the kernel's slab attribute) of each slab of `node`, which reads
    x (channels-last [N, *spatial, C]) and writes y, one result tile row at a time."""
    for r0 in range(0, y.rows, y.block_rows):
        r1 = min(y.rows, r0 + y.block_rows)
        i0, i1 = input_rows(node.attrs, x.shape, r0, r1)
        slab = {"out_rows": [r0, r1], "in_row0": i0 // x.block_rows * x.block_rows, "in_shape": list(x.shape)}
        yield (r0, r1, 0, y.cols), (i0, i1, 0, x.cols), slab
