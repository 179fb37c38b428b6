"""`torch.compile(model, backend="lpuc")`: run torch graphs through lpuc and its reference runtime.

torch finds the backend by name through the `torch_dynamo_backends` entry point in pyproject.toml
(torch's lookup loads it on first use; lpuc need not be imported). Each graph dynamo captures is
compiled when it is first called with a given set of input shapes: parameters and buffers are baked
in as constants (ONNX initializers, as in `lpuc.compile(module)`), the graph is exported to ONNX with
the call's tensors as example inputs, compiled, and executed by `Program.run`; the outputs come back
as torch tensors. A new shape, or a parameter changed in place, compiles a new program.

Options: `torch.compile(model, backend="lpuc", options={"precision": "fp16", "target": "tsp-mini"})`;
keys precision (default "fp32": exact, so results match eager torch), target, exporter,
host_fallback. `compiled_programs()` returns every Program compiled so far, for their schedule
summaries; `reset()` forgets them. Inference only: outputs carry no autograd history.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

from lpuc.errors import LpucError
from lpuc.program import Program
from lpuc.target import DEFAULT_TARGET, PRECISIONS

DEFAULT_OPTIONS: Mapping[str, Any] = {
    "precision": "fp32",
    "target": DEFAULT_TARGET,
    "exporter": "torchscript",
    "host_fallback": True,
}

_programs: list[Program] = []


def lpuc_backend(
    gm: torch.fx.GraphModule,
    example_inputs: list[Any],
    *,
    options: Mapping[str, Any] | None = None,
    mode: str | None = None,
) -> Callable[..., Any]:
    """A torch dynamo backend: returns a callable that runs `gm` compiled by lpuc."""
    if mode not in (None, "default"):
        raise LpucError(f"the lpuc backend has no mode {mode!r}; pass settings as options={{...}}")
    settings = dict(DEFAULT_OPTIONS)
    unknown = sorted(set(options or {}) - set(settings))
    if unknown:
        raise LpucError(f"unknown lpuc backend option(s) {', '.join(unknown)} (known: {', '.join(settings)})")
    settings.update(options or {})
    if settings["precision"] not in PRECISIONS:
        raise LpucError(f"unknown precision {settings['precision']!r} (choose {', '.join(PRECISIONS)})")
    _decompose_fused_ops(gm)
    return _CompiledGraph(gm, _constant_positions(gm, example_inputs), settings)


def compiled_programs() -> list[Program]:
    """Every Program the backend compiled since import or `reset()`, in compile order."""
    return list(_programs)


def reset() -> None:
    """Forget the programs `compiled_programs()` returns (compiled graphs keep theirs)."""
    _programs.clear()


def _decompose_fused_ops(gm: torch.fx.GraphModule) -> None:
    """Replace fused kernels dynamo captures from torch's inference fast paths (no ONNX export in
    either exporter) with the plain ops they compute."""
    changed = False
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target is torch._transformer_encoder_layer_fwd:
            node.target = _transformer_encoder_layer
            changed = True
    if changed:
        gm.recompile()


def _transformer_encoder_layer(
    src, embed_dim, num_heads, qkv_weight, qkv_bias, proj_weight, proj_bias, use_gelu, norm_first, eps,
    norm_weight_1, norm_bias_1, norm_weight_2, norm_bias_2, ffn_weight_1, ffn_bias_1, ffn_weight_2,
    ffn_bias_2, mask=None, mask_type=None,
):  # fmt: skip
    """torch._transformer_encoder_layer_fwd (nn.TransformerEncoderLayer's eval fast path,
    batch-first) in plain ops, after ATen's transformer_encoder_layer_forward."""
    import torch.nn.functional as F

    def norm(x, weight, bias):
        return F.layer_norm(x, (embed_dim,), weight, bias, eps)

    x = norm(src, norm_weight_1, norm_bias_1) if norm_first else src
    x = _attention(x, num_heads, qkv_weight, qkv_bias, proj_weight, proj_bias, mask, mask_type) + src
    if not norm_first:
        x = norm(x, norm_weight_1, norm_bias_1)
    residual = x
    if norm_first:
        x = norm(x, norm_weight_2, norm_bias_2)
    hidden = F.linear(x, ffn_weight_1, ffn_bias_1)
    hidden = F.gelu(hidden) if use_gelu else F.relu(hidden)
    x = F.linear(hidden, ffn_weight_2, ffn_bias_2) + residual
    return norm(x, norm_weight_2, norm_bias_2) if not norm_first else x


def _attention(x, num_heads, qkv_weight, qkv_bias, proj_weight, proj_bias, mask, mask_type):
    """Self-attention as ATen's native multi-head attention computes it: a non-zero mask entry
    masks a score out (mask_type 0: [L, L], 1: key padding [B, L], else broadcast to
    [B, H, L, L]) and fully masked rows give zeros."""
    batch, length, embed = x.shape
    head = embed // num_heads
    q, k, v = torch.nn.functional.linear(x, qkv_weight, qkv_bias).chunk(3, dim=-1)
    q, k, v = (t.reshape(batch, length, num_heads, head).transpose(1, 2) for t in (q, k, v))
    scores = (q / head**0.5) @ k.transpose(-2, -1)
    if mask is not None:
        masked = mask.to(torch.bool)
        if mask_type == 0:
            masked = masked.view(1, 1, length, length)
        elif mask_type == 1:
            masked = masked.view(batch, 1, 1, length)
        scores = scores.masked_fill(masked, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    if mask is not None:
        weights = weights.masked_fill(masked, 0.0)
    out = (weights @ v).transpose(1, 2).reshape(batch, length, embed)
    return torch.nn.functional.linear(out, proj_weight, proj_bias)


def _constant_positions(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> frozenset[int]:
    """Graph arguments that are module state: parameters and buffers (dynamo passes them as inputs)."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    constant = set()
    for i, (node, value) in enumerate(zip(placeholders, example_inputs)):
        source = getattr(node.meta.get("grapharg"), "source", None)
        name = source.name() if callable(getattr(source, "name", None)) else getattr(source, "name", "")
        if isinstance(value, torch.nn.Parameter) or "._buffers[" in str(name):
            constant.add(i)
    return frozenset(constant)


class DynamoGraph(torch.nn.Module):  # the name export errors show: "cannot export DynamoGraph ..."
    """`gm` with its constant arguments (tensors as buffers, ints as values) filled in: only the
    activations remain inputs, and the constants become ONNX initializers."""

    def __init__(self, gm: torch.fx.GraphModule, args: tuple, runtime: list[int]):
        super().__init__()
        self.gm = gm
        self.runtime = runtime
        self.fixed: dict[int, Any] = {}
        for i, value in enumerate(args):
            if i in runtime:
                continue
            if isinstance(value, torch.Tensor):
                self.register_buffer(f"const_{i}", value.detach())
            else:
                self.fixed[i] = value
        self.arity = len(args)

    def forward(self, *activations):
        given = dict(zip(self.runtime, activations))
        args = [
            given[i] if i in given else self.fixed[i] if i in self.fixed else getattr(self, f"const_{i}")
            for i in range(self.arity)
        ]
        return self.gm(*args)


class _CompiledGraph:
    """What the backend returns: compiles `gm` per input signature, runs it in the reference runtime."""

    def __init__(self, gm: torch.fx.GraphModule, constants: frozenset[int], settings: dict[str, Any]):
        self.gm = gm
        self.constants = constants
        self.settings = settings
        self.cache: dict[tuple, tuple[Program | None, list[int], Any, list[Any]]] = {}

    def __call__(self, *args: Any) -> Any:
        key = tuple(self._key(i, a) for i, a in enumerate(args))
        entry = self.cache.get(key)
        if entry is None:
            entry = self.cache[key] = self._compile(args)
        program, runtime, spec, leaves = entry
        if program is None:
            return self.gm(*args)
        names = {b.name for b in program.inputs}  # an exporter may drop an input the graph ignores
        feeds = {f"input_{k}": args[i].detach().cpu().numpy() for k, i in enumerate(runtime)}
        outputs = iter(program.run({k: v for k, v in feeds.items() if k in names}).values())
        values = [torch.from_numpy(next(outputs).copy()) if leaf is None else leaf for leaf in leaves]
        return tree_unflatten(values, spec)

    def _key(self, i: int, value: Any) -> tuple:
        if not isinstance(value, torch.Tensor):
            return ("value", value)
        if i in self.constants:  # the same tensor, unchanged since compiled
            return ("const", id(value), value._version)
        return ("tensor", tuple(value.shape), value.dtype)

    def _compile(self, args: tuple) -> tuple[Program | None, list[int], Any, list[Any]]:
        import lpuc

        runtime = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and i not in self.constants]
        bound = DynamoGraph(self.gm, args, runtime)
        with torch.no_grad():
            result = bound(*(args[i] for i in runtime))
        flat, spec = tree_flatten(result)
        # Tensor outputs come from the program; anything else (None, ints) is what the graph returned.
        leaves = [None if isinstance(v, torch.Tensor) else v for v in flat]
        if not runtime or all(leaf is not None for leaf in leaves):
            return None, runtime, spec, leaves  # nothing to run on the chip: torch runs the graph
        program = lpuc.compile(
            bound,
            target=self.settings["target"],
            precision=self.settings["precision"],
            example_inputs=tuple(args[i].detach() for i in runtime),
            exporter=self.settings["exporter"],
            host_fallback=self.settings["host_fallback"],
        )
        _programs.append(program)
        return program, runtime, spec, leaves
