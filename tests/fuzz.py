"""Fuzzing the user-facing entry points: mutated ONNX models and mutated .lpu artifacts.

Every case calls `lpuc.compile` / `decode_program` / `Program.run` in-process under a time limit.
A case passes when it succeeds or raises `LpucError` (a one-line user error); it fails on any other
exception or on a timeout. Cases are seeded one by one, so `--case N` reproduces case N alone.

    python -m tests.fuzz --cases 10000 [--seed 0]     # `make fuzz`
    python -m tests.fuzz --case 137 -v                # reproduce one case, with its traceback
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import signal
import struct
import tempfile
import time
import traceback
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MODELS = Path(__file__).resolve().parent.parent / "models"
TIME_LIMIT_S = 10
BAD_DIMS = (0, -1, 10**9, 1, 3, 2**31, -7)


class CaseTimeout(BaseException):
    """Raised by the alarm; a BaseException so that `except Exception` in lpuc cannot swallow it."""


@dataclass(frozen=True)
class Outcome:
    mutator: str
    result: str  # "ok" | "error" (LpucError) | "crash" | "timeout"
    detail: str = ""
    trace: str = ""  # the traceback of a crash


# -- base models -----------------------------------------------------------------------------------
def conv_model() -> onnx.ModelProto:
    """Conv -> Relu -> MaxPool -> Flatten -> Gemm: small, but every lowering path of a CNN."""
    rng = np.random.default_rng(0)
    inits = {
        "w": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "b": rng.standard_normal(4).astype(np.float32),
        "fc_w": rng.standard_normal((64, 5)).astype(np.float32),
        "fc_b": rng.standard_normal(5).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["y"], name="fc"),
    ]
    graph = helper.make_graph(
        nodes,
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def base_models() -> dict[str, onnx.ModelProto]:
    return {
        "mlp": onnx.load(str(MODELS / "mlp.onnx")),
        "residual": onnx.load(str(MODELS / "residual.onnx")),
        "conv": conv_model(),
    }


# -- ONNX mutators: (model copy, rng) -> ModelProto or serialized bytes ------------------------------
def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _pick(rng: np.random.Generator, items):
    items = list(items)
    return items[int(rng.integers(len(items)))] if items else None


def m_bit_flips(m: onnx.ModelProto, rng: np.random.Generator) -> bytes:
    data = bytearray(m.SerializeToString())
    for _ in range(int(rng.integers(1, 9))):
        k = int(rng.integers(len(data)))
        data[k] ^= 1 << int(rng.integers(8))
    return bytes(data)


def m_truncate(m: onnx.ModelProto, rng: np.random.Generator) -> bytes:
    data = m.SerializeToString()
    return data[: int(rng.integers(len(data)))]


def m_drop_initializer(m: onnx.ModelProto, rng: np.random.Generator) -> onnx.ModelProto:
    if len(m.graph.initializer):
        del m.graph.initializer[int(rng.integers(len(m.graph.initializer)))]
    return m


def m_bad_dim(m: onnx.ModelProto, rng: np.random.Generator) -> onnx.ModelProto:
    infos = [*m.graph.input, *m.graph.output, *m.graph.value_info]
    dims = [d for vi in infos for d in vi.type.tensor_type.shape.dim]
    for _ in range(int(rng.integers(1, 3))):
        d = _pick(rng, dims)
        if d is not None:
            d.dim_value = int(_pick(rng, BAD_DIMS))
    return m


def m_bad_attribute(m: onnx.ModelProto, rng: np.random.Generator) -> onnx.ModelProto:
    node = _pick(rng, m.graph.node)
    choice = int(rng.integers(4))
    if choice == 0 or not len(node.attribute):
        node.attribute.append(helper.make_attribute(_pick(rng, ["axis", "alpha", "perm", "junk"]), -3))
        return m
    attr = _pick(rng, node.attribute)
    if choice == 1:
        node.attribute.remove(attr)
    elif attr.type == onnx.AttributeProto.INT:
        attr.i = int(_pick(rng, [-100, -1, 0, 7, 10**9]))
    elif attr.type == onnx.AttributeProto.FLOAT:
        attr.f = float(_pick(rng, [np.nan, np.inf, -1.0, 0.0, 1e30]))
    elif attr.type == onnx.AttributeProto.INTS:
        del attr.ints[:]
        attr.ints.extend(int(_pick(rng, [-1, 0, 1, 5, 10**6])) for _ in range(int(rng.integers(0, 6))))
    else:
        attr.type = onnx.AttributeProto.INT  # a type the schema does not expect
        attr.i = 1
    return m


def m_wrong_dtype(m: onnx.ModelProto, rng: np.random.Generator) -> onnx.ModelProto:
    types = [
        TensorProto.INT64,
        TensorProto.FLOAT16,
        TensorProto.DOUBLE,
        TensorProto.BOOL,
        TensorProto.STRING,
        999,
    ]
    target = _pick(rng, [*m.graph.input, *m.graph.output, *m.graph.initializer])
    if isinstance(target, TensorProto):
        target.data_type = int(_pick(rng, types))
    else:
        target.type.tensor_type.elem_type = int(_pick(rng, types))
    return m


def m_opset(m: onnx.ModelProto, rng: np.random.Generator) -> onnx.ModelProto:
    for o in m.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = int(rng.integers(1, onnx.defs.onnx_opset_version() + 3))
    return m


def m_cycle(m: onnx.ModelProto, rng: np.random.Generator) -> onnx.ModelProto:
    nodes = list(m.graph.node)
    if len(nodes) > 1:
        i = int(rng.integers(len(nodes) - 1))
        j = int(rng.integers(i + 1, len(nodes)))
        nodes[i].input[0] = nodes[j].output[0]  # reads a value produced later: a cycle or a bad order
    return m


def m_dangling_input(m: onnx.ModelProto, rng: np.random.Generator) -> onnx.ModelProto:
    node = _pick(rng, m.graph.node)
    if len(node.input):
        node.input[int(rng.integers(len(node.input)))] = "nowhere"
    elif rng.random() < 0.5:
        m.graph.output[0].name = "nowhere"
    return m


def m_op_type(m: onnx.ModelProto, rng: np.random.Generator) -> onnx.ModelProto:
    ops = ["Gather", "Reshape", "Concat", "Softmax", "MatMul", "Transpose", "Expand", "Tile", "Split", "Foo"]
    _pick(rng, m.graph.node).op_type = _pick(rng, ops)
    return m


ONNX_MUTATORS: dict[str, Callable] = {
    "onnx.bit_flips": m_bit_flips,
    "onnx.truncate": m_truncate,
    "onnx.drop_initializer": m_drop_initializer,
    "onnx.bad_dim": m_bad_dim,
    "onnx.bad_attribute": m_bad_attribute,
    "onnx.wrong_dtype": m_wrong_dtype,
    "onnx.opset": m_opset,
    "onnx.cycle": m_cycle,
    "onnx.dangling_input": m_dangling_input,
    "onnx.op_type": m_op_type,
}


# -- .lpu mutators: (artifact bytes, rng) -> bytes -------------------------------------------------
_PREFIX = struct.Struct("<4sIQ")


def a_bit_flips(data: bytes, rng: np.random.Generator) -> bytes:
    out = bytearray(data)
    for _ in range(int(rng.integers(1, 5))):
        k = int(rng.integers(len(out)))
        out[k] ^= 1 << int(rng.integers(8))
    return bytes(out)


def a_truncate(data: bytes, rng: np.random.Generator) -> bytes:
    return data[: int(rng.integers(len(data)))]


def a_json_edit(data: bytes, rng: np.random.Generator) -> bytes:
    """Change one field of the program JSON and re-seal the file (recomputed checksum)."""
    magic, version, header_len = _PREFIX.unpack_from(data)
    start = _PREFIX.size + header_len
    header = json.loads(data[_PREFIX.size : start])
    payload = data[start:]
    sections = {s["name"]: payload[s["offset"] : s["offset"] + s["nbytes"]] for s in header["sections"]}
    body = json.loads(zlib.decompress(sections["program"]))
    for _ in range(int(rng.integers(1, 3))):
        _edit_leaf(body, rng)
    sections["program"] = zlib.compress(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())
    payload, table, at = b"", [], 0
    for s in header["sections"]:
        blob = sections[s["name"]]
        table.append({"name": s["name"], "offset": at, "nbytes": len(blob)})
        payload += blob
        at += len(blob)
    header.update(sections=table, checksum=hashlib.sha256(payload).hexdigest())
    raw = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    return _PREFIX.pack(magic, version, len(raw)) + raw + payload


def _edit_leaf(body: dict, rng: np.random.Generator) -> None:
    node, key = body, None
    for _ in range(12):  # walk down to a leaf (or stop part-way: whole subtrees get replaced too)
        keys = sorted(node) if isinstance(node, dict) else list(range(len(node)))
        if not keys:
            break
        key = _pick(rng, keys)
        child = node[key]
        if not isinstance(child, (dict, list)) or not child or rng.random() < 0.1:
            break
        node = child
    if key is None:
        return
    old = node[key]
    candidates = [None, -1, 0, 10**9, -(10**12), "x", [], {}, 1.5, True]
    if isinstance(old, int) and not isinstance(old, bool):
        candidates += [old + 1, old - 1, old * 2]
    node[key] = _pick(rng, candidates)


LPU_MUTATORS: dict[str, Callable] = {
    "lpu.bit_flips": a_bit_flips,
    "lpu.truncate": a_truncate,
    "lpu.json_edit": a_json_edit,
}


# -- running one case ------------------------------------------------------------------------------
@contextlib.contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    """SIGALRM on the main thread (Linux); the previous handler is restored afterwards."""

    def expire(signum, frame):
        raise CaseTimeout(f"over {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def classify(mutator: str, fn: Callable[[], None], seconds: int = TIME_LIMIT_S) -> Outcome:
    from lpuc.errors import LpucError

    try:
        with time_limit(seconds), np.errstate(all="ignore"):
            fn()
    except CaseTimeout as e:
        return Outcome(mutator, "timeout", str(e))
    except LpucError as e:
        return Outcome(mutator, "error", str(e).splitlines()[0] if str(e) else "")
    except Exception as e:  # noqa: BLE001 - the thing being looked for
        detail = f"{type(e).__name__}: {e}".splitlines()[0][:300]
        return Outcome(mutator, "crash", detail, traceback.format_exc())
    return Outcome(mutator, "ok")


def _compile_and_run(model: onnx.ModelProto | bytes, workdir: Path) -> None:
    import lpuc
    from lpuc.cli import random_inputs

    path = workdir / "case.onnx"
    path.write_bytes(model if isinstance(model, bytes) else model.SerializeToString())
    program = lpuc.compile(path)
    program.run(random_inputs(program, 0))


def _decode_and_run(data: bytes) -> None:
    from lpuc.backends.lpu import decode_program
    from lpuc.cli import random_inputs

    program = decode_program(data, "case.lpu")
    program.run(random_inputs(program, 0))


class Fuzzer:
    """Holds the base models and their compiled artifacts; `case(k)` runs case k of `seed`."""

    def __init__(self, seed: int = 0):
        import lpuc

        self.seed = seed
        self.models = base_models()
        self.artifacts = {name: lpuc.compile(m).to_bytes() for name, m in sorted(self.models.items())}
        self.mutators = sorted(ONNX_MUTATORS) + sorted(LPU_MUTATORS)
        self._tmp = tempfile.TemporaryDirectory(prefix="lpuc-fuzz-")  # removed with the fuzzer
        self.workdir = Path(self._tmp.name)

    def case(self, k: int, seconds: int = TIME_LIMIT_S) -> Outcome:
        rng = np.random.default_rng([self.seed, k])
        mutator = self.mutators[k % len(self.mutators)]  # round robin: every mutator gets its share
        base = _pick(rng, sorted(self.models))
        if mutator in ONNX_MUTATORS:
            model = ONNX_MUTATORS[mutator](_copy(self.models[base]), rng)
            return classify(mutator, lambda: _compile_and_run(model, self.workdir), seconds)
        data = LPU_MUTATORS[mutator](self.artifacts[base], rng)
        return classify(mutator, lambda: _decode_and_run(data), seconds)


def summarize(outcomes: list[Outcome]) -> str:
    counts: dict[str, Counter] = {}
    for o in outcomes:
        counts.setdefault(o.mutator, Counter())[o.result] += 1
    lines = [f"{'mutator':<24} {'cases':>6} {'ok':>6} {'error':>6} {'crash':>6} {'timeout':>7}"]
    for name, c in sorted(counts.items()):
        lines.append(
            f"{name:<24} {sum(c.values()):>6} {c['ok']:>6} {c['error']:>6} {c['crash']:>6} {c['timeout']:>7}"
        )
    return "\n".join(lines)


@click.command()
@click.option("--cases", default=1000, show_default=True, help="Number of cases.")
@click.option("--seed", default=0, show_default=True)
@click.option("--case", "only", type=int, help="Run only this case (prints its traceback on a crash).")
@click.option("-v", "--verbose", is_flag=True, help="Print every failing case.")
def main(cases: int, seed: int, only: int | None, verbose: bool) -> None:
    fuzzer = Fuzzer(seed)
    if only is not None:
        outcome = fuzzer.case(only)
        click.echo(f"case {only}: {outcome.mutator} {outcome.result}: {outcome.detail}")
        if verbose:
            click.echo(outcome.trace)
        raise SystemExit(outcome.result in ("crash", "timeout"))
    start, outcomes = time.perf_counter(), []
    for k in range(cases):
        outcome = fuzzer.case(k)
        outcomes.append(outcome)
        if outcome.result in ("crash", "timeout") and verbose:
            click.echo(f"case {k}: {outcome.mutator} {outcome.result}: {outcome.detail}")
    click.echo(summarize(outcomes))
    bad = [k for k, o in enumerate(outcomes) if o.result in ("crash", "timeout")]
    click.echo(f"{cases} cases in {time.perf_counter() - start:.1f} s; failing: {bad[:20] or 'none'}")
    raise SystemExit(1 if bad else 0)


if __name__ == "__main__":
    main()
