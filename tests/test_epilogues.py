"""MXM epilogues (lowering strategy mxm_epilogues, lpuc/lowering/epilogue.py): a VXM map fused into the
MM that produces its input. What fuses and what does not, the cost rule, the validator refusing a
fused MM that claims less, and numerics against onnxruntime with the strategy on and off."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import lpuc
from lpuc import cost
from lpuc.cost import Stream, Work
from lpuc.lowering import epilogue
from lpuc.program import Program
from lpuc.target import load_target
from tests.models import export, ort_run
from tests.mutate import cost_of, refusals, streams_of, with_instruction

OFF = ["mxm_epilogues"]


class _LinearGelu(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(96, 200)

    def forward(self, x):
        return torch.nn.functional.gelu(self.fc(x))


class _ConvRelu(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(8, 24, 3, padding=1)

    def forward(self, x):
        return torch.relu(self.conv(x))


class _TwoBranches(torch.nn.Module):
    """relu(a(x) + b(x)): the add reads two MM results; it fuses into the later MM."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(64, 64)
        self.b = torch.nn.Linear(64, 64)

    def forward(self, x):
        return torch.relu(self.a(x) + self.b(x))


class _SharedResult(torch.nn.Module):
    """The MM's result read by two maps: neither can take it over."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(64, 64, bias=False)

    def forward(self, x):
        h = self.fc(x)
        return torch.relu(h), torch.sigmoid(h)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("epilogues")
    return {
        "gelu": export(_LinearGelu(), (torch.randn(2, 200, 96),), d / "gelu.onnx", output_names=["y"]),
        "conv": export(_ConvRelu(), (torch.randn(1, 8, 20, 20),), d / "conv.onnx", output_names=["y"]),
        "two": export(_TwoBranches(), (torch.randn(400, 64),), d / "two.onnx", output_names=["y"]),
        "shared": export(
            _SharedResult(), (torch.randn(100, 64),), d / "shared.onnx", output_names=["y", "z"]
        ),
    }


def _feeds(path, shape, seed=1):
    import onnxruntime as ort

    name = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_inputs()[0].name
    return {name: np.random.default_rng(seed).standard_normal(shape).astype(np.float32)}


def _maps_of_mm_results(p: Program) -> list:
    """Maps reading a tile an MM writes (an int8 build's input quantize map reads none)."""
    mm_tiles = {w.buf for i in p.instructions if i.opcode == "mxm.mm" for w in i.writes}
    return [i for i in p.instructions if i.opcode == "vxm.map" and any(a.buf in mm_tiles for a in i.reads)]


def _stored_temps(p: Program) -> list:
    return [t for t in p.tiles if t.kind == "temp"]


def _fused(p: Program) -> list:
    return [i for i in p.instructions if "epilogue" in i.attrs]


SHAPES = {"gelu": (2, 200, 96), "conv": (1, 8, 20, 20), "two": (400, 64)}
# int8 builds quantize activations and weights: compared by relative error of the whole output.
TOLERANCE = {"fp32": 1e-5, "fp16": 2e-2, "int8": 8e-2}


@pytest.fixture
def always_pays(monkeypatch):
    """Every legal fusion taken, whether or not it pays on this target (so that GELU epilogues run in
    fp32 and fp16 builds too, where mxm_epilogues leaves an 11-ALU map apart)."""
    monkeypatch.setattr(epilogue, "pays", lambda *args: True)


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
@pytest.mark.parametrize("model", ["gelu", "conv"])
def test_fused_programs_match_onnxruntime_and_the_unfused_program(models, model, precision, always_pays):
    """MatMul+bias+GELU and Conv+bias+ReLU: no map of an MM result is left, the MMs write the
    activations, and the outputs equal the unfused program's bit for bit (the map's arithmetic on the
    same values) and onnxruntime's within the precision's error."""
    path = models[model]
    fused = lpuc.compile(path, precision=precision)
    apart = lpuc.compile(path, precision=precision, disable_passes=OFF)
    assert not _maps_of_mm_results(fused) and _maps_of_mm_results(apart)
    assert _fused(fused) and not _fused(apart)
    assert all(i.opcode == "mxm.mm" and cost.has_epilogue(i.opcode, i.work) for i in _fused(fused))
    # the MMs' result tiles are gone (the outputs' tiles may be cut shorter: stacked_results)
    assert len(_stored_temps(fused)) < len(_stored_temps(apart))
    assert fused.summary["cycles"] < apart.summary["cycles"]
    feeds = _feeds(path, SHAPES[model])
    (want,) = ort_run(path, feeds)
    got = fused.run(feeds)["y"]
    np.testing.assert_array_equal(got, apart.run(feeds)["y"])
    np.testing.assert_array_equal(got, fused.run(feeds, interpret=True)["y"])
    assert np.std(want) > 0
    assert np.abs(got - want).max() <= TOLERANCE[precision] * np.abs(want).max()


def test_heavy_maps_fuse_only_into_write_bound_mms(models):
    """Bias+GELU takes 11 of the VXM's 16 ALUs: fused, the four planes would take turns for them, so
    an fp16 MM (which writes its fp32 rows as fast as they stream) keeps it apart; an int8 MM, whose
    int32 rows would take two cycles each through a slice's two banks, takes it. Conv+bias+ReLU's
    light map fuses everywhere."""
    assert not _fused(lpuc.compile(models["gelu"], precision="fp16"))
    assert _fused(lpuc.compile(models["gelu"], precision="int8"))
    assert _fused(lpuc.compile(models["conv"], precision="fp16"))


def test_an_add_of_two_mm_results_fuses_into_the_later_mm(models):
    """Both MMs' results are read only by the add: it fuses into the MM that comes last, which reads
    the other MM's result as an extra operand (and both biases)."""
    path = models["two"]
    p = lpuc.compile(path, precision="fp16")
    fused = _fused(p)
    assert fused and not _maps_of_mm_results(p)
    assert all("/b/" in i.node for i in fused), [i.node for i in fused]
    for i in fused:
        assert 0 in i.attrs["epilogue"]["operands"] and len(i.reads) > 2
    feeds = _feeds(path, SHAPES["two"])
    (want,) = ort_run(path, feeds)
    np.testing.assert_allclose(p.run(feeds)["y"], want, rtol=2e-2, atol=2e-2 * np.abs(want).max())


def test_a_result_read_twice_or_returned_does_not_fuse(models, tmp_path):
    """An MM result two maps read (relu and sigmoid of one product) must stay in SRAM; so must one
    that is a model output."""
    p = lpuc.compile(models["shared"], precision="fp16")
    assert not _fused(p) and sum(i.opcode == "vxm.map" for i in p.instructions) == 2

    class _Both(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(64, 64)

        def forward(self, x):
            h = self.fc(x)
            return h, torch.relu(h)

    path = export(_Both(), (torch.randn(50, 64),), tmp_path / "both.onnx", output_names=["h", "y"])
    q = lpuc.compile(path, precision="fp16")
    mms = [i for i in q.instructions if i.opcode == "mxm.mm"]
    # The bias add writes the output h; only then relu reads h: the MM's own result is read by the
    # bias add alone, which fuses; relu reads a model output and stays a map.
    assert any(i.opcode == "vxm.map" for i in q.instructions)
    assert all(q.tiles[i.writes[0].buf].tensor == "h" or "epilogue" not in i.attrs for i in mms)
    feeds = _feeds(path, (50, 64))
    for got, want in zip((q.run(feeds)[n] for n in ("h", "y")), ort_run(path, feeds)):
        np.testing.assert_allclose(got, want, rtol=2e-2, atol=2e-2 * np.abs(want).max())


class _Tall(torch.nn.Module):
    """Linear(400 -> 16) + ReLU on 300 rows: K spans several weight tiles, and few chains for the
    planes, so K is split and the parts summed by a map."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(400, 16)

    def forward(self, x):
        return torch.relu(self.fc(x))


def _tall_linear_relu(tmp_path):
    return export(_Tall(), (torch.randn(300, 400),), tmp_path / "tall.onnx", output_names=["y"])


def test_partial_sums_and_sram_accumulation_do_not_fuse(tmp_path):
    """K-split partial results (the map adding them is the MM's own node) and MMs adding into their
    result through SRAM (several writers of the tile) keep their maps."""

    path = _tall_linear_relu(tmp_path)
    split = lpuc.compile(path, precision="fp16")
    partial_sums = [i for i in split.instructions if i.opcode == "vxm.map" and i.node.endswith("matmul")]
    assert partial_sums and not _fused(split)
    through_sram = lpuc.compile(path, precision="fp32", disable_passes=["mxm_accumulators"])
    assert any(i.attrs.get("acc") for i in through_sram.instructions) and not _fused(through_sram)
    feeds = _feeds(path, (300, 400))
    (want,) = ort_run(path, feeds)
    for p in (split, through_sram):
        np.testing.assert_allclose(p.run(feeds)["y"], want, rtol=2e-2, atol=2e-2 * np.abs(want).max())


def test_the_intermediate_tensor_leaves_the_tiled_program(models, monkeypatch, always_pays):
    """In the Tiled IR the MM's result tensor is gone (its tiles dropped, the rest renumbered), and
    the fused op reads the activation, then the map's other operands; operand 0 of its epilogue is
    the MM's result, relayed as 4-byte words."""
    import lpuc.api

    lowered = []
    real = lpuc.api.lower

    def capture(*args, **kwargs):
        lowered.append(real(*args, **kwargs))
        return lowered[-1]

    monkeypatch.setattr(lpuc.api, "lower", capture)
    lpuc.compile(models["gelu"], precision="fp16")
    lpuc.compile(models["gelu"], precision="fp16", disable_passes=OFF)
    fused, apart = lowered
    gone = set(apart.tensors) - set(fused.tensors)
    assert gone and all(
        op.node.endswith("MatMul")
        for op in apart.ops
        for w in op.writes
        if apart.buffers[w.buf].tensor in gone
    )
    assert len(apart.buffers) - len(fused.buffers) == sum(len(apart.tensors[n].tiles()) for n in gone)
    assert [b.id for b in fused.buffers] == list(range(len(fused.buffers)))
    ops = [op for op in fused.ops if "epilogue" in op.attrs]
    assert ops and not any(op.opcode == "vxm.map" for op in fused.ops)
    for op in ops:
        assert op.work.relay_words == 4 and op.work.alu_ops > 0
        activations = {apart.buffers[o.reads[0].buf].tensor for o in apart.ops if o.opcode == "mxm.mm"}
        assert fused.buffers[op.reads[0].buf].tensor in activations
        assert 0 in op.attrs["epilogue"]["operands"]


# -- cost -------------------------------------------------------------------------------------------
def test_fused_cost_is_never_less_than_the_mm_and_the_map_apart():
    v1 = load_target("tsp-v1")
    act, bias, out = Stream(3, 320, 1, 320), Stream(60, 1, 4, 320), Stream(70, 320, 1, 320)
    mm = Work(vectors=320, macs=320 * 320 * 320)
    fused = dataclasses.replace(mm, alu_ops=5, elem_ops=320 * 320 * 5, relay_words=4)
    map_alone = Work(vectors=320, alu_ops=5, elem_ops=320 * 320 * 5)
    d_fused = cost.duration(v1, "mxm.mm", "MXM0", fused, [act, bias], [out], "int8", True)
    d_mm = cost.duration(v1, "mxm.mm", "MXM0", mm, [act], [out], "int8", True)
    assert d_fused > d_mm
    assert cost.unit_cycles(v1, "mxm.mm", fused, "int8") >= cost.unit_cycles(v1, "vxm.map", map_alone)
    assert cost.vxm_alus(v1, "mxm.mm", fused) == cost.vxm_alus(v1, "vxm.map", map_alone) == 5
    assert cost.vxm_alus(v1, "mxm.mm", mm) == 0
    # Exactly: iw + rows + max(activation -> plane -> VXM, bias -> VXM) + 5 ALUs + VXM -> slice 70.
    vxm, col = v1.position("VXM0"), v1.slice_positions
    to_vxm = max(v1.mem.read_delay + col[3] + v1.delay("MXM") + vxm, v1.mem.read_delay + abs(vxm - col[60]))
    tail = 5 * v1.delay("VXM") + v1.mem.write_delay + abs(col[70] - vxm) + v1.stagger(320)
    assert d_fused == v1.iw_cycles + 320 + to_vxm + tail
    # A map beyond one lane's ALUs wraps: the MM's rows then stream at the map's rate.
    long = dataclasses.replace(fused, alu_ops=40)
    assert cost.unit_cycles(v1, "mxm.mm", long, "int8") == 320 * 3
    # Streams: 1 word activation east (slice 3 -> MXM0 is west of it: west), 4 relay words east.
    east, west = cost.stream_needs(v1, "mxm.mm", "MXM0", [act, bias], [out], fused)
    assert east >= 4 + 1 and west >= 1


def test_fused_map_wraps_over_the_cycles_between_result_rows():
    """A fused map's ALUs: one op per ALU and cycle, and a result row every cycles_per_row cycles
    (int8 1, fp16 2, fp32 6): ceil(ops / cycles_per_row) ALUs keep up with the rows."""
    v1 = load_target("tsp-v1")
    fused = Work(vectors=128, macs=128 * 64 * 128, alu_ops=3, elem_ops=128 * 128 * 3, relay_words=4)
    assert [cost.epilogue_alus(v1, fused, p) for p in ("int8", "fp16", "fp32")] == [3, 2, 1]
    for p in ("int8", "fp16", "fp32"):  # never slower than the rows: the wraps fit between them
        rows = 128 * v1.mxm_mode(p).cycles_per_row
        assert cost.unit_cycles(v1, "mxm.mm", fused, p) == rows
    # More ops than the lane's ALUs wrap within two fp16 rows: all 16 held, the rows slowed to 3.
    long = dataclasses.replace(fused, alu_ops=40)
    assert cost.epilogue_alus(v1, long, "fp16") == 16
    assert cost.unit_cycles(v1, "mxm.mm", long, "fp16") == 128 * 3


# -- validator --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fused_program(models) -> Program:
    return lpuc.compile(models["gelu"], precision="int8")


def _k(p: Program) -> int:
    return next(k for k, i in enumerate(p.instructions) if "epilogue" in i.attrs)


def test_validator_refuses_a_fused_mm_claiming_less(fused_program):
    p, k = fused_program, _k(fused_program)
    ins = p.instructions[k]
    assert ins.duration >= cost_of(p, ins)
    assert any(
        "shorter than the" in m for m in refusals(with_instruction(p, k, duration=cost_of(p, ins) - 1))
    )
    no_relay = dataclasses.replace(ins.work, relay_words=0)
    assert any("relay" in m or "shorter" in m for m in refusals(with_instruction(p, k, work=no_relay)))
    fewer_ops = dataclasses.replace(ins.work, alu_ops=0)
    assert any("ALU ops" in m for m in refusals(with_instruction(p, k, work=fewer_ops)))
    no_alus = tuple(u for u in ins.units if not u.startswith("VXM"))
    assert any("VXM ALUs" in m for m in refusals(with_instruction(p, k, units=no_alus)))
    attrs = {**ins.attrs, "epilogue": {**ins.attrs["epilogue"], "operands": [len(ins.reads)]}}
    assert any("epilogue operands" in m for m in refusals(with_instruction(p, k, attrs=attrs)))


def test_an_edited_epilogue_changes_the_output(models, fused_program):
    """The runtime executes the epilogue: dropping it from an instruction (a legal-looking file
    otherwise) changes what the program computes."""
    p, k = fused_program, _k(fused_program)
    ins = p.instructions[k]
    expr = ins.attrs["epilogue"]["expr"]
    other = {**ins.attrs, "epilogue": {**ins.attrs["epilogue"], "expr": expr[:-1] or expr}}
    feeds = _feeds(models["gelu"], SHAPES["gelu"])
    edited = dataclasses.replace(with_instruction(p, k, attrs=other))
    edited.validated = True  # the expression's ALU count still fits the work: run without checks
    assert not np.array_equal(edited.run(feeds, interpret=True)["y"], p.run(feeds)["y"])


# -- map chains -------------------------------------------------------------------------------------
def test_a_k_split_sum_and_the_map_after_it_are_one_pass(tmp_path):
    """map_chains: the K-split sum of partial results (which no MM can take) and the bias+ReLU map
    reading it become one map: Sum's steps, then bias+ReLU's; the sum's tile is never stored. The
    output is bit-identical to the two maps apart, and the strategy is switchable."""

    path = _tall_linear_relu(tmp_path)
    joined = lpuc.compile(path, precision="fp16")
    apart = lpuc.compile(path, precision="fp16", disable_passes=["map_chains"])
    (one,) = [i for i in joined.instructions if i.opcode == "vxm.map"]
    assert [s["op"] for s in one.attrs["expr"]][0] == "Sum" and len(one.attrs["expr"]) > 1
    maps = [i for i in apart.instructions if i.opcode == "vxm.map"]
    assert len(maps) == 2 and one.work.alu_ops == sum(m.work.alu_ops for m in maps)
    assert len(joined.tiles) < len(apart.tiles)
    assert joined.summary["cycles"] < apart.summary["cycles"]
    feeds = _feeds(path, (300, 400))
    (want,) = ort_run(path, feeds)
    got = joined.run(feeds)["y"]
    np.testing.assert_array_equal(got, apart.run(feeds)["y"])
    np.testing.assert_allclose(got, want, rtol=2e-2, atol=2e-2 * np.abs(want).max())


def test_a_map_result_read_twice_is_not_joined(models):
    """relu(h) and sigmoid(h) both read the MM's result: neither joins anything (nor fuses)."""
    p = lpuc.compile(models["shared"], precision="fp16")
    assert all(len(i.attrs["expr"]) == 1 for i in p.instructions if i.opcode == "vxm.map")


class _ExplicitGelu(torch.nn.Module):
    """A bias add, then GELU spelled out in elementwise ops (fuse_gelu off: two maps in a row)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(64, 96)

    def forward(self, x):
        h = self.fc(x)
        return 0.5 * h * (1.0 + torch.erf(h / 1.4142135623730951))


def test_a_map_joins_an_mm_epilogue(tmp_path, always_pays):
    """With fuse_gelu off the bias add fuses into the MM and the GELU pieces' map, which reads the
    fused MM's result alone, joins its epilogue: one instruction per MM, bit-identical to the
    program with both strategies off and within fp32 error of onnxruntime."""
    path = export(_ExplicitGelu(), (torch.randn(200, 64),), tmp_path / "gelu.onnx", output_names=["y"])
    joined = lpuc.compile(path, precision="fp32", disable_passes=["fuse_gelu"])
    apart = lpuc.compile(path, precision="fp32", disable_passes=["fuse_gelu", *OFF, "map_chains"])
    assert not any(i.opcode == "vxm.map" for i in joined.instructions)
    (mm,) = _fused(joined)
    assert [s["op"] for s in mm.attrs["epilogue"]["expr"]][:1] == ["Add"] and "Erf" in str(mm.attrs)
    maps = [i for i in apart.instructions if i.opcode == "vxm.map"]
    assert len(maps) == 2 and mm.work.alu_ops == sum(i.work.alu_ops for i in maps)
    feeds = _feeds(path, (200, 64))
    (want,) = ort_run(path, feeds)
    got = joined.run(feeds)["y"]
    np.testing.assert_array_equal(got, apart.run(feeds)["y"])
    np.testing.assert_array_equal(got, joined.run(feeds, interpret=True)["y"])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def test_a_write_bound_epilogue_result_is_stacked_over_two_slices(models):
    """An int8 MM's epilogue (dequantize, bias, GELU) writes fp32 rows (4 words) to the model
    output: stacked over two tiles on two slices (lowering strategy stacked_results) it writes a row
    per cycle, so it holds its plane no longer than its rows stream in; on one slice, two cycles a
    row. Same values."""
    path = models["gelu"]
    stacked = lpuc.compile(path, precision="int8")
    single = lpuc.compile(path, precision="int8", disable_passes=["stacked_results"])
    target = load_target("tsp-v1")
    for p, windows in ((stacked, 2), (single, 1)):
        fused = _output_epilogues(p)
        assert fused and all(len(i.writes) == windows for i in fused)
        for i in fused:
            assert sum(a.nrows for a in i.writes) == i.reads[0].nrows
            assert len({a.slice for a in i.writes}) == windows

    def plane_busy(p: Program) -> int:  # cycles the longest fused MM holds its plane
        return max(_occupancy(p, i) for i in _output_epilogues(p))

    rows = max(i.reads[0].nrows for i in _output_epilogues(stacked))
    assert plane_busy(stacked) <= rows + target.iw_cycles < 2 * rows <= plane_busy(single)
    feeds = _feeds(path, SHAPES["gelu"])
    got = stacked.run(feeds)["y"]
    np.testing.assert_array_equal(got, single.run(feeds)["y"])
    np.testing.assert_array_equal(got, stacked.run(feeds, interpret=True)["y"])
    (want,) = ort_run(path, feeds)
    assert np.abs(got - want).max() <= TOLERANCE["int8"] * np.abs(want).max()


def _output_epilogues(p: Program) -> list:
    """Fused MMs writing the model's output (a fused result another op reads stays on one slice)."""
    return [i for i in _fused(p) if p.tiles[i.writes[0].buf].kind == "output"]


def _occupancy(p: Program, ins) -> int:
    reads, writes = streams_of(p, ins)
    precision, install = ins.attrs.get("precision", p.precision), bool(ins.attrs.get("install"))
    return cost.occupancy(p.target, ins.opcode, ins.unit, ins.work, reads, writes, precision, install)
