"""PyTorch models the issue-3 tests build (small, fixed seeds): the shapes real models have."""

from __future__ import annotations

import math
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn


def transformer_encoder(norm_first: bool) -> nn.Module:
    layer = nn.TransformerEncoderLayer(
        d_model=64, nhead=4, dim_feedforward=128, dropout=0.0, batch_first=True, norm_first=norm_first
    )
    return nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)


class CausalSelfAttention(nn.Module):
    def __init__(self, width: int, heads: int, context: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.register_buffer("mask", torch.triu(torch.ones(context, context, dtype=torch.bool), diagonal=1))

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=-1)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(c // self.heads)
        scores = scores.masked_fill(self.mask[:t, :t], float("-inf"))
        y = torch.softmax(scores, dim=-1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, t, c))


class DecoderBlock(nn.Module):
    def __init__(self, width: int, heads: int, context: int, gelu: str):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, heads, context)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(approximate=gelu), nn.Linear(4 * width, width)
        )

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """Token and position embeddings, causal pre-norm blocks (one GELU erf, one GELU tanh), LM head."""

    def __init__(self, vocab: int = 96, width: int = 64, heads: int = 4, context: int = 32):
        super().__init__()
        self.tokens = nn.Embedding(vocab, width)
        self.positions = nn.Embedding(context, width)
        self.blocks = nn.Sequential(
            DecoderBlock(width, heads, context, "none"), DecoderBlock(width, heads, context, "tanh")
        )
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab, bias=False)

    def forward(self, ids):
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.tokens(ids) + self.positions(positions)
        return self.head(self.norm(self.blocks(x)))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + (x if self.down is None else self.down(x)))


class ResNetish(nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2)
        )
        self.layers = nn.Sequential(BasicBlock(16, 16, 1), BasicBlock(16, 32, 2), BasicBlock(32, 64, 2))
        self.fc = nn.Linear(64, classes)

    def forward(self, x):
        x = self.layers(self.stem(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class Recurrent(nn.Module):
    def __init__(self, kind: str):
        super().__init__()
        cell = {"lstm": nn.LSTM, "gru": nn.GRU}[kind]
        self.rnn = cell(16, 32, num_layers=2, batch_first=True, bidirectional=(kind == "gru"))
        self.head = nn.Linear(32 * (2 if kind == "gru" else 1), 8)

    def forward(self, x):
        y, _ = self.rnn(x)
        return self.head(y[:, -1])


class InvertedResidual(nn.Module):
    def __init__(self, c: int, expand: int, stride: int):
        super().__init__()
        hidden = c * expand
        self.block = nn.Sequential(
            nn.Conv2d(c, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.Hardswish(),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.Hardswish(),
            nn.Conv2d(hidden, c, 1, bias=False),
            nn.BatchNorm2d(c),
        )
        self.residual = stride == 1

    def forward(self, x):
        y = self.block(x)
        return x + y if self.residual else y


class MobileNetish(nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish())
        self.blocks = nn.Sequential(
            InvertedResidual(16, 4, 1), InvertedResidual(16, 4, 2), InvertedResidual(16, 6, 1)
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, classes))

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


def randomize_batchnorm(module: nn.Module, seed: int) -> nn.Module:
    """Non-trivial running statistics, so that folding BatchNorm is actually tested."""
    gen = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
    return module


class Bottleneck(nn.Module):
    """torchvision's ResNet v1.5 bottleneck: 1x1 reduce, 3x3 (carrying the stride), 1x1 expand x4."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return torch.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet50(nn.Module):
    """ResNet-50 v1.5 as torchvision builds it: [3, 4, 6, 3] bottlenecks, 1000 classes."""

    def __init__(self, classes: int = 1000):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)
        )
        layers, cin = [], 64
        for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            for i in range(blocks):
                layers.append(Bottleneck(cin, width, stride if i == 0 else 1))
                cin = width * Bottleneck.expansion
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        x = self.layers(self.stem(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class VGG19(nn.Module):
    """VGG-19 (configuration E, no batch norm) as torchvision builds it: 16 3x3 convs, 3 FC layers."""

    CONFIG = (
        64,
        64,
        "M",
        128,
        128,
        "M",
        256,
        256,
        256,
        256,
        "M",
        512,
        512,
        512,
        512,
        "M",
        512,
        512,
        512,
        512,
        "M",
    )

    def __init__(self, classes: int = 1000):
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for c in self.CONFIG:
            if c == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, c, 3, padding=1), nn.ReLU()]
                cin = c
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096),
            nn.ReLU(),
            nn.Linear(4096, 4096),
            nn.ReLU(),
            nn.Linear(4096, classes),
        )

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


def resnet50(seed: int = 0) -> nn.Module:
    """Seeded ResNet-50 v1.5 in eval mode with randomized BatchNorm statistics."""
    torch.manual_seed(seed)
    return randomize_batchnorm(ResNet50(), seed + 1).eval()


def vgg19(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return VGG19().eval()


class ONet(nn.Module):
    """MTCNN's output network (face / not face, box, landmarks on 48x48 crops), as facenet-pytorch
    defines it; `onet_real_weights` loads the trained weights that package ships."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1, self.dense6_2, self.dense6_3 = nn.Linear(256, 2), nn.Linear(256, 4), nn.Linear(256, 10)

    def forward(self, x):
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x)).permute(0, 3, 2, 1).contiguous()
        x = self.prelu5(self.dense5(x.view(x.shape[0], -1)))
        return torch.softmax(self.dense6_1(x), dim=1), self.dense6_2(x), self.dense6_3(x)


def onet_real_weights() -> nn.Module | None:
    """ONet with the trained weights facenet-pytorch ships in its wheel (data/onet.pt), or None when
    the package is not installed. The package itself is not imported (it needs torchvision)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("facenet_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    weights = Path(next(iter(spec.submodule_search_locations))) / "data" / "onet.pt"
    if not weights.is_file():
        return None
    net = ONet()
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return net.eval()


def onet_probe_inputs(net: nn.Module, count: int = 20, seed: int = 0, step: float = 0.004) -> np.ndarray:
    """`count` synthetic 48x48 crops spanning ONet's face / not-face decision (no images ship
    offline): seeded noise, crop i pushed towards `face` by i signed-gradient steps, so that the
    class probabilities range from near 0 to near 1 rather than all saying `not face`."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(count, 1, 3, 48, 48, generator=gen) * 0.5
    budget = torch.arange(count).reshape(-1, 1, 1, 1, 1)
    for t in range(count - 1):
        x.requires_grad_(True)
        loss = -torch.log(net(x.reshape(count, 3, 48, 48))[0][:, 1] + 1e-6).sum()
        (grad,) = torch.autograd.grad(loss, x)
        x = (x - step * grad.sign() * (budget > t)).detach()
    return x.numpy().astype(np.float32)


# BERT exports are cached here: BERT-base takes about a minute to build and export.
BERT_CACHE = Path(tempfile.gettempdir()) / "lpuc-bert"
BERT_OPSET = 17
BERT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def bert(seed: int = 0, **config_kwargs) -> nn.Module:
    """transformers' BertModel (BertConfig defaults = BERT-base unless overridden), seeded, eval mode."""
    import transformers

    config = transformers.BertConfig(**config_kwargs)
    config._attn_implementation = "eager"  # plain MatMul/Softmax, no fused SDPA in the export
    torch.manual_seed(seed)
    return transformers.BertModel(config).eval()


class _BertByPosition(nn.Module):
    """BertModel called with keywords (its forward's positional order changes between versions)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return out.last_hidden_state, out.pooler_output


def bert_onnx(seq_len: int = 128, batch: int = 1, seed: int = 0, **config_kwargs) -> Path:
    """`bert(...)` exported (TorchScript exporter, opset BERT_OPSET) with input_ids, attention_mask
    and token_type_ids of [batch, seq_len]; cached under BERT_CACHE by configuration."""
    tag = "-".join(f"{k}{v}" for k, v in sorted(config_kwargs.items())) or "base"
    path = BERT_CACHE / f"bert-{tag}-b{batch}-s{seq_len}-seed{seed}-op{BERT_OPSET}.onnx"
    if path.exists():
        return path
    model = bert(seed, **config_kwargs)
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(seed)
    args = (
        torch.randint(0, vocab, (batch, seq_len), generator=gen),
        torch.ones(batch, seq_len, dtype=torch.int64),
        torch.zeros(batch, seq_len, dtype=torch.int64),
    )
    BERT_CACHE.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _BertByPosition(model),
            args,
            str(tmp),
            input_names=list(BERT_INPUTS),
            output_names=["last_hidden_state", "pooler_output"],
            opset_version=BERT_OPSET,
            dynamo=False,
        )
    os.replace(tmp, path)  # concurrent test workers never see a half-written file
    return path
