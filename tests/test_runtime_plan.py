"""The execution plan against its oracle, the instruction-by-instruction interpreter.

Both execute the same instructions; the plan only does the bookkeeping once. Outputs must be
bit-identical (same dtype, same bytes) on every program we can build: the bundled models, the test
suite's torch models, a broad sample of ONNX node tests, in both precisions, over repeated runs (the
plan reuses its SRAM). Beyond these, tests/conftest.py checks the first plan run of every program
any test runs against the interpreter. A mutated instruction must change the
plan's output exactly as it changes the interpreter's.
"""

from __future__ import annotations

import dataclasses
import threading
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest

import lpuc
from lpuc.errors import LpucError
from lpuc.program import Program
from lpuc.runtime.fp16 import from_fp16, round_fp16, to_fp16
from tests.models import MLP, ResidualBlock, export, random_feeds
from tests.plan_oracle import assert_identical

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = sorted((ROOT / "models").glob("*.onnx"))


def check_program(program: Program, feeds: dict[str, np.ndarray], runs: int = 2) -> dict[str, np.ndarray]:
    """Plan == interpreter, on `runs` consecutive runs of the same plan (the later ones on reused SRAM)."""
    expected = program.run(feeds, interpret=True)
    for _ in range(runs):
        assert_identical(expected, program.run(feeds))
    return expected


# -- fp16 rounding ------------------------------------------------------------------------------
def _float32_on_every_exponent() -> np.ndarray:
    """Both signs, every exponent, the rounding edges of the mantissa and random mantissas."""
    rng = np.random.default_rng(0)
    exponents = np.arange(256, dtype=np.uint32) << 23
    edges = np.array(
        [0, 1, 0x0FFF, 0x1000, 0x1001, 0x1FFF, 0x2000, 0x3000, 0x7FE000, 0x7FF000, 0x7FFFFF], np.uint32
    )
    mantissas = np.concatenate([edges, rng.integers(0, 1 << 23, 4000, dtype=np.uint32)])
    bits = (exponents[:, None] | mantissas[None, :]).ravel()
    bits = np.concatenate([bits, bits | np.uint32(0x80000000)])
    return bits.view(np.float32)


def test_round_fp16_matches_numpy_on_every_exponent():
    """(Checked once exhaustively over every float32 below 65520: no difference.)"""
    x = _float32_on_every_exponent()
    finite = x[np.abs(x) < 65520]  # one array per path: the fast one and numpy's (inf, NaN, overflow)
    strided = finite[: finite.size // 64 * 64].reshape(-1, 64)[:, 3:50]  # a window of SRAM rows
    with np.errstate(over="ignore"):
        for values in (x, finite, strided, x[::700], finite[::700]):  # large and small arrays
            expected = values.astype(np.float16).astype(np.float32)
            assert np.array_equal(round_fp16(values).view(np.uint32), expected.view(np.uint32))


def test_to_fp16_matches_numpy_on_every_exponent():
    """Also written into a window of a wider array (an SRAM tile), and with inf / NaN present."""
    x = _float32_on_every_exponent()
    finite = x[np.abs(x) < 65520]
    strided = finite[: finite.size // 64 * 64].reshape(-1, 64)[:, 3:50]
    with np.errstate(over="ignore", invalid="ignore"):
        for values in (x, finite, strided, x[::700], finite[::700]):  # large and small arrays
            expected = values.astype(np.float16).view(np.uint16)
            assert np.array_equal(to_fp16(values).view(np.uint16), expected)
            tile = np.zeros(values.shape[:-1] + (values.shape[-1] + 7,), np.float16)
            to_fp16(values, out=tile[..., 5 : 5 + values.shape[-1]])
            assert np.array_equal(tile[..., 5 : 5 + values.shape[-1]].view(np.uint16), expected)
            assert not tile[..., :5].any() and not tile[..., 5 + values.shape[-1] :].any()


def test_from_fp16_matches_numpy_on_every_float16():
    every = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)  # inf, NaN payloads
    for values in (every, every.reshape(256, 256)[:, 7:200], every[np.isfinite(every)]):
        assert np.array_equal(from_fp16(values).view(np.uint32), values.astype(np.float32).view(np.uint32))


def _quiet_nans(rng: np.random.Generator, n: int) -> np.ndarray:
    """float32 values with many quiet NaNs of random payloads and signs, infinities, no signaling NaN."""
    bits = rng.integers(0, 1 << 32, n, dtype=np.uint64).astype(np.uint32)
    bits[::3] |= np.uint32(0x7FC00000)  # quiet NaNs
    bits[1::7] = (bits[1::7] & np.uint32(0x80000000)) | np.uint32(0x7F800000)  # infinities
    magnitude = bits & np.uint32(0x7FFFFFFF)
    bits[(magnitude > 0x7F800000) & (magnitude < 0x7FC00000)] |= np.uint32(0x400000)
    return bits.view(np.float32)


def test_fp16_conversions_through_torch_match_numpy_on_quiet_nans():
    """The torch path (module docstring of runtime/fp16.py): arrays big enough to take it, full of
    quiet NaN payloads, contiguous with odd lengths (torch's scalar tails) and strided windows."""
    from lpuc.runtime import fp16

    assert fp16._torch() is not None  # the probe passed: the path below is torch's
    x = _quiet_nans(np.random.default_rng(2), 300_011)
    with np.errstate(all="ignore"):
        for values in (x, x[:4101], x[: 600 * 500].reshape(600, 500)[3:590:2, 7:450]):
            half = values.astype(np.float16)
            assert np.array_equal(to_fp16(values).view(np.uint16), half.view(np.uint16))
            expected = half.astype(np.float32).view(np.uint32)
            assert np.array_equal(round_fp16(values).view(np.uint32), expected)
            assert np.array_equal(from_fp16(half).view(np.uint32), expected)
            assert np.array_equal(from_fp16(half, quiet=True).view(np.uint32), expected)


@pytest.mark.parametrize("part, at", [(0, 5), (1, 30_000), (4, -1), (9, -1), (9, -4000)])
def test_torch_probe_rejects_a_torch_that_converts_one_value_wrong(monkeypatch, part, at):
    """The probe checks its float32 values in parts (fp16._float32_probe): a torch converting one
    of them wrongly (rounding edges of either sign; quiet NaN payloads, the last part's tail) is
    still caught (None: numpy's path)."""
    from lpuc.runtime import fp16

    torch = fp16._torch()
    assert torch is not None
    bad_bits = list(fp16._float32_probe())[part].view(np.uint32)[at]
    real = fp16._torch_copy

    def faulty(torch, dst, src):
        real(torch, dst, src)
        if dst.dtype == np.float16 and src.dtype == np.float32:
            hit = src.view(np.uint32) == np.uint32(bad_bits)
            dst.view(np.uint16)[hit] ^= np.uint16(1)

    monkeypatch.setattr(fp16, "_torch_copy", faulty)
    assert fp16._load_torch() is None
    monkeypatch.setattr(fp16, "_torch_copy", real)
    assert fp16._load_torch() is torch


def test_quieted_signaling_nans_give_the_same_products():
    """fp16._QUIET: the MXM's inputs may have their signaling NaNs quieted (from_fp16 / round_fp16
    with quiet=True); products and sums of them are the same bits as of numpy's exact conversion,
    whichever operand holds the NaN, with BLAS (contiguous, strided) and numpy's own loops."""
    rng = np.random.default_rng(3)
    bits = rng.integers(0, 1 << 16, (96, 200), dtype=np.uint32).astype(np.uint16)
    bits[rng.random(bits.shape) < 0.2] = 0x7C00  # exponent all ones: with the payloads, NaNs
    nan = (bits & 0x7C00) == 0x7C00
    bits[nan] = (bits[nan] & 0x83FF) | 0x7C00 | (rng.integers(1, 0x1FF, nan.sum()) & 0x1FF).astype(np.uint16)
    assert ((bits & 0x7E00) == 0x7C00).sum() > 1000  # many signaling NaNs
    h = bits.view(np.float16)
    w = rng.standard_normal((160, 48)).astype(np.float32)
    w[rng.random(w.shape) < 0.05] = np.nan
    with np.errstate(all="ignore"):
        for window in (h[:, :160], h[:80, 20:180], h[:5, :160]):
            exact, quiet = window.astype(np.float32), from_fp16(window, quiet=True)
            rounded = round_fp16(exact, quiet=True)
            if window.size > 4096:  # (torch's path: some were quieted)
                assert not np.array_equal(quiet.view(np.uint32), exact.view(np.uint32))
            outer = lambda v: v[:, :1] @ w[:1]  # noqa: E731 (K = 1)
            products = (lambda v: v @ w, lambda v: w.T @ v.T, outer, lambda v: v + w[:, 0])
            for a in (quiet, rounded):
                for f in products:
                    assert np.array_equal(f(a).view(np.uint32), f(exact).view(np.uint32))


def _step(op: str, *args: str) -> dict:
    return {"op": op, "args": list(args), "attrs": {}, "domain": "", "opset": 17}


@pytest.mark.parametrize(
    "expr",
    [
        [_step("Mul", "i0", "i1"), _step("Add", "r0", "i2"), _step("Relu", "r1")],
        [_step("Sum", "i0", "i1", "i2"), _step("Sub", "i2", "r0")],
        [_step("Max", "i1", "i0", "i2"), _step("Div", "r0", "i0"), _step("Min", "i2", "r1")],
    ],
    ids=["mul-add-relu", "sum-sub", "max-div-min"],
)
def test_maps_with_float16_operands_compute_what_the_kernels_do(expr):
    """The plan's ufunc path for maps (float16 operands widened, results of float16 first arguments
    rounded) against isa's kernels, every mix of operand dtypes, into both result dtypes; values
    that overflow fp16, NaNs, infinities and fp16 subnormals included."""
    from lpuc.kernels.lowered import evaluate_expression
    from lpuc.runtime.plan import Scratch, _float32_ufuncs, _ufunc_map

    rng = np.random.default_rng(1)
    base = (rng.standard_normal((3, 64, 96)) * np.array([1.0, 3e4, 1e-5])[:, None, None]).astype(np.float32)
    base[0, 0, :4] = [np.nan, np.inf, -np.inf, 7e4]
    with np.errstate(all="ignore"):
        for mix in np.ndindex(2, 2, 2):
            operands = [v.astype(np.float16) if half else v for v, half in zip(base, mix)]
            operands[2] = operands[2][:1]  # a row broadcast over the others
            for dst_dtype in (np.float16, np.float32):
                expected = np.empty((64, 96), dst_dtype)
                expected[...] = evaluate_expression(expr, operands).astype(dst_dtype)
                steps = _float32_ufuncs(expr, [o.dtype for o in operands], np.dtype(dst_dtype))
                dst = np.zeros((64, 96), dst_dtype)
                _ufunc_map(steps, operands, dst, Scratch())()
                assert np.array_equal(dst.view(np.uint8), expected.view(np.uint8)), (mix, dst_dtype)


# -- equivalence --------------------------------------------------------------------------------
@pytest.mark.parametrize("precision", ["fp16", "fp32"])
@pytest.mark.parametrize("path", BUNDLED, ids=[p.stem for p in BUNDLED])
def test_bundled_models(path, precision):
    program = lpuc.compile(path, precision=precision)
    check_program(program, random_feeds(path))
    check_program(program, random_feeds(path, seed=2))  # new inputs on the same reused plan


@pytest.mark.parametrize("budget", [None, 0])
@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_small_steps_match_interpreter_on_extreme_values(monkeypatch, precision, budget):
    """The bundled MLP's MMs and softmax run as runtime/chains.py steps (buffers kept between runs,
    numpy's unchecked fp16 casts); with no buffer budget, as the general steps. Either way the
    same bits as the interpreter, over runs of ordinary inputs and of values that overflow fp16,
    infinities and NaNs, in changing order on the reused buffers."""
    from lpuc.runtime import chains

    if budget is not None:
        monkeypatch.setattr(chains, "BUDGET_BYTES", budget)
    path = ROOT / "models" / "mlp.onnx"
    program = lpuc.compile(path, precision=precision)
    ordinary = random_feeds(path)
    extreme = {k: v.copy() for k, v in ordinary.items()}
    for v in extreme.values():
        flat = v.reshape(-1)
        flat[::3] *= 1e5  # products and stores beyond fp16's range
        flat[1::7] = np.inf
        flat[2::11] = np.nan
    for feeds in (ordinary, extreme, ordinary, extreme):
        check_program(program, feeds, runs=1)
    with warnings.catch_warnings():  # (numpy warns on deprecated calls, a few us each, every run)
        warnings.simplefilter("error")
        program.run(ordinary)
    steps = [s.__qualname__ for s in program.plan._free[0].steps]
    small = [s for s in steps if "small_mm" in s or "softmax_step" in s]
    # (without a budget only the last MM may stay small: into a float32 window it needs no buffer)
    assert len(small) == 4 if budget is None else small in ([], [steps[5]]), steps


@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_torch_models(tmp_path, precision):
    import torch

    mlp = export(MLP(), (torch.zeros(4, 64),), tmp_path / "mlp.onnx", input_names=["x"])
    block = export(ResidualBlock(64), (torch.zeros(2, 3, 64),), tmp_path / "res.onnx", input_names=["x"])
    for path in (mlp, block):
        check_program(lpuc.compile(path, precision=precision), random_feeds(path, seed=3))


LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


@pytest.mark.parametrize("name", ["light_squeezenet", pytest.param("light_resnet50", marks=pytest.mark.slow)])
def test_zoo_cnns(name):
    """Pooling, Im2Col, Concat and Transpose kernels over many tiles, and fp16 MXM rounding."""
    path = LIGHT / f"{name}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = lpuc.compile(path, precision="fp16")
        check_program(program, random_feeds(path))


def _node_test_programs(offset: int, precision: str):
    """(name, program, feeds) for every 5th in-scope ONNX node test the toolchain compiles."""
    from lpuc.backend import LpucBackend
    from tests.conformance.cases import conformance_cases, normalize

    for case in conformance_cases()[offset::5]:
        try:
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore")
                rep = LpucBackend.prepare(case.model, "CPU", precision=precision)
                feeds = rep._feeds([normalize(x) for x in case.data_sets[0][0]])
                program = rep.program_for(feeds)
        except Exception:  # noqa: BLE001 - not compiling is the conformance suite's business
            continue
        bound = {b.name for b in program.inputs}
        yield case.name, program, {n: a for n, a in feeds.items() if n in bound}


@pytest.mark.parametrize(("offset", "precision"), [(0, "fp32"), (2, "fp16")])
def test_node_tests(offset, precision):
    checked = 0
    for name, program, feeds in _node_test_programs(offset, precision):
        try:
            expected = program.run(feeds, interpret=True)
        except Exception as e:  # noqa: BLE001 - the plan must refuse it the same way
            with pytest.raises(type(e)):
                program.run(feeds)
            continue
        for _ in range(2):
            try:
                assert_identical(expected, program.run(feeds))
            except AssertionError as e:
                raise AssertionError(f"{name}: {e}") from e
        checked += 1
    assert checked > 250  # a broad sample really ran


# -- the MXM thread (runtime/overlap.py) -------------------------------------------------------------
@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_mxm_thread_matches_interpreter(monkeypatch, tmp_path, precision):
    """The MXM thread is opt-in and skips small programs; enabled, with the threshold lifted, the
    bundled and torch models run their MXM instructions on it, bit-identical to the interpreter
    over repeated runs."""
    import torch

    from lpuc.runtime import overlap

    monkeypatch.setattr(overlap, "MIN_MXM_MACS", 0)
    monkeypatch.setattr(overlap, "ENABLED", True)
    block = export(ResidualBlock(64), (torch.zeros(2, 3, 64),), tmp_path / "res.onnx", input_names=["x"])
    for path in [*BUNDLED, block]:
        program = lpuc.compile(path, precision=precision)
        check_program(program, random_feeds(path), runs=3)
        assert program.plan._free[0]._mxm_waits is not None  # the thread really ran


def test_mxm_waits_cover_every_conflict(monkeypatch):
    """Each non-MXM instruction waits for every earlier MXM instruction that writes what it reads or
    writes, or reads what it writes (checked pair by pair, independently of overlap's search)."""
    from lpuc.runtime import overlap

    monkeypatch.setattr(overlap, "MIN_MXM_MACS", 0)
    monkeypatch.setattr(overlap, "ENABLED", True)
    path = ROOT / "models" / "residual.onnx"
    # Maps apart from the MMs (fused ones leave no MM result for a map to wait for).
    program = lpuc.compile(path, precision="fp16", disable_passes=["mxm_epilogues"])
    order = sorted(program.instructions, key=lambda i: i.id)
    needs = overlap.mxm_waits(program, order)

    def overlapping(xs, ys):
        return any(s == t and lo < hi2 and lo2 < hi for s, lo, hi in xs for t, lo2, hi2 in ys)

    mxm: list[tuple[int, list, list]] = []
    checked = 0
    for ins, need in zip(order, needs):
        reads, writes = overlap._spans(program, ins, ins.reads), overlap._spans(program, ins, ins.writes)
        if ins.opcode.startswith("mxm."):
            assert need == -1
            mxm.append((len(mxm) + 1, reads, writes))
            continue
        for k, m_reads, m_writes in mxm:
            if overlapping(m_writes, reads + writes) or overlapping(m_reads, writes):
                assert need >= k, (ins.id, k, need)
                checked += 1
    assert checked > 0


# -- mutation -----------------------------------------------------------------------------------
def _read_mutations(program: Program):
    """(instruction id, mutated program) for each legal program that differs from `program` only in
    one read address: another window of the same size and dtype in the same slice (so the
    validator's port and cost checks still hold)."""
    from lpuc.dtypes import words_per_row
    from lpuc.errors import ScheduleError

    tiles = program.tiles
    for k, ins in enumerate(program.instructions):
        for j, a in enumerate(ins.reads):
            t = tiles[a.buf]
            wpr = words_per_row(t.np_dtype)
            for o in tiles:
                if o.kind == "host" or t.kind == "host":
                    continue
                if o.slice != a.slice or o.dtype != t.dtype or o.rows < a.nrows or o.lanes < a.nlanes:
                    continue
                for r0 in sorted({0, o.rows - a.nrows}):
                    b = dataclasses.replace(a, buf=o.id, addr=o.addr + r0 * wpr)
                    if b == a:
                        continue
                    instructions = list(program.instructions)
                    instructions[k] = dataclasses.replace(
                        ins, reads=ins.reads[:j] + (b,) + ins.reads[j + 1 :]
                    )
                    mutated = dataclasses.replace(program, instructions=instructions)
                    try:
                        mutated.validate()
                    except ScheduleError:
                        continue
                    yield ins.id, mutated


@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_mutated_read_address_changes_plan_like_interpreter(precision):
    path = ROOT / "models" / "residual.onnx"
    # Weights in whole 320-row tiles (not spread over slices), so a load can read another row range.
    program = lpuc.compile(path, precision=precision, disable_passes=["weight_spread"])
    feeds = random_feeds(path)
    original = check_program(program, feeds)
    checked = []
    for ins_id, mutated in _read_mutations(program):
        changed = check_program(mutated, feeds)  # plan == interpreter on the mutated program
        assert any(not np.array_equal(changed[n], original[n]) for n in original), ins_id
        checked.append(ins_id)
    # The residual block's weight loads can read another row range of their tile; the plan
    # converts those weights at build time, so this shows its precomputation follows the program.
    assert checked, "no legal mutation found"


def test_reads_of_unwritten_values_see_zeros_on_every_run():
    """An illegal program (the validator refuses it; run here without validation) whose MM reads a
    tile before the map that writes it: the interpreter's fresh SRAM gives zeros there on every
    run, so the plan must zero what its previous run wrote rather than serve stale values."""
    from lpuc.runtime import _interpret, _one_blas_thread
    from lpuc.runtime.plan import Plan

    path = ROOT / "models" / "mlp.onnx"
    program = lpuc.compile(path, precision="fp32", disable_passes=["mxm_epilogues"])
    order = sorted(program.instructions, key=lambda i: i.id)
    k = next(i for i, ins in enumerate(order) if ins.opcode == "vxm.map" and order[i + 1].opcode == "mxm.mm")
    a, b = order[k], order[k + 1]
    assert b.reads[0].buf == a.writes[0].buf
    swapped = [dataclasses.replace(a, id=b.id), dataclasses.replace(b, id=a.id)]
    broken = dataclasses.replace(program, instructions=order[:k] + swapped + order[k + 2 :])
    plan = Plan(broken)
    with _one_blas_thread(), np.errstate(all="ignore"):
        for seed in (1, 2):
            feeds = random_feeds(path, seed=seed)
            assert_identical(_interpret(broken, feeds), plan.run(feeds))


def test_the_suite_checks_every_programs_first_plan_run():
    """tests/conftest.py compares the first plan run of each Program with the interpreter: a plan
    that gets one bit wrong fails whichever test runs it."""
    from lpuc.runtime.plan import Plan

    path = ROOT / "models" / "mlp.onnx"
    program = lpuc.compile(path)
    honest = Plan(program)

    class OneBitOff:
        def run(self, inputs):
            outputs = honest.run(inputs)
            first = next(iter(outputs.values()))
            first.view(np.uint8).flat[0] ^= 1
            return outputs

    program.plan = OneBitOff()
    with pytest.raises(AssertionError, match="differs from the interpreter"):
        program.run(random_feeds(path))


# -- behaviour ----------------------------------------------------------------------------------
def test_outputs_are_not_views_of_reused_sram():
    path = ROOT / "models" / "mlp.onnx"
    program = lpuc.compile(path)
    first = program.run(random_feeds(path))
    kept = {n: v.copy() for n, v in first.items()}
    program.run(random_feeds(path, seed=5))
    assert_identical(kept, first)


def test_bad_inputs_are_refused_like_the_interpreter():
    path = ROOT / "models" / "mlp.onnx"
    program = lpuc.compile(path)
    with pytest.raises(LpucError, match="inputs do not match"):
        program.run({})
    feeds = random_feeds(path)
    name = next(iter(feeds))
    with pytest.raises(LpucError, match="shape"):
        program.run({name: feeds[name][..., :-1]})
    check_program(program, feeds)  # a refused run leaves the plan usable


def test_concurrent_runs_get_their_own_sram():
    path = ROOT / "models" / "residual.onnx"
    program = lpuc.compile(path)
    feeds = [random_feeds(path, seed=s) for s in range(4)]
    expected = [program.run(f, interpret=True) for f in feeds]
    results: dict[int, dict] = {}

    def work(i: int) -> None:
        for _ in range(5):
            results[i] = program.run(feeds[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(4):
        assert_identical(expected[i], results[i])


def test_single_column_weights_sum_as_the_interpreter_does():
    """[1, 4] x [4, 1] fp32 (a case hypothesis found): the weight window is one strided column in
    SRAM, and BLAS sums a strided dot product in another order than a contiguous one. The plan
    copies such a window, as the interpreter's cast does: the same bits."""
    from tests.onnx_builders import single_op_model

    w = (np.random.default_rng(2).standard_normal((4, 1)) / 2).astype(np.float32)
    model = single_op_model("MatMul", [("x", [1, 4])], [("y", [1, 1])], initializers={"w": w})
    program = lpuc.compile(model, target="tsp-mini", precision="fp32", host_fallback=False)
    x = {"x": np.random.default_rng(0).standard_normal((1, 4)).astype(np.float32)}
    assert_identical(program.run(x, interpret=True), program.run(x))


CONCATS = [(1, [(1, 3, 40, 24), (1, 5, 40, 24)]), (-1, [(700, 24), (700, 300)])]


@pytest.mark.parametrize("axis, shapes", CONCATS)
@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_concat_copies_tiles_directly(tmp_path, axis, shapes, precision):
    """A Concat of row blocks (channels, batch 1) or column blocks (the last axis) runs as copies
    between tiles (no kernel, no whole-tensor copies): the interpreter's outputs, bit for bit, and
    onnxruntime's (each input goes through a Relu first, so the Concat reads computed tiles)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    names = [f"x{k}" for k in range(len(shapes))]
    out_shape = list(shapes[0])
    out_shape[axis] = sum(s[axis] for s in shapes)
    graph = helper.make_graph(
        [helper.make_node("Relu", [n], [f"r{n}"]) for n in names]
        + [helper.make_node("Concat", [f"r{n}" for n in names], ["y"], axis=axis)],
        "concat",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(s)) for n, s in zip(names, shapes)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
    )
    path = tmp_path / "concat.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    program = lpuc.compile(path, precision=precision)
    feeds = random_feeds(path)
    outputs = check_program(program, feeds)
    steps = [
        s.__name__
        for ins, s in zip(sorted(program.instructions, key=lambda i: i.id), program.plan._free[0].steps)
        if ins.opcode.endswith("kernel") and ins.attrs.get("kernel") == "Concat"
    ]
    assert steps and set(steps) == {"concat"}, steps
    (expected,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)
    np.testing.assert_allclose(outputs["y"], expected, rtol=1e-3 if precision == "fp16" else 0, atol=0)


@pytest.mark.parametrize(
    "expr, shapes",
    [
        ([_step("Add", "i0", "i1")], [(8, 10), (10,)]),
        ([_step("Mul", "i0", "i1"), _step("Add", "r0", "i2")], [(2, 3, 16), (), (1, 16)]),
        ([_step("Div", "i0", "i1"), _step("Sub", "r0", "i0"), _step("Relu", "r1")], [(5, 7), (5, 7)]),
    ],
)
def test_fused_softmax_fast_path_computes_what_the_kernel_does(expr, shapes):
    """The plan's FusedSoftmax path (float32, no causal mask) against the kernel, bit for bit, with
    row, scalar and full operands; a causal mask or a float16 operand keeps the kernel."""
    from lpuc.ir.graph import LPUC_DOMAIN
    from lpuc.kernels.lowered import fused_softmax
    from lpuc.kernels.registry import KernelContext
    from lpuc.runtime.plan import _fused_softmax

    rng = np.random.default_rng(4)
    operands = [rng.standard_normal(s).astype(np.float32) * 4 for s in shapes]
    desc = [{"dtype": "float32", "shape": list(s)} for s in shapes]
    attrs = {"domain": LPUC_DOMAIN, "attrs": {"axis": -1, "expr": expr}, "inputs": desc, "outputs": desc[:1]}
    (fast,) = _fused_softmax(attrs)(operands)
    expected = fused_softmax(KernelContext("FusedSoftmax", attrs["attrs"], 1, 1, LPUC_DOMAIN), *operands)
    assert fast.dtype == expected.dtype and np.array_equal(fast.view(np.uint32), expected.view(np.uint32))
    assert _fused_softmax({**attrs, "attrs": {**attrs["attrs"], "triangles": {"1": 0}}}) is None
    assert _fused_softmax({**attrs, "inputs": [{**desc[0], "dtype": "float16"}, *desc[1:]]}) is None


@pytest.mark.parametrize("mode", ["every", "capped"])
@pytest.mark.parametrize("precision", ["fp16", "fp32"])
@pytest.mark.parametrize("path", [*BUNDLED, LIGHT / "light_squeezenet.onnx"], ids=lambda p: p.stem)
def test_dead_sram_pages_dropped_while_no_tile_needs_them(monkeypatch, path, precision, mode):
    """Pages dropped while none of their tiles is live (runtime/release.py; forced on for small
    programs: every dead stretch, or the fewest keeping a quarter of the image resident): the plan
    still equals the interpreter, run after run (a page dropped two steps early fails this on the
    bundled models: it reads as zeros), and every tile touching a page after it was dropped starts
    after the drop, with a write."""
    from lpuc.runtime import release
    from lpuc.runtime.plan import Plan

    monkeypatch.setattr(release, "ENABLED", mode == "every")
    monkeypatch.setattr(release, "CAPPED", True)
    monkeypatch.setattr(release, "CAP", 0.25)
    monkeypatch.setattr(release, "MIN_SAVING", 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = lpuc.compile(path, precision=precision)
    order = sorted(program.instructions, key=lambda i: i.id)
    image = 0 if mode == "every" else program.summary["sram_peak_bytes"]  # (the plan's, when capped)
    releases = release.page_releases(program, order, image)
    assert releases
    program.plan = Plan(program)
    check_program(program, random_feeds(path), runs=3)
    target = program.target
    first: dict[int, tuple[int, bool]] = {}  # tile -> (first step touching it, whether a write)
    for j, ins in enumerate(order):
        for a in ins.reads:
            first.setdefault(a.buf, (j, False))
        for a in ins.writes:
            first.setdefault(a.buf, (j, True))
    inputs = {buf for b in program.inputs for buf in b.tiles}
    for i, ranges in releases.items():
        for ins in order[i + 1 :]:
            for a in (*ins.reads, *ins.writes):
                t = program.tiles[a.buf]
                if t.kind == "host":
                    continue
                lo, hi = release._tile_bytes(t, target.addresses_per_slice, target.word_bytes)
                if any(lo < start + n and start < hi for start, n in ranges):
                    step, written = first[a.buf]
                    assert step > i and written and a.buf not in inputs, (i, ins.id, a.buf)


def _resident_peak(gaps: np.ndarray, chosen: np.ndarray, pages: int, never: int) -> list[int]:
    """Pages resident at each step of a second run when the chosen gaps are dropped in every run
    (a gap (page, start, end) spans steps start + 1 .. end - 1, ends past `never` in the next run)."""
    n = never + 1
    resident = [pages] * n
    for g in chosen:
        _, start, end = (int(v) for v in gaps[:, g])
        for step in range(start + 1, end):
            for run_step in (step - n, step):  # (a wrap gap spans the next run's start)
                if 0 <= run_step < n:
                    resident[run_step] -= 1
    return resident


@pytest.mark.parametrize("seed", range(6))
def test_capped_gaps_keep_the_cap_with_few_drops(seed):
    """release.capped_gaps against every subset of a few random gaps: its choice keeps the pages
    resident within the cap wherever any choice can, with at most one gap more than the fewest
    that do (the greedy is optimal on a line; a run's wrap-around into the next makes it a circle;
    one more was the most over 200 such cases)."""
    import itertools

    from lpuc.runtime.release import capped_gaps

    rng = np.random.default_rng(seed)
    never, pages = 12, 5
    gaps = []
    for page in range(pages):
        cuts = sorted(rng.choice(np.arange(never), size=4, replace=False).tolist())
        gaps.append((page, cuts[0], cuts[1]))  # dead between two live stretches
        gaps.append((page, cuts[3], never + 1 + cuts[0]))  # from its last stretch into the next run
    arr = np.array(gaps).T
    best = _resident_peak(arr, range(arr.shape[1]), pages, never)  # (dropping everything)
    for keep in range(pages):
        floor = [max(keep, b) for b in best]

        def within(choice) -> bool:
            return all(r <= f for r, f in zip(_resident_peak(arr, choice, pages, never), floor))  # noqa: B023

        chosen = capped_gaps(arr, pages, never, keep)
        assert within(chosen)
        fewest = next(
            size
            for size in range(arr.shape[1] + 1)
            if any(within(subset) for subset in itertools.combinations(range(arr.shape[1]), size))
        )
        assert len(chosen) <= fewest + 1, (keep, chosen, fewest)
