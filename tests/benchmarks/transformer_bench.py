"""Transformer section of `make bench`: BERT-base and a GPT-2-shaped decoder on one chip, in fp16
and int8 (int8 calibrated on seeded random inputs, as `lpuc compile --precision int8` does).

Per model: compile time, cycles, latency on the chip, the hardware bound, cycles / bound and what
sets it, SRAM (peak live, constants and their lane padding), tables kept in host memory, and the
cosine similarity of one run against onnxruntime (fp32) on seeded inputs. The runtime is not timed
(one BERT-base run takes seconds). The GPT-2 shape with its real 50257-token vocabulary does not fit
one chip; its one-line error (largest tensors, chips needed) is printed instead.

python -m tests.benchmarks.transformer_bench [--precisions fp16,int8] [--models bert,gpt2]
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

import lpuc
from lpuc.errors import DoesNotFitError
from lpuc.report import bound_by
from tests.benchmarks.compile_bench import Case, model_file
from tests.models import ort_run
from tests.similarity import cosine

MiB = 2**20


def _bert() -> tuple[Path, dict[str, np.ndarray]]:
    from tests import zoo
    from tests.test_bert import bert_feeds

    return zoo.bert_onnx(), bert_feeds()


def _gpt2(vocab: int) -> Callable[[], tuple[Path, dict[str, np.ndarray]]]:
    def build() -> tuple[Path, dict[str, np.ndarray]]:
        ids = np.random.default_rng(3).integers(0, vocab, (1, 128)).astype(np.int64)
        return model_file(Case(12, vocab, full=True)), {"ids": ids}

    return build


CASES: list[tuple[str, Callable[[], tuple[Path, dict[str, np.ndarray]]]]] = [
    ("bert-base s128", _bert),
    ("gpt2-12L v2048 s128", _gpt2(2048)),
    ("gpt2-12L v50257 s128", _gpt2(50257)),
]


def bench_transformers(precisions: tuple[str, ...] = ("fp16", "int8"), only: tuple[str, ...] = ()) -> None:
    header = (
        f"{'model':<22}{'prec':<6}{'compile s':>10}{'cycles':>10}{'us':>9}{'bound':>9}{'(by)':>6}{'ratio':>7}"
        f"{'peak MiB':>10}{'const MiB':>10}{'pad MiB':>9}{'host MiB':>9}{'cosine':>10}"
    )
    print(header)
    print("-" * len(header))
    cases = [(n, b) for n, b in CASES if not only or any(o in n for o in only)]
    for (name, build), precision in ((c, p) for p in precisions for c in cases):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            path, feeds = build()
            start = time.perf_counter()
            try:
                program = lpuc.compile(path, precision=precision)
            except DoesNotFitError as e:
                print(f"{name:<22}{precision:<6}{time.perf_counter() - start:>10.2f}  does not fit: {e}")
                continue
            compile_s = time.perf_counter() - start
            got = program.run(feeds)
        worst = min(cosine(v, e) for v, e in zip(got.values(), ort_run(path, feeds)))
        s = program.summary
        bounds = s["lower_bound_cycles"]
        binding = bound_by(s)
        print(
            f"{name:<22}{precision:<6}{compile_s:>10.2f}{s['cycles']:>10}{s['latency_us']:>9.1f}"
            f"{bounds['overall']:>9}{binding[:5]:>6}{s['bound_ratio']:>7.1f}"
            f"{s['sram_peak_bytes'] / MiB:>10.2f}{s['sram_const_bytes'] / MiB:>10.2f}"
            f"{s['sram_const_padding_bytes'] / MiB:>9.2f}{sum(s['host_tables'].values()) / MiB:>9.2f}"
            f"{worst:>10.6f}",
            flush=True,
        )
        if s["host_tables"]:
            tables, ops = ", ".join(s["host_tables"]), ", ".join(s["host_nodes"])
            print(f"{'':<22}host-memory tables: {tables} (host ops: {ops})")
        if s.get("host_gathers"):
            tables = ", ".join(sorted(set(s["host_gathers"].values())))
            us = s["host_gather_cycles"] * s["latency_us"] / s["cycles"]  # (the target's clock)
            print(f"{'':<22}gathered by the host before the run: {tables} ({us:.1f} us, in the end to end)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--precisions", default="fp16,int8", help="comma-separated (default: fp16,int8)")
    parser.add_argument("--models", default="", help="comma-separated parts of model names (default: all)")
    args = parser.parse_args()
    bench_transformers(tuple(args.precisions.split(",")), tuple(filter(None, args.models.split(","))))


if __name__ == "__main__":
    main()
