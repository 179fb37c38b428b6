"""`torch.compile(model, backend="lpuc")`: graphs compiled by lpuc, run in the reference runtime,
checked against eager torch."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.backends.registry import lookup_backend

from lpuc import torch_backend
from lpuc.errors import LpucError


class SmallCNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.conv2 = torch.nn.Conv2d(8, 8, 3, stride=2)
        self.fc = torch.nn.Linear(8, 5)

    def forward(self, image):
        x = torch.relu(self.bn(self.conv1(image)))
        x = torch.relu(self.conv2(x))
        return self.fc(x.mean(dim=(2, 3)))


def seeded(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial weights and batch-norm statistics, eval mode."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape) * 0.3)
        for b in module.buffers():
            if b.dtype.is_floating_point:
                b.copy_(torch.rand(b.shape) + 0.5)
    return module.eval()


def randn(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(autouse=True)
def fresh():
    torch._dynamo.reset()
    torch_backend.reset()
    yield
    torch._dynamo.reset()


def assert_close(got, expected) -> None:
    torch.testing.assert_close(got, expected.detach(), rtol=1e-4, atol=1e-5)


def test_backend_is_found_by_name():
    """Through the torch_dynamo_backends entry point in pyproject.toml (lpuc need not be imported)."""
    assert lookup_backend("lpuc") is torch_backend.lpuc_backend


def test_small_cnn_matches_eager():
    model = seeded(SmallCNN())
    compiled = torch.compile(model, backend="lpuc")
    image = randn(2, 3, 12, 12)
    with torch.no_grad():
        got = compiled(image)
        assert_close(got, model(image))
    (program,) = torch_backend.compiled_programs()
    assert program.precision == "fp32"
    assert program.summary["cycles"] > 0 and program.summary["instructions"] > 0
    assert [b.name for b in program.inputs] == ["input_0"]  # weights and BN statistics are constants


@pytest.mark.parametrize("norm_first", [False, True])
def test_transformer_encoder_layer_fast_path_matches_eager(norm_first):
    """Eval + no_grad: dynamo captures torch's fused encoder-layer kernel, which lpuc decomposes."""
    layer = nn_layer(norm_first)
    compiled = torch.compile(layer, backend="lpuc")
    x = randn(2, 8, 32)
    padding = torch.zeros(2, 8, dtype=torch.bool)
    padding[1, 5:] = True
    with torch.no_grad():
        assert_close(compiled(x), layer(x))
        assert_close(compiled(x, src_key_padding_mask=padding), layer(x, src_key_padding_mask=padding))


def test_transformer_encoder_layer_with_grad_enabled_matches_eager():
    """Outside no_grad dynamo captures the plain attention ops instead of the fused kernel."""
    layer = nn_layer(norm_first=False)
    x = randn(2, 8, 32)
    assert_close(torch.compile(layer, backend="lpuc")(x), layer(x))


def nn_layer(norm_first: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(
        32, 4, 64, dropout=0.0, batch_first=True, norm_first=norm_first, activation="gelu"
    )
    return layer.eval()


def test_new_shape_compiles_a_new_program():
    model = seeded(torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.Tanh()))
    compiled = torch.compile(model, backend="lpuc")
    with torch.no_grad():
        for batch in (2, 5, 5):
            x = randn(batch, 6, seed=batch)
            assert_close(compiled(x), model(x))
    assert [b.shape for p in torch_backend.compiled_programs() for b in p.inputs] == [(2, 6), (5, 6)]


def test_weights_changed_in_place_are_recompiled():
    model = seeded(torch.nn.Linear(6, 4))
    compiled = torch.compile(model, backend="lpuc")
    x = randn(3, 6)
    with torch.no_grad():
        compiled(x)
        model.weight.mul_(2)
        assert_close(compiled(x), model(x))


def test_options_reach_the_compiler():
    model = seeded(torch.nn.Linear(6, 4))
    compiled = torch.compile(model, backend="lpuc", options={"precision": "fp16", "target": "tsp-mini"})
    x = randn(3, 6)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=2e-2, atol=1e-2)
    (program,) = torch_backend.compiled_programs()
    assert (program.precision, program.summary["target"]) == ("fp16", "tsp-mini")


def test_unknown_option_is_an_error():
    with pytest.raises(LpucError, match="unknown lpuc backend option.* precison"):
        torch_backend.lpuc_backend(torch.fx.symbolic_trace(torch.nn.ReLU()), [], options={"precison": "fp32"})
    compiled = torch.compile(torch.nn.ReLU(), backend="lpuc", options={"precison": "fp32"})
    with pytest.raises(Exception, match="unknown lpuc backend option"):
        compiled(torch.ones(2))
