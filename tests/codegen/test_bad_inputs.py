"""Bad input is loud in the interpreter and in the C alike: token ids outside the table and
integer inputs that are not whole numbers are errors; NaN/Inf in a float input is a warning (the
outputs are still what `cm.run` computes); the harness refuses input files of the wrong size and
fails when it cannot write its outputs."""

from __future__ import annotations

import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import npuc
from npuc.interpreter import InterpreterError
from tests import models
from tests.codegen.harness import build, run


@pytest.fixture(scope="module")
def embedding(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """all of it built once: the embedding model (50 ids), its ids, and the built ./model"""
    torch.manual_seed(0)
    model, (ids,) = models.embedding_mlp()
    cm = npuc.compile(model, (ids,))
    return cm, ids.numpy(), build(cm.emit_c(tmp_path_factory.mktemp("embedding")))


def _model(exe: Path, data: np.ndarray, out: str = "out.bin") -> subprocess.CompletedProcess:
    (exe.parent / "in.bin").write_bytes(np.asarray(data, dtype="<f4").tobytes())
    return subprocess.run([str(exe), str(exe.parent / "in.bin"), out], capture_output=True,
                          text=True, cwd=exe.parent)


@pytest.mark.parametrize("bad", [-1, 50, 1 << 20])
def test_token_ids_out_of_range_are_errors_in_both(embedding: tuple, bad: int) -> None:
    cm, ids, exe = embedding
    wrong = ids.copy()
    wrong.flat[3] = bad
    with pytest.raises(InterpreterError, match=rf"gather at .*index {bad} is outside \[0, 50\)"):
        cm.run(wrong)
    result = _model(exe, wrong)
    assert result.returncode == 1
    assert "outside its table" in result.stderr


@pytest.mark.parametrize("bad", [2.5, float("nan"), float("inf"), 3e9])
def test_integer_inputs_that_are_not_whole_numbers_are_errors(embedding: tuple,
                                                             bad: float) -> None:
    cm, ids, exe = embedding
    wrong = ids.astype(np.float32)
    wrong.flat[0] = bad
    with pytest.raises(TypeError, match="dtype float32, expected int64"):
        cm.run(wrong)
    result = _model(exe, wrong)
    assert result.returncode == 1
    assert "not a whole number" in result.stderr


def test_valid_ids_still_run(embedding: tuple) -> None:
    cm, ids, exe = embedding
    got = run(exe, [ids], [cm.run(ids).size])[0]
    assert np.array_equal(got.view(np.int32), np.asarray(cm.run(ids)).ravel().view(np.int32))


def test_non_finite_float_inputs_warn_in_both(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, (x,) = models.mlp()
    cm = npuc.compile(model, (x,))
    x = x.numpy().copy()
    x.flat[:3] = [np.nan, np.inf, -np.inf]
    with pytest.warns(RuntimeWarning, match="NaN"):
        expected = cm.run(x)
    exe = build(cm.emit_c(tmp_path))
    result = _model(exe, x)
    assert result.returncode == 0
    assert "warning: an input holds NaN or Inf" in result.stderr
    got = np.fromfile(tmp_path / "out.bin", dtype="<f4")
    assert np.array_equal(got.view(np.int32), np.asarray(expected).ravel().view(np.int32))


def test_harness_refuses_wrong_sizes_and_unwritable_outputs(embedding: tuple) -> None:
    _, ids, exe = embedding
    for data in (ids.ravel()[:-1], np.append(ids.ravel(), 0), ids.ravel()[:0]):
        result = _model(exe, data)
        assert result.returncode == 1
        assert f"whole number of calls' inputs, {ids.size} float32 values" in result.stderr
    full = _model(exe, ids, out="/dev/full")  # every write fails with ENOSPC
    assert full.returncode == 1
    assert "cannot write the outputs" in full.stderr
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _model(exe, ids).returncode == 0
