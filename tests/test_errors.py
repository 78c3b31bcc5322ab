"""What a user sees when npuc cannot do something: one error type naming op, module and remedy."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import npuc
from npuc.errors import UnsupportedError


class Spectral(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 8)
        self.head = nn.Sequential(nn.ReLU(), FFTBlock())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.proj(x))


class FFTBlock(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.fft.rfft(x).abs()


def test_unsupported_op_names_op_module_and_remedy() -> None:
    with pytest.raises(UnsupportedError) as info:
        npuc.capture(Spectral(), (torch.randn(2, 8),))
    message = str(info.value)
    assert "fft" in info.value.op and "fft" in message
    assert info.value.loc == "head.1"
    assert "module: head.1" in message
    assert "what to do" in message


class DataDependent(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # control flow on a tensor's value: neither tracer can capture it
            return x * 2
        return x - 1


def test_untraceable_model_reports_both_tracers() -> None:
    with pytest.raises(UnsupportedError) as info:
        npuc.capture(DataDependent(), (torch.randn(3),))
    message = str(info.value)
    assert "torch.export" in message and "torch.fx" in message
    assert "control flow" in message


def test_training_mode_is_captured_in_eval_and_restored() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.BatchNorm1d(4)).train()
    x = torch.randn(3, 4)
    graph = npuc.capture(model, (x,))
    assert model.training
    with torch.no_grad():
        want = model.eval()(x).numpy()
    assert abs(npuc.interpret(graph, x)[0] - want).max() < 1e-5


def test_float64_is_refused_with_a_remedy() -> None:
    with pytest.raises(UnsupportedError, match="float32"):
        npuc.capture(nn.Linear(3, 3).double(), (torch.randn(2, 3, dtype=torch.float64),))


def test_compile_without_inputs_says_what_to_pass() -> None:
    with pytest.raises(TypeError, match="example_inputs=.*calibration="):
        npuc.compile(nn.Linear(3, 3), target="npu-int8")


def test_unknown_target_lists_known_ones() -> None:
    with pytest.raises(ValueError, match="npu-int8") as info:
        npuc.compile(nn.Linear(3, 3), (torch.randn(1, 3),), target="tpu-v9")
    assert "tpu-v9" in str(info.value)


def test_interpreter_checks_input_shapes() -> None:
    graph = npuc.capture(nn.Linear(3, 2), (torch.randn(1, 3),))
    with pytest.raises(TypeError, match="shape"):
        npuc.interpret(graph, torch.randn(1, 4))
    with pytest.raises(TypeError, match="takes 1 inputs"):
        npuc.interpret(graph)


class Noisy(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.randn(x.shape)


def test_random_ops_are_not_frozen_into_constants() -> None:
    with pytest.raises(UnsupportedError, match="random numbers") as info:
        npuc.capture(Noisy(), (torch.randn(2, 3),))
    assert "noise as an input" in str(info.value)


@pytest.mark.parametrize("model, x, message, hint", [
    # a float32 conv fed float64: this used to blame data-dependent control flow
    (nn.Conv2d(3, 4, 3), torch.randn(1, 3, 8, 8, dtype=torch.float64),
     "example input 0 is torch.float64, a dtype npuc does not support", r"x\.float\(\)"),
    (nn.Conv2d(3, 4, 3), torch.randn(1, 3, 8, 8, dtype=torch.float16),
     "parameters are torch.float32 but its float inputs are torch.float16", r"model\.float\(\)"),
    (nn.Conv2d(3, 4, 3).double(), torch.randn(1, 3, 8, 8),
     "parameters are torch.float64, a dtype npuc does not support", r"model\.float\(\)"),
])
def test_dtype_problems_are_named_as_such(model: nn.Module, x: torch.Tensor, message: str,
                                          hint: str) -> None:
    with pytest.raises(UnsupportedError, match=message) as info:
        npuc.capture(model, (x,))
    assert "control flow" not in str(info.value)
    assert info.value.hint is not None and re.search(hint, info.value.hint)


@pytest.mark.parametrize("model, what", [
    (lambda x: x * 2, "the callable <function"), ("resnet18", "not str"), (None, "not NoneType"),
    (torch.randn(2, 3), "not Tensor")])
def test_a_model_that_is_not_a_module_is_a_clear_type_error(model: object, what: str) -> None:
    for entry in (npuc.capture, npuc.compile):
        with pytest.raises(TypeError, match="torch.nn.Module or a torch.export.ExportedProgram "
                                            r"\(npuc.compile also takes an already captured npuc "
                                            "Graph\\)") as info:
            entry(model, (torch.randn(2, 3),))
        assert what in str(info.value)
