"""An fp16 build keeps its lookup tables in fp16: Gather(table) -> Cast(Gather(fp16 table)).

MXM weights are already stored at the MXM precision by the lowering; an embedding table is only
read by a Gather, which would keep it in fp32 and double its SRAM (BERT-base's word embeddings:
89 MiB instead of 45). The gathered rows are widened back to the graph's dtype by a Cast, which
fuses into the elementwise ops that follow (the embedding sums), so later ops still see fp32.
A table that is also an MXM weight (tied embeddings) is stored once: identical fp16 tiles share SRAM.
"""

from __future__ import annotations

import numpy as np

from lpuc.ir.graph import Graph, Node
from lpuc.passes.builder import NodeBuilder, replace_nodes


def store_tables_at_precision(graph: Graph, ctx=None) -> Graph:
    if ctx is None or ctx.precision != "fp16":
        return graph
    return replace_nodes(graph, _wide_table_gather, _narrow)


def _wide_table_gather(node: Node, g: Graph) -> bool:
    if node.op != "Gather" or node.domain or len(node.inputs) < 2 or not g.is_const(node.inputs[0]):
        return False
    table, out = g.values[node.inputs[0]], g.values[node.outputs[0]]
    return (
        table.dtype == np.float32
        and not g.is_const(node.inputs[1])  # fold_constants handles constant indices
        and out.shape is not None
    )


def _narrow(b: NodeBuilder) -> None:
    node = b.node
    table = b.graph.values[node.inputs[0]]
    narrow = b.const("table_fp16", np.asarray(table.const).astype(np.float16))
    out = b.graph.values[node.outputs[0]]
    rows = b.emit("Gather", [narrow, node.inputs[1]], out.shape, np.float16, "gather", **dict(node.attrs))
    b.nodes[-1] = b.nodes[-1].with_(name=node.name)  # errors (an index out of range) name the model's node
    b.bind_output(b.cast(rows, out.dtype), node.outputs[0])
