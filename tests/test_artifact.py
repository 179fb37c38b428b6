"""The .lpu artifact: round trip, refusal of corrupt or truncated files, real execution of streams."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

import lpuc
from lpuc.backends.lpu import FORMAT_VERSION, decode_program, encode_program
from lpuc.cli import main
from lpuc.errors import ArtifactError
from tests.models import random_feeds
from tests.mutate import legally_changed


@pytest.fixture(scope="module")
def artifact(mlp_program, tmp_path_factory):
    path = tmp_path_factory.mktemp("lpu") / "mlp.lpu"
    mlp_program.save(path)
    return path


def test_round_trip_runs_identically(mlp_program, mlp_onnx, artifact):
    feeds = random_feeds(mlp_onnx)
    loaded = lpuc.load(artifact)
    assert loaded.summary == mlp_program.summary
    np.testing.assert_array_equal(loaded.run(feeds)["y"], mlp_program.run(feeds)["y"])


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda b: b[: len(b) // 2], "checksum mismatch"),
        (lambda b: b[:10], "truncated"),
        (lambda b: b"XXXX" + b[4:], "not a .lpu file"),
        (lambda b: b[:4] + (FORMAT_VERSION + 1).to_bytes(4, "little") + b[8:], "format version"),
        (lambda b: b[:-100] + bytes(x ^ 0xFF for x in b[-100:]), "checksum mismatch"),
    ],
    ids=["half", "truncated", "magic", "version", "flipped"],
)
def test_corrupt_artifact_is_one_line_error_exit_2(artifact, tmp_path, corrupt, message):
    bad = tmp_path / "bad.lpu"
    bad.write_bytes(corrupt(artifact.read_bytes()))
    result = CliRunner().invoke(main, ["run", str(bad)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith("error: ") and message in lines[-1], result.output
    assert "Traceback" not in result.output


def test_no_traceback_in_a_real_process(artifact, tmp_path):
    bad = tmp_path / "bad.lpu"
    bad.write_bytes(artifact.read_bytes()[:200])
    proc = subprocess.run(
        [sys.executable, "-m", "lpuc.cli", "report", str(bad)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ")


def _reencode(program, index, **changes) -> bytes:
    instructions = list(program.instructions)
    instructions[index] = dataclasses.replace(instructions[index], **changes)
    return encode_program(dataclasses.replace(program, instructions=instructions))


def test_changed_operand_address_is_refused(mlp_program):
    """An address outside the operand's tile: the validator refuses the (re-checksummed) file."""
    k, ins = next((k, i) for k, i in enumerate(mlp_program.instructions) if i.opcode == "mxm.lw")
    moved = dataclasses.replace(ins.reads[0], addr=ins.reads[0].addr + 1)
    with pytest.raises(ArtifactError, match="outside tile"):
        decode_program(_reencode(mlp_program, k, reads=(moved, *ins.reads[1:])))


def test_runtime_really_executes_the_streams(mlp_program, mlp_onnx):
    """Point the first layer's LW at the second layer's weights (a legal program): outputs change."""
    feeds = random_feeds(mlp_onnx)
    before = mlp_program.run(feeds)["y"]
    def rows(i):
        return sum(a.nrows for a in i.reads), i.reads[0].nlanes

    lws = [(k, i) for k, i in enumerate(mlp_program.instructions) if i.opcode == "mxm.lw"]
    k, first = next((k, i) for k, i in lws if rows(i) == (64, 128))  # W1: [64, 128]
    second = next(i for _, i in lws if rows(i) == (128, 128))  # W2: [128, 128]
    # W2's first 64 rows, in windows shaped like W1's (its tiles are spread over slices alike).
    swapped = tuple(dataclasses.replace(s, nrows=f.nrows) for f, s in zip(first.reads, second.reads))
    changed = legally_changed(mlp_program, k, reads=swapped)
    after = decode_program(encode_program(changed)).run(feeds)["y"]
    assert after.shape == before.shape
    assert not np.allclose(before, after)
