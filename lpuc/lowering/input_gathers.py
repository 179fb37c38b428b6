"""Input-fed host gathers: an embedding lookup whose ids are a model input runs on the host before
the program starts, and its rows cross PCIe with the other inputs.

The host holds the ids before the run, so it can gather the rows of a table kept in host memory and
send them as one more input: the chip's schedule starts with the rows in SRAM, and the table's SRAM
(BERT-base's word embeddings: 30522 x 768, 44.7 MiB in fp16) is free for the build. Unlike a
host_tables Gather (ids chip -> host, rows back, two PCIe latencies inside the schedule), nothing is
waited for during the run; the cost is end to end only: the host's gather (lpuc.schedule.summary,
at host_gbytes_per_s) and the rows' PCIe bytes (counted as model input bytes).
"""

from __future__ import annotations

from dataclasses import dataclass

from lpuc.ir.graph import Graph
from lpuc.ir.tiled import TiledProgram
from lpuc.lowering.host_tables import table_bytes
from lpuc.target import Target


@dataclass(frozen=True)
class InputGather:
    """`rows` = Gather(`table`, `ids`, axis 0), `ids` a model input: computed on the host."""

    rows: str
    ids: str
    table: str


def input_fed_gathers(graph: Graph, tiled: TiledProgram, target: Target) -> list[InputGather]:
    """The Gathers of constant tables (read by nothing else) whose ids are a model input, in node
    order; only tables all of whose Gathers qualify (a table any chip op reads stays in SRAM) and
    whose SRAM is more than their gathered rows'."""
    users = graph.consumers()
    inputs = set(graph.inputs)
    on_host = {b.tensor for b in tiled.buffers if b.host and b.is_const}
    fed = []
    for name, nbytes in sorted(table_bytes(graph, tiled, target).items()):
        if name in on_host:  # (lowering moved it to host memory: it holds no SRAM there)
            nbytes = graph.values[name].nbytes
        readers = users[name]
        if not all(n.inputs[1] in inputs and n.attr("axis", 0) == 0 for n in readers):
            continue
        # The rows take SRAM as an input instead: a table no larger than its rows (BERT's two
        # token types) frees nothing and would only add host work and PCIe bytes.
        rows = sum(graph.values[n.outputs[0]].nbytes for n in readers)
        if nbytes > rows:
            fed += [InputGather(n.outputs[0], n.inputs[1], name) for n in readers]
    order = {n.outputs[0]: k for k, n in enumerate(graph.nodes)}
    return sorted(fed, key=lambda g: order[g.rows])


def gather_on_host(graph: Graph, gathers: list[InputGather]) -> Graph:
    """`graph` with each gather's rows a model input instead of a node's result; its table and, if
    nothing else reads them, its ids drop out of the chip's program (they stay on the host: the
    program's input binding of such ids has no tiles, lpuc.api.with_host_gathers)."""
    rows = {g.rows for g in gathers}
    out = graph.copy([n for n in graph.nodes if n.outputs[0] not in rows])
    read = {i for n in out.nodes for i in n.inputs} | set(out.outputs)
    host_only = {g.ids for g in gathers} - read
    out.inputs = [i for i in out.inputs if i not in host_only] + [g.rows for g in gathers]
    return out.prune_values()
