"""Which multiply-accumulates of a product are the model's own work (the MXM bound counts only those).

A pass that widens a product with constant operands (fold_bias_columns: bias digit rows in K, extra
constant output channels in N) or packs rows side by side over block-diagonal weights
(pack_conv_rows, quantize_int8: zero blocks) makes the MXM stream more lanes than the model
multiplies. The MXM is charged for all of them (lpuc.cost times an MM by its rows, not its MACs),
but the MXM bound -- "what no schedule can beat" for the model -- and the summary's `macs` must not
count them.

The node attribute `model_blocks` lists the product's model work as blocks of its weight [K, N]:
a flat list k0, k1, n0, n1, ... of half-open row and column ranges. Without it the whole [K, N] is
the model's.
"""

from __future__ import annotations

from lpuc.ir.graph import Node

ATTR = "model_blocks"

Block = tuple[int, int, int, int]  # k0, k1, n0, n1


def model_blocks(node: Node, k: int, n: int) -> list[Block]:
    """The blocks of `node`'s [k, n] weights that are model work (all of it without the attribute)."""
    flat = [int(v) for v in node.attr(ATTR) or ()]
    if not flat:
        return [(0, k, 0, n)]
    return [(flat[i], flat[i + 1], flat[i + 2], flat[i + 3]) for i in range(0, len(flat), 4)]


def block_diagonal(p: int, k: int, n: int) -> list[Block]:
    """The model work of p rows packed side by side (weights kron(I_p, W), W [k, n]): the p diagonal
    blocks; the zero blocks the MXM also multiplies are not the model's."""
    return [(j * k, (j + 1) * k, j * n, (j + 1) * n) for j in range(p)]


def flat(blocks: list[Block]) -> list[int]:
    """The attribute's value for `blocks`."""
    return [int(v) for b in blocks for v in b]


def rows_inserted(blocks: list[Block], k: int, extra: int, pack: int) -> list[Block]:
    """The blocks after `extra` constant rows follow each of `pack` groups of `k` rows (row r of group
    j moves to j (k + extra) + r mod k); a block spanning groups is cut at their edges."""
    out = []
    for k0, k1, n0, n1 in blocks:
        for j in range(pack):
            lo, hi = max(k0, j * k), min(k1, (j + 1) * k)
            if lo < hi:
                shift = j * extra
                out.append((lo + shift, hi + shift, n0, n1))
    return out


def macs_per_row(blocks: list[Block], k0: int, k1: int, n0: int, n1: int) -> int:
    """Model multiply-accumulates per activation row of an MM over weight rows [k0, k1) and columns
    [n0, n1) (blocks must not overlap)."""
    return sum(
        max(0, min(k1, b1) - max(k0, b0)) * max(0, min(n1, c1) - max(n0, c0)) for b0, b1, c0, c1 in blocks
    )
