"""lpuc: an ahead-of-time compiler and reference runtime for LPU-class tensor-streaming chips.

import lpuc
program = lpuc.compile("model.onnx", target="tsp-v1", precision="fp16")
program.save("model.lpu")
outputs = lpuc.load("model.lpu").run({"x": x})
print(program.summary["cycles"], program.summary["latency_us"])
"""

__version__ = "0.1.0"

from lpuc import errors  # noqa: E402
from lpuc.api import compile, load  # noqa: E402
from lpuc.program import Program  # noqa: E402

__all__ = ["Program", "__version__", "compile", "errors", "load"]
