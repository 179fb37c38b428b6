"""What each opcode does to the machine. The kernels registry defines the op semantics; this
module only moves tiles between SRAM, MXM planes and those kernels.

    mxm.lw      load weight windows (rows in order) into the plane's shadow buffer (rounded to the
                MXM precision)
    mxm.mm      [install shadow weights,] stream activation rows through the plane; add the plane's
                accumulators (from_acc) and / or the result window (acc); keep the sum in the
                accumulators (keep) or write it to the result window; fp32 accumulation; with an
                epilogue, a fused map transforms the result on its way to the window
    vxm.map     evaluate an elementwise expression over tile windows (numpy broadcasting)
    vxm.kernel  apply an op's kernel to operands assembled from tiles (whole tensors or row slabs)
    sxm.kernel  the same on a switch unit (data movement)
    host.kernel the same on the host, behind PCIe transfers (host fallback)
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from lpuc.dtypes import dtype_from_name
from lpuc.errors import LpucError
from lpuc.jsonable import from_json
from lpuc.kernels import KernelContext, run_kernel
from lpuc.kernels.lowered import evaluate_expression
from lpuc.program import Instruction
from lpuc.runtime.machine import Machine

Handler = Callable[[Machine, Instruction, dict], None]


def mxm_input(x: np.ndarray, precision: str) -> np.ndarray:
    """What the MXM multiplies: fp16-rounded values (fp16 mode), exact fp32, or exact integers.

    1-byte integers (the int8 mode) become float64: every product and every sum of fewer than 2**38
    of them is an exact integer there, and float64 products use BLAS (int64 ones do not)."""
    if np.dtype(x.dtype).kind in "iub":
        return x.astype(np.float64 if np.dtype(x.dtype).itemsize == 1 else np.int64)
    if precision == "fp16":
        return x.astype(np.float16).astype(np.float32)
    return x.astype(np.float32)


def stacked(windows: list[np.ndarray]) -> np.ndarray:
    """Windows stacked row after row (a weight load reading several tiles); one window: itself."""
    return np.concatenate(windows) if len(windows) > 1 else windows[0]


def _lw(m: Machine, ins: Instruction, attrs: dict) -> None:
    weights = stacked([m.read(a) for a in ins.reads])
    m.planes[ins.unit.split(".")[0]].shadow = mxm_input(weights, attrs["precision"])


def _mm(m: Machine, ins: Instruction, attrs: dict) -> None:
    plane = m.planes[ins.unit]
    if attrs.get("install"):
        plane.active, plane.shadow = plane.shadow, None
    a = mxm_input(m.read(ins.reads[0]), attrs["precision"])
    product = a @ plane.active
    if attrs.get("from_acc"):
        product = product + plane.acc
    if attrs.get("acc"):
        product = product + m.read(ins.reads[1]).astype(product.dtype)
    if attrs.get("keep"):
        plane.acc = product
    elif "epilogue" in attrs:
        plane.acc = None
        write_rows(m, ins.writes, epilogue(attrs["epilogue"], product, [None, *map(m.read, ins.reads[1:])]))
    else:
        plane.acc = None
        write_rows(m, ins.writes, product)


def write_rows(m: Machine, writes, value: np.ndarray) -> None:
    """`value` written row after row into the windows `writes` (one window: all of it)."""
    row = 0
    for a in writes:
        m.write(a, value[row : row + a.nrows])
        row += a.nrows


def epilogue(desc: dict, product: np.ndarray, reads: list[np.ndarray | None]) -> np.ndarray:
    """A fused map (lpuc/lowering/epilogue.py) applied to an MM's result: the product cast to the
    dtype of the tile it used to be written to (the values the map read back before), operand k >= 1
    the MM's read k."""
    result = product.astype(dtype_from_name(desc["result"]), copy=False)
    operands = [None if k is None else result if k == 0 else reads[k] for k in desc["operands"]]
    return evaluate_expression(desc["expr"], operands)


def map_operand(reads: list, k: int | list[int] | None):
    """Operand of a map: read k, or the reads listed in k stacked row after row (stacked rows)."""
    if k is None:
        return None
    return stacked([reads[j] for j in k]) if isinstance(k, list) else reads[k]


def _map(m: Machine, ins: Instruction, attrs: dict) -> None:
    reads = [m.read(a) for a in ins.reads]
    operands = [map_operand(reads, k) for k in attrs["operands"]]
    m.write(ins.writes[0], evaluate_expression(attrs["expr"], operands))


def kernel_context(attrs: dict) -> KernelContext:
    """The context a kernel instruction's decoded attributes describe."""
    return KernelContext(
        attrs["kernel"],
        attrs["attrs"],
        attrs["opset"],
        len(attrs["outputs"]),
        attrs["domain"],
        attrs["opsets"],
    )


def _kernel(m: Machine, ins: Instruction, attrs: dict) -> None:
    inputs = []
    for desc in attrs["inputs"]:
        if desc is None:
            inputs.append(None)
            continue
        refs = ins.reads[desc["first"] : desc["first"] + desc["count"]]
        if desc.get("host"):
            inputs.append(m.host_memory[refs[0].buf])
            continue
        dtype = dtype_from_name(desc["dtype"])
        inputs.append(m.load_tensor(tuple(desc["shape"]), dtype, [r.buf for r in refs], desc["row_offset"]))
    ctx = kernel_context(attrs)
    try:
        with np.errstate(all="ignore"):
            results = run_kernel(ctx, inputs)
    except LpucError as e:  # bad data (e.g. an index out of range): name the node
        e.args = (f"node '{ins.node}' ({attrs['kernel']}): {e}",)
        raise
    for desc, value in zip(attrs["outputs"], results):
        if desc is None:
            continue
        refs = ins.writes[desc["first"] : desc["first"] + desc["count"]]
        if desc["shape"] is not None and tuple(value.shape) != tuple(desc["shape"]):
            raise RuntimeError(
                f"instruction {ins.id} ({attrs['kernel']} {ins.node}): kernel produced shape "
                f"{tuple(value.shape)}, the program expects {tuple(desc['shape'])}"
            )
        if desc.get("host"):
            m.host_memory[refs[0].buf] = value.astype(dtype_from_name(desc["dtype"]), copy=False)
        else:
            m.store_tensor(value, [r.buf for r in refs], desc["row_offset"])


HANDLERS: dict[str, Handler] = {
    "mxm.lw": _lw,
    "mxm.mm": _mm,
    "vxm.map": _map,
    "vxm.kernel": _kernel,
    "sxm.kernel": _kernel,
    "host.kernel": _kernel,
}


def decoded_attrs(ins: Instruction, cache: dict[int, dict]) -> dict:
    """Instruction attributes with arrays and subgraphs restored (decoded once per attrs object)."""
    key = id(ins.attrs)
    if key not in cache:
        cache[key] = from_json(dict(ins.attrs))
    return cache[key]
