"""Graph IR -> Tiled IR: every node becomes tile ops on the unit class the op table names."""

from __future__ import annotations

import numpy as np

from lpuc.errors import UnsupportedError
from lpuc.ir.graph import LPUC_DOMAIN, Graph, Node
from lpuc.ir.tiled import TiledProgram
from lpuc.lowering.builder import TiledBuilder, view_of
from lpuc.lowering.concat_in_place import place_concats
from lpuc.lowering.elementwise import lower_map
from lpuc.lowering.epilogue import fuse_epilogues
from lpuc.lowering.host_tables import tables_for_host
from lpuc.lowering.map_chains import join_maps
from lpuc.lowering.matmul import lower_matmul, tapped_operand_rows
from lpuc.lowering.plane_rows import plane_rows
from lpuc.lowering.pool_slabs import pool_slab_rows
from lpuc.lowering.row_segments import segment_rows
from lpuc.lowering.stacked_results import stack_epilogue_results
from lpuc.lowering.stacked_rows import stacked_values
from lpuc.lowering.stream import lower_stream
from lpuc.ops import Placement, is_elementwise, placement
from lpuc.target import Target

# Lowering strategies, each of which can be turned off by name (like a pass) to measure its worth.
STRATEGIES = {
    "mxm_accumulators": "K chunks summed in a plane's accumulators, not through SRAM",
    "k_split": "a lone product's K split over MXM planes, a map adds the parts' fp32 partial results",
    "weight_spread": "constant weights tiled over slices so a weight load reaches its full rate",
    "row_slabs": "Im2Col, pooling, row-regrouping reshapes, transposes, lane Concat / Split in row slabs",
    "short_tiles": "conv nets: tensors shorter than four tiles get one tile more (later stages pipeline)",
    "fp16_storage": "fp16 builds store values that only feed the MXM (or copies of them) as fp16",
    "constant_replicas": "broadcast constants copied so parallel maps (kernel segments) share no ports",
    "row_segments": "row-wise kernels cut into short row segments (consumers start on the first)",
    "stacked_rows": "wide values only maps read cut into shorter tiles a map reads side by side",
    "stacked_products": "stacked_rows also for a product's result whose MMs end at the shorter tiles",
    "plane_rows": "a tall product's operand tiles cut so its accumulation chains share the planes evenly",
    "mxm_epilogues": "a map of an MM's result fused into the MM: its rows stream through the VXM",
    "map_chains": "a map of another map's (or a fused epilogue's) result joined to it: one VXM pass",
    "stacked_results": "a write-bound epilogue's result (fp32 model output) cut into tiles on several slices",
    "concat_in_place": "a lane Concat's operands written by their producers into its tiles (no copy)",
    "pooled_unpack": "an unpacking a strided 1 x kw pool reads copies a pool slab's tiles at a time",
    "pool_slabs": "a pool of one result tile row reading several cut into as many slabs (side by side)",
    # Applied by the sink_transposes pass, listed here to switch it off.
    "channels_last_depthwise": "a depthwise Conv of a channels-last value runs channels-last (no NCHW trip)",
    # Applied by the legalize_broadcast pass, listed here to switch it off.
    "expanded_broadcasts": "a value broadcast over leading dims (a mask over heads) expanded, not reread",
    # Applied by the row_taps pass, listed here to switch it off.
    "tap_tails": "row-tapped convs: each kernel row's short last K chunk in one chunk of them all",
    # Applied by the quantize_int8 pass, listed here to switch it off.
    "unsigned_activations": "int8: a ReLU's result only products read quantized unsigned (zero point -128)",
    # Applied by the address_heads pass, listed here to switch it off.
    "values_with_queries": "attention's V projected together with Q (V's columns first), not apart",
    # Applied by the fit ladder (lpuc.api._build_fitting), listed here to switch it off.
    "input_gathers": "short of SRAM: tables indexed by a model input gathered by the host before the run",
    # Applied when tiles are placed on slices (lpuc.schedule.placement), listed here to switch it off.
    "spread_accesses": "tiles used by ops close in program order placed on different slices",
    "weight_sides": "the constant tiles one weight load reads placed on one side of the VXM (short loads)",
}


def lower(
    graph: Graph,
    target: Target,
    precision: str,
    host_fallback: bool = True,
    where: str = "",
    disabled: frozenset[str] = frozenset(),
) -> TiledProgram:
    """Tile ops for every node. `disabled` names lowering strategies to leave out (STRATEGIES).
    Lookup tables move to host memory only if the constants overflow SRAM."""
    tiled = lower_with(graph, target, precision, host_fallback, where, disabled=disabled)
    tables = tables_for_host(graph, tiled, target) if host_fallback else frozenset()
    if tables:
        tiled = lower_with(graph, target, precision, host_fallback, where, tables, disabled)
    return tiled


def lower_with(
    graph: Graph,
    target: Target,
    precision: str,
    host_fallback: bool = True,
    where: str = "",
    host_tables: frozenset[str] = frozenset(),
    disabled: frozenset[str] = frozenset(),
) -> TiledProgram:
    """Lower with the constant tables `host_tables` kept in host memory (their Gathers on the host)."""
    where_ops = {n.name: unit_of(n, graph, host_tables) for n in graph.nodes}
    fp16 = mxm_rounded_values(graph) if precision == "fp16" and "fp16_storage" not in disabled else set()
    segments = segment_rows(graph, where_ops, target) if "row_segments" not in disabled else {}
    if "pool_slabs" not in disabled and "row_slabs" not in disabled:
        short_tiles = "short_tiles" not in disabled and any(n.op == "Im2Col" for n in graph.nodes)
        for name, rows in pool_slab_rows(graph, where_ops, target, short_tiles).items():
            segments.setdefault(name, rows)
    resident = host_resident_values(graph, where_ops)
    balanced = plane_rows(graph, where_ops, target, precision) if "plane_rows" not in disabled else {}
    balanced = {n: r for n, r in balanced.items() if n not in segments and n not in resident}
    balanced.update(tapped_operand_rows(graph))
    # (stacked_products: products' results too, and a map's fp16-stored result counts 2 words a row)
    products = (segments, fp16) if "stacked_products" not in disabled else ()
    stacked = (
        stacked_values(graph, where_ops, target, set(segments) | fp16 | resident, *products)
        if "stacked_rows" not in disabled
        else set()
    )
    b = TiledBuilder(
        graph,
        target,
        precision,
        host_resident=resident,
        host_tables=host_tables,
        fp16_values=fp16,
        disabled=disabled,
        segment_rows=segments,
        stacked_values=stacked,
        plane_rows=balanced,
    )
    for name in graph.inputs:
        b.define(name)
    host = [n for n in graph.nodes if where_ops[n.name] == "HOST"]
    if host and not host_fallback:
        listed = ", ".join(sorted({f"{n.op} ({n.name})" for n in host})[:8])
        raise UnsupportedError(
            f"{where or graph.name}: ops with no chip mapping and --no-host-fallback: {listed}"
        )
    for node in graph.nodes:
        unit = where_ops[node.name]
        p = placement(node.op, node.domain)
        if unit == "ALIAS":
            b.alias(node.outputs[0], b.tensor(node.inputs[0]))
        elif unit == "MXM":
            lower_matmul(b, node)
        elif unit == "MAP":
            lower_map(b, node)
        elif unit in ("VXM", "SXM"):
            lower_stream(b, node, p, unit, f"{unit.lower()}.kernel")
        else:
            lower_stream(b, node, Placement("HOST"), "HOST", "host.kernel")
    tiled = b.finish()
    tiled = fuse_epilogues(tiled, target) if b.enabled("mxm_epilogues") else tiled
    tiled = join_maps(tiled, target) if b.enabled("map_chains") else tiled
    tiled = stack_epilogue_results(tiled, target) if b.enabled("stacked_results") else tiled
    return place_concats(tiled, graph, target) if b.enabled("concat_in_place") else tiled


def host_resident_values(graph: Graph, where_ops: dict[str, str]) -> set[str]:
    """Host-op results that never need to reach SRAM: dynamic ones, and those read only on the host.

    Consecutive host ops thereby form one partition: data crosses PCIe only at its edges.
    """
    consumers = graph.consumers()
    outputs = set(graph.outputs)
    resident = set()
    for node in graph.nodes:
        if where_ops[node.name] != "HOST":
            continue
        for name in node.outputs:
            users = consumers.get(name, [])
            if name and (
                graph.values[name].is_dynamic
                or (all(where_ops[u.name] == "HOST" for u in users) and (users or name in outputs))
            ):
                resident.add(name)
    return resident


# Ops whose result, rounded to fp16, equals the op applied to fp16-rounded inputs (they copy or
# select values; rounding is monotonic).
_ROUNDING_TRANSPARENT = frozenset(
    {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Transpose", "Concat", "Slice", "MaxPool"}
)


def mxm_rounded_values(graph: Graph) -> set[str]:
    """float32 values an fp16 build may store as fp16 without changing any result: every use rounds
    them to fp16 anyway, because it is a MatMul (the MXM multiplies fp16) or an op that copies or
    selects values into another such value. Halves their SRAM, bank and stream traffic."""
    consumers = graph.consumers()
    outputs = set(graph.outputs)
    rounded: set[str] = set()
    # Results before the values they are computed from; model inputs last (the host converts them
    # before they cross PCIe; the program's inputs keep the model's dtype).
    names = [o for node in reversed(graph.nodes) for o in node.outputs] + list(graph.inputs)
    for name in names:
        v = graph.values.get(name)
        if not name or name in outputs or v is None or v.dtype != np.float32 or v.is_dynamic or v.is_const:
            continue
        users = consumers.get(name, [])
        if users and all(_rounds(u, name, rounded) for u in users):
            rounded.add(name)
    return rounded


def _rounds(user: Node, name: str, rounded: set[str]) -> bool:
    if (user.op, user.domain) in (("MatMul", ""), ("HeadMatMul", LPUC_DOMAIN)):
        return name in user.inputs[:2]
    transparent = user.op in _ROUNDING_TRANSPARENT or (
        user.domain == LPUC_DOMAIN and user.op in ("Im2Col", "MaxPool", "UnbandRows")
    )
    data = user.inputs[:1] if user.op in ("Reshape", "Slice", "Squeeze", "Unsqueeze") else user.inputs
    outs = [o for o in user.outputs if o]
    return transparent and name in data and len(outs) == 1 and outs[0] in rounded


def _integer_mxm_operands(node: Node, graph: Graph) -> bool:
    """MatMulInteger the int8 mode multiplies as it is: int8 operands, no zero points."""
    operands = [graph.values[i].dtype for i in node.inputs[:2]]
    return all(d == np.int8 for d in operands) and not any(node.inputs[2:])


def unit_of(node: Node, graph: Graph, host_tables: frozenset[str] = frozenset()) -> str:
    """The unit class a node lowers to: MAP (VXM map), MXM, VXM, SXM, ALIAS or HOST."""
    if graph.touches_dynamic(node) or (node.op == "Gather" and node.inputs[0] in host_tables):
        return "HOST"
    if is_elementwise(node.op, node.domain) or (node.domain == LPUC_DOMAIN and node.op == "Fused"):
        return "MAP"
    p = placement(node.op, node.domain)
    if p.unit == "ALIAS":
        outs = [o for o in node.outputs if o]
        src, dst = graph.values[node.inputs[0]], graph.values[outs[0]]
        if len(outs) == 1 and view_of(src.shape) == view_of(dst.shape) and src.dtype == dst.dtype:
            return "ALIAS"
        return "SXM"
    if p.unit == "MXM":
        # Ops rewritten by a pass (p.via) should be gone; MatMul must have 2-D+ operands.
        ok = node.op in ("MatMul", "HeadMatMul", "MatMulInteger") and all(
            len(graph.values[i].shape) >= 2 for i in node.inputs[:2]
        )
        return "MXM" if ok and (node.op != "MatMulInteger" or _integer_mxm_operands(node, graph)) else "HOST"
    if p.unit == "FOLD":
        return "HOST"  # not folded: its inputs are only known at run time
    return p.unit
