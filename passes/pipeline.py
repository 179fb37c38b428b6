"""The graph pass pipeline: one literal, ordered list.

Each pass is a function `(Graph, PassContext) -> Graph`. Instruments (IR verification, dumping the IR
after each pass as text and ONNX, timing, a progress bar) wrap the passes from outside; passes never
print or check on their own. Environment switches: LPUC_VERIFY=0 skips the verifier, LPUC_PRINT_IR=1
prints the IR after each pass to stderr.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lpuc import progress
from lpuc.calibration import Calibration
from lpuc.errors import LpucError
from lpuc.fileio import atomic_write
from lpuc.ir.graph import Graph
from lpuc.ir.printer import print_graph
from lpuc.ir.to_onnx import graph_to_onnx
from lpuc.ir.verify import verify_graph
from lpuc.passes.absorb_channel_shuffles import absorb_channel_shuffles
from lpuc.passes.address_heads import address_heads
from lpuc.passes.band_conv_rows import band_conv_rows
from lpuc.passes.canonicalize_matmul import canonicalize_matmul
from lpuc.passes.canonicalize_ops import canonicalize_ops
from lpuc.passes.copy_product_operands import copy_product_operands
from lpuc.passes.decompose_attention import decompose_attention
from lpuc.passes.decompose_lrn import decompose_lrn
from lpuc.passes.decompose_rnn import decompose_rnn
from lpuc.passes.distribute_scales import distribute_scales
from lpuc.passes.eliminate_dead_code import eliminate_dead_code
from lpuc.passes.eliminate_identity import eliminate_identity
from lpuc.passes.fold_batchnorm import fold_batchnorm
from lpuc.passes.fold_bias_columns import fold_bias_columns
from lpuc.passes.fold_constants import fold_constants
from lpuc.passes.fold_requantize import fold_requantize
from lpuc.passes.fold_score_scale import fold_score_scale
from lpuc.passes.fuse_elementwise import fuse_elementwise
from lpuc.passes.fuse_gelu import fuse_gelu
from lpuc.passes.fuse_layernorm import fuse_layernorm
from lpuc.passes.fuse_softmax import fuse_softmax
from lpuc.passes.inline_mask_selects import inline_mask_selects
from lpuc.passes.legalize_broadcast import legalize_broadcast
from lpuc.passes.lower_conv import lower_conv
from lpuc.passes.lower_einsum import lower_einsum
from lpuc.passes.lower_gemm import lower_gemm
from lpuc.passes.lower_quantized import lower_quantized
from lpuc.passes.multiply_by_reciprocals import multiply_by_reciprocals
from lpuc.passes.pack_conv_rows import pack_conv_rows
from lpuc.passes.pair_heads import pair_heads
from lpuc.passes.pool_ordered_pack import pool_ordered_pack
from lpuc.passes.quantize_int8 import quantize_int8
from lpuc.passes.quantize_residuals import quantize_residuals
from lpuc.passes.row_taps import row_taps
from lpuc.passes.sink_products import sink_products
from lpuc.passes.sink_reshapes import sink_reshapes
from lpuc.passes.sink_transposes import sink_transposes
from lpuc.passes.split_packed_pool import split_packed_pool
from lpuc.passes.store_int8_constants_fp16 import store_int8_constants_fp16
from lpuc.passes.store_int8_floats_fp16 import store_int8_floats_fp16
from lpuc.passes.store_kernel_floats_fp16 import store_kernel_floats_fp16
from lpuc.passes.store_tables_at_precision import store_tables_at_precision
from lpuc.passes.unit_transposes import unit_transposes
from lpuc.target import Target


@dataclass(frozen=True)
class PassContext:
    target: Target
    precision: str = "fp16"
    host_fallback: bool = True
    # Passes run_pipeline skips and lowering strategies lowering leaves out, by name (to measure what
    # each one is worth).
    disabled: frozenset[str] = frozenset()
    # int8 builds: the calibration inputs quantize_int8 measures activation ranges on.
    calibration: Calibration | None = None

    def __post_init__(self) -> None:
        from lpuc.lowering import STRATEGIES

        object.__setattr__(self, "disabled", frozenset(self.disabled))  # any iterable of names
        known = [*pass_names(), *STRATEGIES]
        unknown = sorted(set(self.disabled) - set(known))
        if unknown:
            raise LpucError(
                f"unknown pass or strategy {', '.join(map(repr, unknown))} (passes and lowering "
                f"strategies: {', '.join(known)})"
            )


GraphPass = Callable[[Graph, PassContext], Graph]


@dataclass(frozen=True)
class Pass:
    name: str
    run: GraphPass


PIPELINE: tuple[Pass, ...] = (
    # First: fold_constants would turn quantized weights' DequantizeLinear into float constants.
    Pass("lower_quantized", lower_quantized),
    Pass("fold_constants", fold_constants),
    Pass("canonicalize_ops", canonicalize_ops),
    Pass("decompose_rnn", decompose_rnn),
    Pass("eliminate_identity", eliminate_identity),
    Pass("lower_gemm", lower_gemm),
    # Once Gemms are MatMuls: attention's power-of-two score scale into the Q projection's weights.
    Pass("fold_score_scale", fold_score_scale),
    Pass("lower_einsum", lower_einsum),
    Pass("decompose_attention", decompose_attention),
    Pass("decompose_lrn", decompose_lrn),
    Pass("fold_batchnorm", fold_batchnorm),
    Pass("absorb_channel_shuffles", absorb_channel_shuffles),
    Pass("lower_conv", lower_conv),
    Pass("sink_transposes", sink_transposes),
    # The Transposes sink_transposes leaves that only move dims of size 1 are Reshapes.
    Pass("unit_transposes", unit_transposes),
    Pass("canonicalize_matmul", canonicalize_matmul),
    Pass("fold_constants", fold_constants),
    Pass("store_tables_at_precision", store_tables_at_precision),
    Pass("address_heads", address_heads),
    # Once Q @ K^T reads Q by heads and K^T as rows: two heads per product.
    Pass("pair_heads", pair_heads),
    Pass("fuse_layernorm", fuse_layernorm),
    Pass("fuse_gelu", fuse_gelu),
    # After the fusions that match float patterns, before fuse_elementwise merges its quantize and
    # requantize maps with their neighbours.
    # Before quantize_int8, which then quantizes the banded product (and packs no other way).
    Pass("band_conv_rows", band_conv_rows),
    Pass("quantize_int8", quantize_int8),
    # Float builds: the narrow convolutions quantize_int8 would have packed, before sink_reshapes.
    Pass("pack_conv_rows", pack_conv_rows),
    # A block output quantized for a product reaches the next residual Add in its int8 form.
    Pass("quantize_residuals", quantize_residuals),
    Pass("sink_reshapes", sink_reshapes),
    # Once sink_reshapes has moved the unpacking of packed rows next to the MaxPool that reads it.
    Pass("split_packed_pool", split_packed_pool),
    # Its pool across the columns then runs on packed rows laid out in pool-sized pixel blocks.
    Pass("pool_ordered_pack", pool_ordered_pack),
    # Once sink_reshapes has put each requantization chain together, before it is fused into a map.
    Pass("fold_requantize", fold_requantize),
    # The output scale a requantization keeps after a residual sum moves into both terms' scales.
    Pass("distribute_scales", distribute_scales),
    # Once the requantization is folded to Cast(acc) * S + B: B into the product's accumulator.
    Pass("fold_bias_columns", fold_bias_columns),
    Pass("row_taps", row_taps),
    # After the fusions matching Div patterns (fuse_gelu, fuse_layernorm): a Div by 2**k costs two
    # ALU ops, a Mul by 2**-k one.
    Pass("multiply_by_reciprocals", multiply_by_reciprocals),
    # Before fuse_elementwise: each map reading an attention mask's select computes it (1-byte reads).
    Pass("inline_mask_selects", inline_mask_selects),
    Pass("fuse_elementwise", fuse_elementwise),
    # Once maps are fused: which float values pass only from one map to others.
    Pass("store_int8_floats_fp16", store_int8_floats_fp16),
    Pass("store_kernel_floats_fp16", store_kernel_floats_fp16),
    # The scalar scales quantize maps read as fp16 (fp16 builds: a product map's exact scalars): 2
    # stream ids each instead of 4.
    Pass("store_int8_constants_fp16", store_int8_constants_fp16),
    Pass("legalize_broadcast", legalize_broadcast),
    Pass("fuse_softmax", fuse_softmax),
    # Once maps are fused: a product moves next to the map that reads it (an epilogue to be).
    Pass("sink_products", sink_products),
    # fp16: a value products and other ops read gets an fp16-stored copy for the products.
    Pass("copy_product_operands", copy_product_operands),
    Pass("eliminate_dead_code", eliminate_dead_code),
)


def pass_names() -> list[str]:
    """The names of the pipeline's passes, in order, each once."""
    return list(dict.fromkeys(p.name for p in PIPELINE))


@dataclass
class PassTimings:
    seconds: dict[str, float] = field(default_factory=dict)


def run_pipeline(
    graph: Graph,
    ctx: PassContext,
    dump_dir: Path | None = None,
    timings: PassTimings | None = None,
    passes: tuple[Pass, ...] = PIPELINE,
) -> Graph:
    verify = os.environ.get("LPUC_VERIFY", "1") != "0"
    echo = os.environ.get("LPUC_PRINT_IR") == "1"
    if dump_dir is not None:
        _dump(dump_dir, "00_import", graph)
    if verify:
        verify_graph(graph)
    with progress.stage("passes", total=len(passes)) as bar:
        for index, p in enumerate(passes, start=1):
            if p.name in ctx.disabled:
                bar.advance()
                continue
            bar.label(p.name)
            start = time.perf_counter()
            graph = p.run(graph, ctx)
            if timings is not None:
                timings.seconds[p.name] = timings.seconds.get(p.name, 0.0) + time.perf_counter() - start
            if verify:
                verify_graph(graph)
            if dump_dir is not None:
                _dump(dump_dir, f"{index:02d}_{p.name}", graph)
            if echo:
                print(f"--- after {p.name}\n{print_graph(graph)}", file=sys.stderr)
            bar.advance()
    return graph


def _dump(directory: Path, stem: str, graph: Graph) -> None:
    """The IR as text (for diffs) and as ONNX (for Netron; large constants left out)."""
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write(directory / f"{stem}.graph.txt", print_graph(graph))
    atomic_write(directory / f"{stem}.onnx", graph_to_onnx(graph).SerializeToString())
