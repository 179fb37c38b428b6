"""The execution plan: a program's instruction streams turned once into numpy steps bound to SRAM.

The interpreter (`lpuc.runtime.isa`) re-derives every address, dtype and attribute on every run.
A plan does that work once per Program: each instruction becomes a closure over live numpy views
of the SRAM windows it reads and writes, with its attributes decoded and its kernels resolved.
Every instruction still computes its effect from its operands in SRAM, in ascending id order, with
the same numpy operations as the interpreter, so outputs are bit-identical (tests/test_runtime_plan.py).

Done once instead of per run:
- constants are written into SRAM when the plan is built. The SRAM is reused run after run: a run
  restores only constants that tiles reusing their slots overwrote, and zeroes what the previous
  run wrote only if some read takes values its tile never had written (the validator refuses such
  programs). Untouched SRAM stays unallocated (np.zeros is lazy);
- a weight load (mxm.lw) whose window nothing writes reads the same values every run: its
  MXM-rounded weights are computed at build time (up to the size of the SRAM image, for memory);
- MMs that read the same activation window with no write in between share one rounded copy.

Concurrent runs of one program each take their own SRAM (a small pool). With LPUC_MXM_THREAD=1,
programs with enough MXM work run their MXM instructions on a second thread, overlapped with the
others (runtime/overlap.py). SRAM pages none of whose tiles is live are given back to the OS during
the run, as few as keep the resident SRAM within 1.5x the image; every such page with
LPUC_SRAM_RELEASE=1 (less memory, slower runs), none with LPUC_SRAM_RELEASE=0 (runtime/release.py).
"""

from __future__ import annotations

import hashlib
import math
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from lpuc.dtypes import dtype_from_name, words_per_row
from lpuc.errors import LpucError
from lpuc.ir.graph import LPUC_DOMAIN
from lpuc.kernels import KernelContext, run_kernel
from lpuc.kernels.registry import CAPTURES_ATTR, get_kernel
from lpuc.kernels.softmax import softmax
from lpuc.lowering.builder import view_of
from lpuc.program import Access, Instruction, Program, TileSlot
from lpuc.runtime.chains import SMALL_CAST, Buffers, mm_step, softmax_step, ufunc_chain
from lpuc.runtime.fp16 import from_fp16, round_fp16, to_fp16
from lpuc.runtime.isa import decoded_attrs, epilogue, kernel_context, mxm_input, stacked
from lpuc.runtime.machine import Machine
from lpuc.runtime.overlap import MxmThread, mxm_waits, run_overlapped
from lpuc.runtime.release import Release, drop, page_releases

Step = Callable[[], None]


def _mxm_input(x: np.ndarray, precision: str, copy: bool = True) -> np.ndarray:
    """isa.mxm_input (same bits), with float32 -> fp16 rounding done in vectorized passes.
    copy=False: float32 operands of an fp32 MXM come back as they are (for immediate use only)."""
    # (only the MXM's arithmetic reads these: signaling NaNs may be quieted, fp16._QUIET)
    if precision == "fp16" and x.dtype == np.float32:
        return round_fp16(x, quiet=True)
    if x.dtype == np.float16:
        return from_fp16(x, quiet=True)  # already fp16: isa's first cast would only copy
    if x.dtype == np.float32 and not copy:
        return x  # isa's cast only copies; BLAS gives the same bits on the strided window
    return mxm_input(x, precision)


def _bound_kernel(ctx: KernelContext) -> Callable[[list], list[np.ndarray]]:
    """run_kernel(ctx, inputs) with the registry look-up done once."""
    k = get_kernel(ctx.op_type, ctx.domain)
    if k is None or ctx.attrs.get(CAPTURES_ATTR):
        return lambda inputs: run_kernel(ctx, inputs)
    fn, n = k.fn, ctx.num_outputs

    def call(inputs: list) -> list[np.ndarray]:
        out = fn(ctx, *inputs)
        outs = list(out) if isinstance(out, (tuple, list)) else [out]
        return [o if isinstance(o, np.ndarray) else np.asarray(o) for o in outs[:n]]

    return call


# ai.onnx ops whose kernels (lpuc/kernels/elementwise_*.py), given float32 operands and no
# attributes, compute exactly these ufuncs: a map of only these runs without the kernel plumbing,
# its last step straight into SRAM. Binary ops; Sum, Max, Min of n inputs, which the kernels fold
# left to right (((a + b) + c) + d); Relu, np.maximum(x, 0).
_FLOAT32_UFUNCS = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.true_divide}
_FLOAT32_FOLDS = {"Sum": np.add, "Max": np.maximum, "Min": np.minimum}

UfuncStep = tuple[np.ufunc, list[tuple[int, int]], bool]

# Kernels whose float results are values picked from their inputs (the max over a window): run on
# float32 copies of fp16 tensors they give the same values, which stores write back to fp16
# exactly, and numpy's float16 comparisons are an order of magnitude slower than float32 ones.
_SELECTING_KERNELS = frozenset({"MaxPool", "GlobalMaxPool"})
# Kernels that widen every float16 input to float32 (exact) first, compute in float32 and cast the
# result to the input dtype last: given float32 copies (converted fast) they compute the same
# float32 values, which the store rounds to fp16 as that last cast would. Not with a `slab`
# attribute: the slab pools (kernels/lowered.py) compute in float64, where a float32 result in
# between would round twice.
_WIDENING_KERNELS = frozenset({"Conv", "AveragePool", "GlobalAveragePool", "DepthwiseConv"})
# Of those, the ones whose slabs compute in float32 as well (lowered.depthwise_conv: the taps summed
# in accumulation_dtype(float16), float32), so that float32 copies give the same float32 values.
_WIDENING_SLAB_KERNELS = frozenset({"DepthwiseConv"})


def _float32_ufuncs(expr: list[dict], dtypes: list, dst_dtype: np.dtype) -> list[UfuncStep] | None:
    """The map's steps as (ufunc, args, rounds) when every step is one of those above and every
    operand float32 or float16 (dtypes: the operands'; the result window float32 or float16); None
    otherwise. args as in _Executor._map: (1, k) operand k, (2, k) step k's result; Relu's second
    argument is (3, 0), the constant 0. The kernels widen float16 arguments to float32 (exact) and
    cast their result to their first argument's dtype: `rounds` marks the steps whose result is
    float16, rounded to fp16 precision (and kept as float32) for the steps after it."""
    floats = (np.float32, np.float16)
    used = {int(a[1:]) for step in expr for a in step["args"] if a[0] == "i"}
    if dst_dtype not in floats or any(dtypes[k] is None or dtypes[k] not in floats for k in used):
        return None  # (an fp16 result is rounded once, when written: as the kernels' copy does)
    steps: list[UfuncStep] = []
    result_of: list[int] = []  # expression step -> the ufunc step computing its result
    half: list[bool] = []  # expression step -> whether its result is float16
    for step in expr:
        op, n = step["op"], len(step["args"])
        if step["attrs"] or step["domain"] not in ("", "ai.onnx") or "-" in step["args"]:
            return None
        args = [(1, int(a[1:])) if a[0] == "i" else (2, result_of[int(a[1:])]) for a in step["args"]]
        first = step["args"][0]
        rounds = bool(dtypes[int(first[1:])] == np.float16 if first[0] == "i" else half[int(first[1:])])
        if op == "Relu" and n == 1:
            steps.append((np.maximum, args + [(3, 0)], rounds))
        elif op in _FLOAT32_UFUNCS and n == 2:
            steps.append((_FLOAT32_UFUNCS[op], args, rounds))
        elif op in _FLOAT32_FOLDS and n >= 2:  # folded in float32, the result cast once
            steps.append((_FLOAT32_FOLDS[op], args[:2], rounds and n == 2))
            for k, arg in enumerate(args[2:]):
                steps.append((_FLOAT32_FOLDS[op], [(2, len(steps) - 1), arg], rounds and k == n - 3))
        else:
            return None
        result_of.append(len(steps) - 1)
        half.append(rounds)
    return steps


def _ufunc_map(steps: list[UfuncStep], operands: list, dst: np.ndarray, scratch: Scratch) -> Step:
    """A vxm.map of _float32_ufuncs steps: float16 operands widened (from_fp16), the kernels' ufuncs,
    the last one writing dst (a float32 window), or a float32 buffer of dst's shape from `scratch`
    then converted into dst (a float16 window; a float16 result rounds only there, to the same bits)."""
    *inner, (last_fn, last_args, last_rounds) = steps
    rounded_last = last_rounds and dst.dtype == np.float32  # float16 values into a float32 window
    via_scratch = rounded_last or dst.dtype != np.float32
    shape = dst.shape
    narrow = [k for k, o in enumerate(operands) if o is not None and o.dtype == np.float16]
    widened = list(operands)
    zeros: dict[tuple[int, ...], np.ndarray] = {}  # (a map's shapes are the same every run)

    def values(results: list, args: list[tuple[int, int]]) -> list:
        x = [widened[j] if k == 1 else results[j] for k, j in args if k != 3]
        if len(x) < len(args):  # Relu: np.maximum(x, 0), against an array of zeros (same bits)
            x.append(_zeros_cached(zeros, np.shape(x[0])))
        return x

    def vmap() -> None:
        for k, o in enumerate(operands):  # (an epilogue sets its product here before each call)
            widened[k] = o
        for k in narrow:
            widened[k] = from_fp16(operands[k])
        results: list[np.ndarray] = []
        for fn, args, rounds in inner:
            r = fn(*values(results, args))
            results.append(round_fp16(r) if rounds else r)
        out = scratch.get(shape) if via_scratch else dst
        last_fn(*values(results, last_args), out=out)
        if rounded_last:
            np.copyto(dst, round_fp16(out))
        elif via_scratch:
            to_fp16(out, out=dst)
        # Drop the widened copies (and an epilogue's product): kept, every map of the program would
        # hold its last operands between runs, many times the SRAM image in all.
        for k in range(len(widened)):
            widened[k] = None

    return vmap


def _fused_softmax(attrs: dict) -> Callable[[list], list[np.ndarray]] | None:
    """lowered.fused_softmax without the kernel plumbing (a kernel context per step, registry
    look-ups), for float32 operands, a float32 result, no causal masks and an expression of
    _float32_ufuncs steps: the kernels' ufuncs on the same arrays, then the same softmax. None
    otherwise. (A small model's softmax is a third of its run.)"""
    descs, outputs = attrs["inputs"], attrs["outputs"]
    if attrs["domain"] != LPUC_DOMAIN or attrs["attrs"].get("triangles") or len(outputs) != 1:
        return None
    if any(d is None or d.get("host") or d["dtype"] != "float32" for d in (*descs, *outputs)):
        return None
    steps = _float32_ufuncs(attrs["attrs"]["expr"], [np.dtype(np.float32)] * len(descs), np.dtype(np.float32))
    if steps is None:
        return None

    zeros: dict[tuple[int, ...], np.ndarray] = {}

    def call(operands: list) -> list[np.ndarray]:
        rows = [o if o.ndim < 2 or o.size != o.shape[-1] else o.reshape(-1) for o in operands]
        results: list[np.ndarray] = []
        for fn, args, _ in steps:
            x = [rows[j] if k == 1 else results[j] for k, j in args if k != 3]
            if len(x) < len(args):  # Relu, as _ufunc_map computes it
                x.append(_zeros_cached(zeros, np.shape(x[0])))
            results.append(fn(*x))
        return [softmax(np.asarray(results[-1]).reshape(operands[0].shape), -1)]

    return call


def _widens_fp16(attrs: dict) -> bool:
    """Whether a kernel instruction may take its float16 inputs as float32 (_WIDENING_KERNELS): its
    result is cast to its first input's dtype, so only if that and every output are float16."""
    kernel = attrs["kernel"]
    if kernel not in _WIDENING_KERNELS or attrs["attrs"].get("slab") and kernel not in _WIDENING_SLAB_KERNELS:
        return False
    first = attrs["inputs"][0] if attrs["inputs"] else None
    outputs = [d for d in attrs["outputs"] if d is not None]
    return (
        first is not None
        and not first.get("host")
        and first["dtype"] == "float16"
        and all(not d.get("host") and d["dtype"] == "float16" for d in outputs)
    )


class Scratch:
    """One float32 buffer lent as an array of any shape, to steps that never run at the same time
    and use it only while they run (a buffer per shape held megabytes on DenseNet)."""

    def __init__(self) -> None:
        self._block = np.empty(0, np.float32)

    def get(self, shape: tuple[int, ...]) -> np.ndarray:
        n = math.prod(shape)
        if self._block.size < n:
            self._block = np.empty(n, np.float32)
        return self._block[:n].reshape(shape)


_zero_block = np.zeros(0, np.float32)


def _zeros(shape: tuple[int, ...]) -> np.ndarray:
    """Read-only float32 zeros of `shape`: numpy's maximum against the scalar 0 takes a loop
    several times slower than against an array, with the same results (NaNs and signed zeros)."""
    global _zero_block
    n = math.prod(shape)
    if _zero_block.size < n:
        block = np.zeros(max(n, 1 << 17), np.float32)
        block.flags.writeable = False
        _zero_block = block
    return _zero_block[:n].reshape(shape)


def _zeros_cached(cache: dict[tuple[int, ...], np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    """_zeros(shape), looked up in a step's own cache first: slicing and reshaping the zero block
    on every call cost about a microsecond a Relu (a view of an older block stays valid: read-only)."""
    z = cache.get(shape)
    if z is None:
        z = cache[shape] = _zeros(shape)
    return z


def _copy_into(dst: np.ndarray, value: np.ndarray) -> None:
    """np.copyto(dst, value, casting="unsafe"), with float32 <-> float16 conversions done fast."""
    if value.shape == dst.shape:
        if dst.dtype == np.float16 and value.dtype == np.float32:
            to_fp16(value, out=dst)
            return
        if dst.dtype == np.float32 and value.dtype == np.float16:
            np.copyto(dst, from_fp16(value))
            return
    np.copyto(dst, value, casting="unsafe")


def _whole(t: TileSlot) -> Access:
    return Access(t.id, t.slice, t.addr, t.rows, t.lane, t.lanes)


def _span(a: Access, dtype: np.dtype) -> tuple[int, int, int]:
    """(slice, first address, end address) of a window."""
    return a.slice, a.addr, a.addr + a.nrows * words_per_row(dtype)


def _merge(spans: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    out: list[tuple[int, int, int]] = []
    for s, lo, hi in sorted(spans):
        if out and out[-1][0] == s and lo <= out[-1][2]:
            out[-1] = (s, out[-1][1], max(out[-1][2], hi))
        else:
            out.append((s, lo, hi))
    return out


def _readonly(v: np.ndarray) -> np.ndarray:
    v = v.view()
    v.flags.writeable = False  # kernels receive SRAM itself: one writing its inputs fails loudly
    return v


@dataclass
class _Tensor:
    """How a whole tensor maps onto tiles: (tile view, row, col) pieces of its [rows, cols] view."""

    shape: tuple[int, ...]
    dtype: np.dtype
    pieces: list[tuple[np.ndarray, int, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rows_cols = view_of(self.shape)
        self.covered: bool | None = None  # whether the pieces cover the tensor (known on first load)

    def direct(self) -> np.ndarray | None:
        """The tensor as one contiguous SRAM view, when a single tile holds all of it unconverted."""
        if len(self.pieces) != 1:
            return None
        v, r, c = self.pieces[0]
        if (r, c) != (0, 0) or v.shape != self.rows_cols or v.dtype != self.dtype:
            return None
        if not v.flags.c_contiguous:
            return None  # the interpreter hands kernels a contiguous copy; keep its memory layout
        return _readonly(v.reshape(self.shape))

    def window(self, any_dtype: bool = False) -> np.ndarray | None:
        """The tensor as a view of the one tile window holding all of it (any strides), or None;
        unconverted (the tile of the tensor's dtype) unless any_dtype."""
        if len(self.pieces) != 1:
            return None
        v, r, c = self.pieces[0]
        if (r, c) != (0, 0) or v.shape != self.rows_cols or v.dtype != self.dtype and not any_dtype:
            return None
        window = v.view()
        try:
            window.shape = self.shape  # (a view, never a copy: fails where the strides do not allow it)
        except AttributeError:
            return None
        return window

    def load(self) -> np.ndarray:
        """A fresh array (what Machine.load_tensor builds)."""
        if self.covered is None:
            mask = np.zeros(self.rows_cols, dtype=bool)
            for v, r, c in self.pieces:
                mask[r : r + v.shape[0], c : c + v.shape[1]] = True
            self.covered = bool(mask.all())
        # load_tensor starts from zeros; they matter only where no tile lands
        fresh = np.empty if self.covered else np.zeros
        out = fresh(self.rows_cols, dtype=self.dtype)
        for v, r, c in self.pieces:
            out[r : r + v.shape[0], c : c + v.shape[1]] = v
        return out.reshape(self.shape)

    def store(self, value: np.ndarray) -> None:
        view = value.reshape(self.rows_cols if value.shape == self.shape else view_of(value.shape))
        pieces = self.pieces
        if view.dtype == np.float32 and len(pieces) > 1 and all(v.dtype == np.float16 for v, _, _ in pieces):
            # One conversion of the whole value: numpy's float16 cast of each tile-sized piece is
            # several times slower per element than to_fp16 on many (elementwise: same bits)
            view = to_fp16(view)
        for v, r, c in self.pieces:
            _copy_into(v, view[r : r + v.shape[0], c : c + v.shape[1]])


def _small_store(t: _Tensor) -> Callable[[np.ndarray], None]:
    """t.store for a run's input (an array of t's shape): one cast into its one window if small
    (float32 or the tile's dtype into a float16 or float32 tile: numpy's cast, _copy_into's bits)."""
    window = t.window(any_dtype=True)
    if window is None or window.size >= SMALL_CAST or window.dtype not in (np.float16, np.float32):
        return t.store
    kind = window.dtype

    def store(value: np.ndarray) -> None:
        if value.dtype == np.float32 or value.dtype == kind:
            np.copyto(window, value, casting="unsafe")
        else:
            t.store(value)

    return store


def _fresh_load(t: _Tensor) -> Callable[[], np.ndarray]:
    """t.load: a fresh C-ordered array of the tensor; one copy of its window where it has one."""
    window = t.window()
    return t.load if window is None else window.copy


class _Executor:
    """One SRAM image with every instruction bound to it as a step."""

    def __init__(self, program: Program):
        self.machine = m = Machine(program)  # SRAM with the constants written, MXM planes, host memory
        self.program = program
        self._dirty = self._written_spans(program)
        self._load_cache: dict[int, dict] = {}
        order = sorted(program.instructions, key=lambda i: i.id)
        builders = {
            "mxm.lw": self._lw,
            "mxm.mm": self._mm,
            "vxm.map": self._map,
            "vxm.kernel": self._kernel,
            "sxm.kernel": self._kernel,
            "host.kernel": self._kernel,
        }
        self._shared = self._share_mxm_inputs(order)
        # Converted weights kept across runs: at most as many bytes as the program's SRAM image.
        image = (
            program.summary.get("sram_peak_bytes")
            or sum(t.words for t in m.tiles) * program.target.word_bytes
        )
        self._image_bytes = self._weight_budget = int(image)
        self._mm_scratch = Scratch()  # products before accumulation
        self._map_scratch = Scratch()  # float32 results of fp16 maps
        self._stack_scratch: dict[tuple, np.ndarray] = {}  # stacked map operands (stacked rows)
        self._epilogue_scratch = Scratch()  # the same for MM epilogues (on the MXM thread, if any)
        self._buffers = Buffers()  # small steps' own temporaries (runtime/chains.py)
        self._converted: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}  # weight bytes -> MXM copy
        self._mxm_inputs: list[np.ndarray | None] = [None] * len(self._shared)
        self.steps: list[Step] = [
            builders[ins.opcode](ins, decoded_attrs(ins, self._load_cache)) for ins in order
        ]
        # Build-time look-ups only: the steps hold what they use (kept, the decoded attributes of
        # every instruction stayed alive run after run)
        self._load_cache.clear()
        self._converted.clear()
        self._mxm_waits = mxm_waits(program, order)  # None: all steps on the calling thread
        self._mxm_thread: MxmThread | None = None
        # What a run must undo of the previous one: constants overwritten by tiles that reuse their
        # slots, and, only if some read takes values that no earlier write of its tile produced
        # (the validator refuses those), everything written, so that such reads see zeros again.
        const_spans = _merge([_span(_whole(t), t.np_dtype) for t in program.tiles if t.kind == "const"])
        zeros = self._reads_uncovered(program, order)
        # (not with steps on two threads, where a page's last user is not the last to run, nor when
        # reads take values of the previous run, zeroed at the start of each)
        if self._mxm_waits is None and not zeros:
            self._release_dead_pages(page_releases(program, order, self._image_bytes))
        self._restore: list[tuple[np.ndarray, np.ndarray | None]] = []
        for s, lo, hi in self._dirty:
            block = m.sram.words[s, lo:hi]
            if any(cs == s and clo < hi and lo < chi for cs, clo, chi in const_spans):
                self._restore.append((block, block.copy()))
            elif zeros:
                self._restore.append((block, None))
        self._inputs = [_small_store(self._tensor(b.shape, b.dtype, b.tiles)) for b in program.inputs]
        self._outputs: list[tuple[str, int | None, Callable[[], np.ndarray] | None]] = []
        for b in program.outputs:
            if b.tiles and m.tiles[b.tiles[0]].kind == "host":
                self._outputs.append((b.name, b.tiles[0], None))
            else:
                self._outputs.append((b.name, None, _fresh_load(self._tensor(b.shape, b.dtype, b.tiles))))
        self._reset_needed = False
        self._host_constants = dict(m.host_memory)  # what a run starts host memory with
        self._uses_host = any(t.kind == "host" for t in m.tiles)  # (else host memory stays empty)
        self._planes = list(m.planes.values())
        # (name, dtype, shape) of each input, in binding order: the check of a run's inputs
        self._input_checks = [(b.name, dtype_from_name(b.dtype), tuple(b.shape)) for b in program.inputs]

    # -- build helpers --------------------------------------------------------------------------
    def _release_dead_pages(self, releases: dict[int, Release]) -> None:
        """Each step after which SRAM pages are dead also drops them (runtime/release.py)."""
        buffer = self.machine.sram.buffer
        for i, ranges in releases.items():

            def step(run: Step = self.steps[i], ranges: Release = ranges) -> None:
                run()
                drop(buffer, ranges)

            self.steps[i] = step

    def _view(self, a: Access) -> np.ndarray:
        return self.machine.sram.view(a, self.machine.tiles[a.buf].np_dtype)

    def _tensor(self, shape, dtype, tiles, row_offset: int = 0) -> _Tensor:
        shape = () if shape is None else tuple(shape)  # a data-shaped value: store uses its own shape
        t = _Tensor(shape, dtype_from_name(dtype) if isinstance(dtype, str) else np.dtype(dtype))
        for b in tiles:
            slot = self.machine.tiles[b]
            t.pieces.append((self._view(_whole(slot)), slot.r0 - row_offset, slot.c0))
        return t

    @staticmethod
    def _written_spans(program: Program) -> list[tuple[int, int, int]]:
        tiles = program.tiles
        spans = [_span(_whole(tiles[b]), tiles[b].np_dtype) for x in program.inputs for b in x.tiles]
        for ins in program.instructions:
            for a in ins.writes:
                t = tiles[a.buf]
                if t.kind != "host":
                    spans.append(_span(a, t.np_dtype))
                    spans.append(_span(_whole(t), t.np_dtype))  # kernels store whole tiles
        return _merge(spans)

    @staticmethod
    def _reads_uncovered(program: Program, order: list[Instruction]) -> bool:
        """Whether some read takes a value of a computed tile that no earlier write of it produced
        (kernels read and write whole tiles; outputs are read at the end)."""
        tiles = program.tiles
        # A mask per tile being written; dropped once every value is written (`complete`): the
        # masks of all a program's tiles at once took several times its SRAM image.
        written: dict[int, np.ndarray] = {}
        unwritten: dict[int, int] = {}  # tile -> values of it not yet written
        complete: set[int] = set()

        def window(a: Access, whole: bool) -> np.ndarray | None:
            t = tiles[a.buf]
            if t.kind in ("const", "input", "io", "host") or t.id in complete:
                return None  # loaded before the run (or not in SRAM), or every value written
            mask = written.get(t.id)
            if mask is None:
                mask = written[t.id] = np.zeros((t.rows, t.lanes), dtype=bool)
                unwritten[t.id] = mask.size
            if whole:
                return mask
            r0 = (a.addr - t.addr) // words_per_row(t.np_dtype)
            return mask[r0 : r0 + a.nrows, a.lane0 - t.lane : a.lane0 - t.lane + a.nlanes]

        for ins in order:
            whole = ins.opcode.endswith(".kernel")
            for a in ins.reads:
                w = window(a, whole)
                if w is not None and not w.all():
                    return True
            for a in ins.writes:
                w = window(a, whole)
                if w is not None:
                    b = tiles[a.buf].id
                    unwritten[b] -= w.size - int(np.count_nonzero(w))
                    w[...] = True
                    if unwritten[b] == 0:
                        complete.add(b)
                        del written[b], unwritten[b]
        for b in program.outputs:
            for buf in b.tiles:
                w = window(_whole(tiles[buf]), True)
                if w is not None and not w.all():
                    return True
        return False

    def _written(self, a: Access) -> bool:
        s, lo, hi = _span(a, self.machine.tiles[a.buf].np_dtype)
        return any(ds == s and dlo < hi and lo < dhi for ds, dlo, dhi in self._dirty)

    # -- instructions ---------------------------------------------------------------------------
    def _lw(self, ins: Instruction, attrs: dict) -> Step:
        plane = self.machine.planes[ins.unit.split(".")[0]]
        views, precision = [self._view(a) for a in ins.reads], attrs["precision"]
        constant = not any(self._written(a) for a in ins.reads)
        weights = self._constant_weights(stacked(views), precision) if constant else None
        if weights is not None:

            def lw() -> None:
                plane.shadow = weights
        else:

            def lw() -> None:
                plane.shadow = _mxm_input(stacked(views), precision)

        return lw

    def _constant_weights(self, src: np.ndarray, precision: str) -> np.ndarray | None:
        """What an mxm.lw of a window nothing writes loads in every run, converted once (None: over
        the memory budget, so converted per run as the interpreter does). Windows holding the same
        bytes share one converted array; fp32 weights of one window need no conversion: the window
        itself when contiguous (several windows are stacked into a copy, which counts against the
        budget)."""
        in_sram = np.may_share_memory(src, self.machine.sram.words)
        if src.dtype == np.float32 and precision != "fp16" and in_sram and src.flags.c_contiguous:
            # Only a contiguous window: BLAS sums a strided single column (N = 1, a dot product
            # with a stride) in another order than the interpreter's contiguous copy.
            return _readonly(src)
        digest = hashlib.blake2b(np.ascontiguousarray(src).data, digest_size=16).digest()
        key = (src.shape, src.dtype.str, precision, digest)
        held = self._converted.get(key)
        if held is not None and np.array_equal(held[0].view(np.uint8), src.view(np.uint8)):
            return held[1]  # same bytes (checked, not trusted to the hash)
        weights = _mxm_input(src, precision, copy=in_sram)  # a stacked copy is used as it is
        size = weights.nbytes + (0 if in_sram or weights is src else src.nbytes)  # what is kept
        if size > self._weight_budget:
            return None
        self._weight_budget -= size
        weights.flags.writeable = False
        self._converted.setdefault(key, (src, weights))
        return weights

    def _mm(self, ins: Instruction, attrs: dict) -> Step:
        plane = self.machine.planes[ins.unit]
        install, precision = bool(attrs.get("install")), attrs["precision"]
        src = self._view(ins.reads[0])
        dst = None if attrs.get("keep") else self._view(ins.writes[0])
        # A result stacked over several windows (isa.write_rows): rows [r0, r1) of it into each.
        stack = [] if dst is None or len(ins.writes) < 2 else [self._view(a) for a in ins.writes]
        spans = [(sum(len(v) for v in stack[:k]), len(d)) for k, d in enumerate(stack)]
        acc = self._view(ins.reads[1]) if attrs.get("acc") else None
        from_acc = bool(attrs.get("from_acc"))
        fused = attrs.get("epilogue")  # a map applied on the way to dst, as isa.epilogue does
        operands = [None, *(_readonly(self._view(a)) for a in ins.reads[1:])] if fused else []
        # (a result stacked over several windows takes isa's path: the map's rows, then the windows)
        fast_epilogue = self._fast_epilogue(fused, operands, dst) if fused is not None and not stack else None
        slot, first, last = self._shared.get(ins.id, (None, True, True))
        shared, scratch = self._mxm_inputs, self._mm_scratch
        into_dst = (
            dst is not None
            and not stack
            and fused is None
            and not from_acc
            and dst.dtype == np.float32
            and (acc is None or acc.dtype == np.float32)
        )

        def general() -> None:
            if first:
                a = _mxm_input(src, precision, copy=False)
                if not last:
                    shared[slot] = a
            else:
                a = shared[slot]
                if last:
                    shared[slot] = None
            w = plane.active
            if into_dst and a.dtype == w.dtype == np.float32:
                # isa's product, sum and write without the temporaries (BLAS writes strided windows
                # with the same bits)
                if acc is None:
                    np.matmul(a, w, out=dst)
                else:
                    product = scratch.get(dst.shape)
                    np.matmul(a, w, out=product)
                    np.add(product, acc, out=dst)
                plane.acc = None
                return
            product = a @ w
            if from_acc:
                np.add(product, plane.acc, out=product)
            if acc is not None:
                widened = from_fp16(acc) if acc.dtype == np.float16 else acc.astype(product.dtype)
                np.add(product, widened, out=product)  # (product: a fresh array of its own)
            if dst is None:
                plane.acc = product  # kept in the plane's accumulators for its next MM
            elif fused is not None:
                plane.acc = None
                if fast_epilogue is not None and product.dtype == np.float32:
                    fast_epilogue(product)
                elif stack:
                    result = epilogue(fused, product, operands)
                    for part, (row, rows) in zip(stack, spans):
                        _copy_into(part, result[row : row + rows])
                else:
                    _copy_into(dst, epilogue(fused, product, operands))
            elif stack:
                plane.acc = None
                for part, (row, rows) in zip(stack, spans):
                    _copy_into(part, product[row : row + rows])
            else:
                plane.acc = None
                _copy_into(dst, product)

        small = None
        if dst is not None and not stack and not from_acc:
            small = self._small_mm(src, precision, dst, acc, fused, operands)
        if small is None:

            def mm() -> None:
                if install:
                    plane.active, plane.shadow = plane.shadow, None
                general()

            return mm

        def small_mm() -> None:
            if install:
                plane.active, plane.shadow = plane.shadow, None
            a = small(plane.active, None if first else shared[slot])
            if a is None:  # weights of another kind than the step was built for
                general()
                return
            plane.acc = None
            if slot is not None:  # (as general() keeps the input for the MMs sharing it)
                if first:
                    shared[slot] = a
                elif last:
                    shared[slot] = None

        return small_mm

    def _small_mm(
        self, src: np.ndarray, precision: str, dst: np.ndarray, acc: np.ndarray | None, fused, operands: list
    ) -> Callable[[np.ndarray, np.ndarray | None], np.ndarray | None] | None:
        """The MM as chains.mm_step (buffers kept between runs) where it applies: no epilogue or one
        of float32 ufuncs on the float32 product (the general step's _fast_epilogue, unrounded)."""
        chain = None
        if fused is not None:
            if fused["result"] != "float32":
                return None
            dtypes = [
                None if k is None else np.dtype(np.float32) if k == 0 else operands[k].dtype
                for k in fused["operands"]
            ]
            steps = _float32_ufuncs(fused["expr"], dtypes, dst.dtype)
            if steps is None:
                return None

            def chain(product: np.ndarray, final: np.ndarray) -> list | None:
                values = [
                    None if k is None else product if k == 0 else operands[k] for k in fused["operands"]
                ]
                return ufunc_chain(steps, values, dst.shape, final, self._buffers, _zeros)

        reads = [o for o in operands if o is not None]
        return mm_step(src, precision, dst, reads, chain, acc, self._buffers, _mxm_input)

    def _fast_epilogue(
        self, fused: dict, reads: list, dst: np.ndarray
    ) -> Callable[[np.ndarray], None] | None:
        """isa.epilogue on the ufunc path of maps, for a float32 product (operand 0, cast to the
        float32 or float16 `result`) and float32 or float16 operands: the same ufuncs on the same
        values; None where that path does not apply."""
        if fused["result"] not in ("float32", "float16"):
            return None
        half = fused["result"] == "float16"  # the product as float16 values: rounded to fp16
        placeholder = np.empty(0, np.float32)
        operands = [None if k is None else placeholder if k == 0 else reads[k] for k in fused["operands"]]
        dtypes = [
            None if k is None else np.dtype(np.float16 if half else np.float32) if k == 0 else reads[k].dtype
            for k in fused["operands"]
        ]
        steps = _float32_ufuncs(fused["expr"], dtypes, dst.dtype)
        if steps is None:
            return None
        run = _ufunc_map(steps, operands, dst, self._epilogue_scratch)
        product_at = [i for i, k in enumerate(fused["operands"]) if k == 0]

        def apply(product: np.ndarray) -> None:
            if half:
                product = round_fp16(product)
            for i in product_at:
                operands[i] = product
            run()
            for i in product_at:
                operands[i] = placeholder  # (not kept between runs)

        return apply

    def _share_mxm_inputs(self, order: list[Instruction]) -> dict[int, tuple[int, bool, bool]]:
        """MMs that read the same window with nothing written to it in between multiply the same
        values: the first rounds them to the MXM precision, the others reuse that array.
        Returns mm id -> (slot, first user, last user) for windows read more than once."""
        tiles = self.machine.tiles
        live: dict[int, dict[tuple, int]] = {}  # slice -> window key -> slot
        users: list[list[int]] = []
        for ins in order:
            if ins.opcode == "mxm.mm":
                a = ins.reads[0]
                key = (a.addr, a.nrows, a.lane0, a.nlanes, tiles[a.buf].dtype, ins.attrs.get("precision"))
                slot = live.setdefault(a.slice, {}).setdefault(key, len(users))
                if slot == len(users):
                    users.append([])
                users[slot].append(ins.id)
            for w in ins.writes:
                t = tiles[w.buf]
                if t.kind == "host":
                    continue
                for s, lo, hi in (_span(w, t.np_dtype), _span(_whole(t), t.np_dtype)):
                    windows = live.get(s, {})
                    for key in [
                        k
                        for k in windows
                        if k[0] < hi and lo < k[0] + k[1] * words_per_row(dtype_from_name(k[4]))
                    ]:
                        del windows[key]
        out: dict[int, tuple[int, bool, bool]] = {}
        for slot, ids in enumerate(u for u in users if len(u) > 1):
            for k, i in enumerate(ids):
                out[i] = (slot, k == 0, k == len(ids) - 1)
        return out

    def _map(self, ins: Instruction, attrs: dict) -> Step:
        reads = [_readonly(self._view(a)) for a in ins.reads]
        operands: list = []
        gathers: list[tuple[list[np.ndarray], np.ndarray]] = []  # stacked operands, filled per run
        for i, k in enumerate(attrs["operands"]):
            if isinstance(k, list):
                parts = [reads[j] for j in k]
                shape = (sum(len(r) for r in parts), *parts[0].shape[1:])
                # One buffer per shape, dtype and operand (maps run one at a time, filling it first).
                key = (shape, parts[0].dtype.str, i)
                buf = self._stack_scratch.get(key)
                if buf is None:
                    buf = self._stack_scratch[key] = np.empty(shape, parts[0].dtype)
                gathers.append((parts, buf))
                operands.append(buf)
            else:
                operands.append(None if k is None else reads[k])
        step = self._map_step(attrs, operands, self._view(ins.writes[0]))
        if not gathers:
            return step

        def gathered() -> None:
            for parts, buf in gathers:  # isa.stacked, into the shared buffer
                np.concatenate(parts, out=buf)
            step()

        return gathered

    def _map_step(self, attrs: dict, operands: list, dst: np.ndarray) -> Step:
        fast = _float32_ufuncs(attrs["expr"], [None if o is None else o.dtype for o in operands], dst.dtype)
        if fast is not None:  # (one float32 scratch buffer: maps run one at a time)
            return _ufunc_map(fast, operands, dst, self._map_scratch)
        program: list[tuple[Callable, list[tuple[int, int]]]] = []
        for step in attrs["expr"]:
            ctx = KernelContext(step["op"], step["attrs"], step.get("opset", 0), 1, step["domain"])
            # (0, _) missing, (1, k) operand k, (2, k) result of step k
            args = [
                (0, 0) if a == "-" else (1, int(a[1:])) if a[0] == "i" else (2, int(a[1:]))
                for a in step["args"]
            ]
            program.append((_bound_kernel(ctx), args))

        def vmap() -> None:
            results: list[np.ndarray] = []
            for call, args in program:
                results.append(
                    call([None if k == 0 else operands[j] if k == 1 else results[j] for k, j in args])[0]
                )
            _copy_into(dst, results[-1])

        return vmap

    def _kernel(self, ins: Instruction, attrs: dict) -> Step:
        copies = self._concat_copies(ins, attrs) if attrs["kernel"] == "Concat" else None
        if copies is not None:

            def concat() -> None:
                for dst, src in copies:
                    _copy_into(dst, src)

            return concat
        small = self._small_softmax(ins, attrs) if attrs["kernel"] == "FusedSoftmax" else None
        if small is not None:
            return small
        m = self.machine
        loaders: list[Callable[[], np.ndarray | None]] = []
        widen = _widens_fp16(attrs)
        for desc in attrs["inputs"]:
            if desc is None:
                loaders.append(lambda: None)
                continue
            refs = ins.reads[desc["first"] : desc["first"] + desc["count"]]
            if desc.get("host"):
                loaders.append(lambda b=refs[0].buf: m.host_memory[b])
                continue
            t = self._tensor(desc["shape"], desc["dtype"], [r.buf for r in refs], desc["row_offset"])
            direct = t.direct()
            load = (lambda v=direct: v) if direct is not None else t.load
            if (widen or attrs["kernel"] in _SELECTING_KERNELS) and t.dtype == np.float16:
                load = lambda load=load: from_fp16(load())  # noqa: E731
            loaders.append(load)
        call = (_fused_softmax(attrs) if attrs["kernel"] == "FusedSoftmax" else None) or _bound_kernel(
            kernel_context(attrs)
        )
        stores: list[tuple[dict, Callable[[np.ndarray], None]] | None] = []
        for desc in attrs["outputs"]:
            if desc is None:
                stores.append(None)
                continue
            refs = ins.writes[desc["first"] : desc["first"] + desc["count"]]
            if desc.get("host"):
                stores.append((desc, self._host_store(refs[0].buf, dtype_from_name(desc["dtype"]))))
            else:
                t = self._tensor(desc["shape"], desc["dtype"], [r.buf for r in refs], desc["row_offset"])
                stores.append((desc, t.store))
        kernel_name, node = attrs["kernel"], ins.node

        def kernel() -> None:
            try:
                results = call([load() for load in loaders])
            except LpucError as e:  # bad data (e.g. an index out of range): name the node, as isa does
                e.args = (f"node '{node}' ({kernel_name}): {e}",)
                raise
            for store, value in zip(stores, results):
                if store is None:
                    continue
                desc, put = store
                if desc["shape"] is not None and tuple(value.shape) != tuple(desc["shape"]):
                    raise RuntimeError(
                        f"instruction {ins.id} ({kernel_name} {node}): kernel produced shape "
                        f"{tuple(value.shape)}, the program expects {tuple(desc['shape'])}"
                    )
                put(value)

        return kernel

    def _small_softmax(self, ins: Instruction, attrs: dict) -> Step | None:
        """A FusedSoftmax as chains.softmax_step: where _fused_softmax applies, every operand one
        whole SRAM window and the result one window. (Strided operands are fine: only the
        expression's elementwise ufuncs read them; the reductions read its contiguous result.)"""
        if _fused_softmax(attrs) is None:
            return None
        windows = []
        for desc, refs in [(d, ins.reads) for d in attrs["inputs"]] + [(attrs["outputs"][0], ins.writes)]:
            t = self._tensor(
                desc["shape"],
                desc["dtype"],
                [r.buf for r in refs[desc["first"] : desc["first"] + desc["count"]]],
                desc["row_offset"],
            )
            window = t.window()
            if window is None:
                return None
            windows.append(window)
        *operands, dst = windows
        steps = _float32_ufuncs(
            attrs["attrs"]["expr"], [np.dtype(np.float32)] * len(operands), np.dtype(np.float32)
        )
        return softmax_step(steps, operands, dst, self._buffers, _zeros)

    def _concat_copies(self, ins: Instruction, attrs: dict) -> list[tuple[np.ndarray, np.ndarray]] | None:
        """A Concat as copies from its input tiles straight into its output tiles, (output window,
        input window) pairs: what loading the inputs, concatenating them and storing the result
        writes, without the two whole-tensor copies in between. Only where each input is a block
        of the output's [rows, cols] view: along the last axis (a column block) or an axis with
        only 1s before it (a row block); inputs and output all float16 / float32 (np.concatenate's
        promotion and the store's cast then give the value a direct cast gives) or all one dtype;
        every input covered by its tiles (else loading fills zeros) and no output tile overlapping
        an input one. None otherwise (the kernel runs)."""
        descs, outs = attrs["inputs"], attrs["outputs"]
        if len(outs) != 1 or outs[0] is None or not descs or any(d is None for d in descs):
            return None
        if any(d.get("host") or d["shape"] is None for d in (*descs, outs[0])):
            return None
        shapes = [tuple(d["shape"]) for d in descs]
        ndim = len(shapes[0])
        if ndim < 2 or any(len(sh) != ndim for sh in shapes):
            return None
        axis = int(attrs["attrs"].get("axis", 1))
        axis = axis + ndim if axis < 0 else axis
        rest = [sh[:axis] + sh[axis + 1 :] for sh in shapes]
        if not 0 <= axis < ndim or any(r != rest[0] for r in rest):
            return None
        out_shape = (*shapes[0][:axis], sum(sh[axis] for sh in shapes), *shapes[0][axis + 1 :])
        if tuple(outs[0]["shape"]) != out_shape:
            return None
        dtypes = {d["dtype"] for d in (*descs, outs[0])}
        if len(dtypes) > 1 and not dtypes <= {"float16", "float32"}:
            return None
        if axis == ndim - 1:
            offsets = [(0, sum(sh[-1] for sh in shapes[:k])) for k in range(len(shapes))]
        elif math.prod(shapes[0][:axis]) == 1:
            offsets = [(sum(view_of(sh)[0] for sh in shapes[:k]), 0) for k in range(len(shapes))]
        else:
            return None

        def tensor(desc: dict, refs: tuple[Access, ...]) -> _Tensor | None:
            t = self._tensor(desc["shape"], desc["dtype"], [r.buf for r in refs], desc["row_offset"])
            rows, cols = t.rows_cols
            for v, r, c in t.pieces:
                if r < 0 or c < 0 or r + v.shape[0] > rows or c + v.shape[1] > cols:
                    return None
            return t

        out = tensor(outs[0], ins.writes[outs[0]["first"] : outs[0]["first"] + outs[0]["count"]])
        sources = [tensor(d, ins.reads[d["first"] : d["first"] + d["count"]]) for d in descs]
        if out is None or any(t is None for t in sources):
            return None
        copies: list[tuple[np.ndarray, np.ndarray]] = []
        for t, (row0, col0) in zip(sources, offsets):
            covered = np.zeros(t.rows_cols, dtype=bool)
            for v, r, c in t.pieces:
                covered[r : r + v.shape[0], c : c + v.shape[1]] = True
                for ov, orow, ocol in out.pieces:
                    if np.may_share_memory(ov, v) and np.shares_memory(ov, v):
                        return None  # (the kernel reads every input before it writes)
                    top, left = max(row0 + r, orow), max(col0 + c, ocol)
                    bottom = min(row0 + r + v.shape[0], orow + ov.shape[0])
                    right = min(col0 + c + v.shape[1], ocol + ov.shape[1])
                    if top < bottom and left < right:
                        copies.append(
                            (
                                ov[top - orow : bottom - orow, left - ocol : right - ocol],
                                v[top - row0 - r : bottom - row0 - r, left - col0 - c : right - col0 - c],
                            )
                        )
            if not covered.all():
                return None
        return copies

    def _host_store(self, buf: int, dtype: np.dtype) -> Callable[[np.ndarray], None]:
        host, words = self.machine.host_memory, self.machine.sram.words

        def put(value: np.ndarray) -> None:
            value = value.astype(dtype, copy=False)
            # host memory outlives the step: never keep a view of SRAM (a kernel may return its input)
            host[buf] = value.copy() if np.may_share_memory(value, words) else value

        return put

    # -- running ----------------------------------------------------------------------------------
    def _checked_inputs(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """The input values in binding order, when they are exactly what the program takes (names,
        arrays of its shapes and dtypes); otherwise Machine.coerced_inputs' conversion or error."""
        values = []
        if len(inputs) == len(self._input_checks):
            for name, dtype, shape in self._input_checks:
                value = inputs.get(name)
                if type(value) is not np.ndarray or value.dtype != dtype or value.shape != shape:
                    break
                values.append(value)
            else:
                return values
        return [value for _, value in self.machine.coerced_inputs(inputs)]

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        m = self.machine
        values = self._checked_inputs(inputs)  # refuse bad inputs before touching state
        if self._reset_needed:
            for block, held in self._restore:
                if held is None:
                    block.fill(0)
                else:
                    np.copyto(block, held)
            for p in self._planes:
                p.shadow = p.active = None
            if self._uses_host:
                m.host_memory.clear()
                m.host_memory.update(self._host_constants)
        self._reset_needed = True
        for store, value in zip(self._inputs, values):
            store(value)
        if self._mxm_waits is None:
            for step in self.steps:
                step()
        else:
            if self._mxm_thread is None:
                self._mxm_thread = MxmThread()
                weakref.finalize(self, self._mxm_thread.close)
            run_overlapped(self._mxm_thread, self.steps, self._mxm_waits)
        # Fresh arrays (load copies): the next run reuses this SRAM.
        return {
            name: m.host_memory[host] if host is not None else load() for name, host, load in self._outputs
        }


class Plan:
    """A program's executors: built on first use, reused by later runs (one per concurrent run)."""

    def __init__(self, program: Program):
        self.program = program
        self._free: list[_Executor] = [_Executor(program)]
        self.last_seconds = math.inf  # how long the last run took (lpuc.runtime opens no progress
        # stage for quick ones)

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            ex = self._free.pop()
        except IndexError:  # another thread is running this program
            ex = _Executor(self.program)
        start = time.perf_counter()
        try:
            return ex.run(inputs)
        finally:
            self.last_seconds = time.perf_counter() - start
            self._free.append(ex)
