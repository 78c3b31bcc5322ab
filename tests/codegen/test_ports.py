"""Models with several inputs and outputs: the C writes every input before any layer runs and
reads every output after the last, so its memory plan must follow that order. Outputs that are
the same value, a view of another or of an input, inputs read late or in another order, integer
inputs beside float ones: each bit-exact against `cm.run`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import npuc
from tests.codegen.harness import assert_bit_exact


class TwoMeans(nn.Module):
    """The issue's case: the second input's quantized slot was reused before it was read."""

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.mean(1, keepdim=True), y.mean(1, keepdim=True)


class Shared(nn.Module):
    """The same output twice, an output that is a view of another, inputs read in reverse."""

    def forward(self, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> tuple:
        a = torch.relu(z * 2.0)
        b = y.sum(1, keepdim=True) + x[:, :1]
        return b, a, a, a.reshape(-1), b + 1.0


class Tokens(nn.Module):
    """An integer input (token ids) beside a float one."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(11, 6)

    def forward(self, ids: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e = self.embed(ids)
        return e.mean(1), torch.tanh(x) + e.sum(1)


CASES = {
    "two_means": (TwoMeans, lambda: (torch.randn(2, 8), torch.randn(2, 3))),
    "shared": (Shared, lambda: (torch.randn(3, 4), torch.randn(3, 5), torch.randn(2, 7))),
    "tokens": (Tokens, lambda: (torch.randint(0, 11, (2, 5)), torch.randn(2, 6))),
}


@pytest.mark.parametrize("target", ["npu-int8", "dsp-int16"])
@pytest.mark.parametrize("name", list(CASES))
def test_multi_port_bit_exact(name: str, target: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    factory, make = CASES[name]
    inputs = make()
    cm = npuc.compile(factory().eval(), inputs, target=target)
    assert_bit_exact(cm, [x.numpy() for x in inputs], tmp_path)


class Random(nn.Module):
    """Outputs drawn from reductions and elementwise maps of several inputs of different sizes,
    so that the plan reuses slots across inputs and outputs in many ways."""

    def __init__(self, picks: list[tuple[int, int]]) -> None:
        super().__init__()
        self.picks = picks

    def forward(self, *xs: torch.Tensor) -> tuple:
        maps = (lambda v: v.mean(1, keepdim=True), torch.relu, lambda v: v * 0.5 + 1.0,
                lambda v: v.amax(1))
        return tuple(maps[kind](xs[i]) for i, kind in self.picks)


@settings(max_examples=6, deadline=None)
@given(st.lists(st.integers(1, 9), min_size=2, max_size=4),
       st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), min_size=1, max_size=5))
def test_random_ports_bit_exact(widths: list[int], picks: list[tuple[int, int]]) -> None:
    import tempfile

    picks = [(i % len(widths), kind) for i, kind in picks]
    torch.manual_seed(0)
    inputs = tuple(torch.randn(2, w) for w in widths)
    used = sorted({i for i, _ in picks})
    model = Random([(used.index(i), kind) for i, kind in picks]).eval()
    args = tuple(inputs[i] for i in used)
    cm = npuc.compile(model, args, target="npu-int8")
    with tempfile.TemporaryDirectory() as folder:
        assert_bit_exact(cm, [x.numpy() * 1.5 for x in args], Path(folder))
