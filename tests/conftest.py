from __future__ import annotations

import pytest
import torch

from tests.models import MLP, ResidualBlock, export
from tests.plan_oracle import assert_identical


@pytest.fixture(scope="session", autouse=True)
def plan_matches_interpreter():
    """Every program any test runs through the execution plan (Program.run, the CLI in process) is
    run once more by the plain interpreter on the inputs of its first plan run: the outputs must be
    bit-identical. Only the first run per Program object, so the suite pays one interpreter run per
    program; runs that raise are not compared (test_runtime_plan checks that both refuse alike)."""
    import lpuc.runtime

    execute = lpuc.runtime.execute

    def checked(program, inputs, trace=None, interpret=False):
        outputs = execute(program, inputs, trace=trace, interpret=interpret)
        if not interpret and not getattr(program, "_plan_checked", False):
            program._plan_checked = True
            try:
                expected = execute(program, inputs, interpret=True)
            except Exception as e:
                raise AssertionError(f"the interpreter fails where the execution plan ran: {e}") from e
            assert_identical(expected, outputs, f"program {program.model_name!r} ({program.precision})")
        return outputs

    lpuc.runtime.execute = checked
    yield
    lpuc.runtime.execute = execute


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def mlp_onnx(models_dir):
    return export(
        MLP(), (torch.zeros(8, 64),), models_dir / "mlp.onnx", input_names=["x"], output_names=["y"]
    )


@pytest.fixture(scope="session")
def residual_onnx(models_dir):
    return export(
        ResidualBlock(),
        (torch.zeros(2, 64, 256),),
        models_dir / "residual.onnx",
        input_names=["x"],
        output_names=["y"],
    )


@pytest.fixture(scope="session")
def small_residual_onnx(models_dir):
    """96 features: one full and one partial 64-lane block on tsp-mini."""
    return export(
        ResidualBlock(96),
        (torch.zeros(2, 40, 96),),
        models_dir / "residual96.onnx",
        input_names=["x"],
        output_names=["y"],
    )


@pytest.fixture(scope="session")
def mlp_program(mlp_onnx):
    import lpuc

    return lpuc.compile(mlp_onnx, precision="fp32")
