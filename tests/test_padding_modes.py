"""Reflect and replicate padding (nn.ReflectionPad*, nn.ReplicationPad*, F.pad modes and
Conv padding_mode) capture as gathers with constant indices: they match PyTorch exactly in
float, quantize, and the generated C computes the interpreter's bits. Circular padding does not
capture yet and says so."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import npuc
from npuc.errors import UnsupportedError
from npuc.printer import print_graph
from tests.codegen.harness import assert_bit_exact
from tests.conftest import rel_error


class Padded2d(nn.Module):
    """Every 2-d form: conv padding modes, the pad modules (asymmetric), F.pad's modes."""

    def __init__(self) -> None:
        super().__init__()
        self.reflect = nn.Conv2d(3, 8, 3, padding=1, padding_mode="reflect")
        self.pad = nn.ReplicationPad2d((1, 2, 0, 1))
        self.replicate = nn.Conv2d(8, 8, 3, padding=(2, 1), padding_mode="replicate")
        self.mirror = nn.ReflectionPad2d((2, 0, 1, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.reflect(x))
        h = self.mirror(self.replicate(self.pad(h)))
        return F.pad(F.pad(h, (1, 1, 0, 2), mode="reflect"), (0, 1, 1, 0), mode="replicate")


class Padded1d(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(4, 6, 5, padding=2, padding_mode="replicate")
        self.pad = nn.ReflectionPad1d((3, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(self.pad(self.conv(x)), (2, 0), mode="replicate")


def _case(name: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    if name == "2d":
        return Padded2d().eval(), torch.randn(2, 3, 9, 7)
    if name == "1d":
        return Padded1d().eval(), torch.randn(2, 4, 11)
    return nn.ReplicationPad3d((1, 0, 2, 1, 0, 1)).eval(), torch.randn(1, 2, 3, 4, 5)


@pytest.mark.parametrize("name", ["2d", "1d", "3d"])
def test_capture_matches_pytorch(name: str) -> None:
    model, x = _case(name)
    graph = npuc.capture(model, (x,)).verify()
    with torch.no_grad():
        want = model(x).numpy()
    (got,) = npuc.interpret(graph, x)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert "gather" in {n.op for n in graph.nodes}  # the padding really is in the graph
    reread = npuc.ir.parse(print_graph(graph, constants=True))
    np.testing.assert_array_equal(npuc.interpret(reread, x)[0], got)


@pytest.mark.parametrize("name", ["2d", "1d"])
def test_quantized_matches_pytorch(name: str) -> None:
    model, x = _case(name)
    cm = npuc.compile(model, (x,), target="npu-int8")
    with torch.no_grad():
        want = model(x).numpy()
    assert rel_error(cm.run(x), want) <= 0.05
    assert "gather" in cm.summary().ops


def test_generated_c_is_bit_exact(tmp_path: Path) -> None:
    model, x = _case("2d")
    cm = npuc.compile(model, (x,), target="npu-int8")
    assert_bit_exact(cm, [x.numpy()], tmp_path / "padded")


def test_circular_padding_is_refused_by_name() -> None:
    with pytest.raises(UnsupportedError, match="no npuc lowering for aten.copy") as info:
        npuc.capture(nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular"),
                     (torch.randn(1, 3, 6, 6),))
    assert "what to do" in str(info.value)
