"""How close CNN schedules come to the chip: `python -m tests.benchmarks.cnn_bench [--precisions ...]`.

Issue 8 measures it as the geomean of bound_ratio (cycles / hardware lower bound, both from the cost
model) over the CNN bench models: ResNet-50 v1.5 (seeded, the int8 bench's export), the light zoo's
CNN architectures (with seeded random weights in place of the one value they ship: their numerics
are tested elsewhere, their schedules are what counts here), a MobileNet-style net (tests/zoo.py
MobileNetish at 224x224) and MTCNN's ONet with the trained weights facenet-pytorch ships. One line
per model and precision, then the geomean per precision. Exports are cached under /tmp.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

import lpuc
from lpuc.errors import LpucError
from lpuc.report import bound_by
from tests import zoo
from tests.benchmarks import int8_bench
from tests.benchmarks.light_zoo import LIGHT, cached, seeded_weights
from tests.models import export

LIGHT_CNNS = (
    "resnet50", "vgg19", "inception_v1", "inception_v2", "densenet121",
    "squeezenet", "shufflenet", "bvlc_alexnet", "zfnet512",
)  # fmt: skip


def _mobilenet() -> Path:
    model = zoo.randomize_batchnorm(zoo.MobileNetish(), seed=6)
    x = torch.randn(1, 3, 224, 224)
    return cached("lpuc_bench_mobilenetish.onnx", lambda p: export(model, (x,), p, seed=0))


def _onet() -> Path | None:
    net = zoo.onet_real_weights()
    if net is None:
        return None

    def build(path: Path) -> Path:  # tests.models.export would re-seed the weights: export as is
        torch.onnx.export(net, (torch.zeros(1, 3, 48, 48),), str(path), opset_version=17, dynamo=False)
        return path

    return cached("lpuc_bench_onet.onnx", build)


def models() -> dict[str, Path]:
    found = {"resnet50_v15": int8_bench.exported("resnet50")}
    found |= {f"light_{name}": seeded_weights(LIGHT / f"light_{name}.onnx") for name in LIGHT_CNNS}
    found["mobilenetish"] = _mobilenet()
    onet = _onet()
    if onet is None:
        print("onet: skipped (facenet-pytorch, which ships its trained weights, is not installed)")
    else:
        found["onet_real_weights"] = onet
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precisions", nargs="*", default=["int8", "fp16"])
    parser.add_argument("--target", default="tsp-v1")
    args = parser.parse_args()
    header = f"{'model':<22}{'prec':<6}{'compile s':>10}{'cycles':>11}{'us':>9}{'bound':>9}{'(by)':>7}"
    print(f"{header}{'ratio':>8}")
    ratios: dict[str, list[float]] = {p: [] for p in args.precisions}
    for name, path in models().items():
        for precision in args.precisions:
            start = time.perf_counter()
            try:
                s = lpuc.compile(path, precision=precision, target=args.target).summary
            except LpucError as e:
                print(f"{name:<22}{precision:<6} does not compile: {e}")
                continue
            bounds = s["lower_bound_cycles"]
            by = bound_by(s)
            ratios[precision].append(s["bound_ratio"])
            print(
                f"{name:<22}{precision:<6}{time.perf_counter() - start:>10.1f}{s['cycles']:>11,}"
                f"{s['latency_us']:>9.1f}{bounds['overall']:>9,}{by[:5]:>7}{s['bound_ratio']:>8.2f}",
                flush=True,
            )
    for precision, values in ratios.items():
        if values:
            print(
                f"{precision}: geomean bound_ratio {statistics.geometric_mean(values):.2f} over "
                f"{len(values)} CNNs (issue 8's mark: <= 2.0)"
            )


if __name__ == "__main__":
    main()
