"""N:M-sparse weights and models for the tests of the nm encoding and the simulator's sparsity
modes, made with numpy here (independent of the pruning passes, which have their own tests)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def nm_prune(w: np.ndarray, n: int, m: int, axis: int = 1) -> np.ndarray:
    """`w` with all but the n largest |w| of every m consecutive weights along `axis` zeroed
    (the last, partial group of a length m does not divide keeps its n largest too)."""
    moved = np.moveaxis(np.asarray(w, np.float64), axis, -1)
    length = moved.shape[-1]
    groups = -(-length // m)
    padded = np.zeros(moved.shape[:-1] + (groups * m,))
    padded[..., :length] = moved
    runs = padded.reshape(moved.shape[:-1] + (groups, m))
    drop = np.argsort(-np.abs(runs), axis=-1, kind="stable")[..., n:]
    np.put_along_axis(runs, drop, 0.0, axis=-1)
    return np.moveaxis(runs.reshape(padded.shape)[..., :length], -1, axis)


class NMNet(nn.Module):
    """A conv (6 input channels: a partial last group of 4), a grouped conv, a transposed conv
    and two linears, every weight N:M along its input channels."""

    def __init__(self, n: int = 2, m: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(6, 8, 3, padding=1)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.up = nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.fc1 = nn.Linear(4 * 8 * 8, 40)
        self.fc2 = nn.Linear(40, 10)
        with torch.no_grad():
            for layer in (self.conv, self.grouped, self.fc1, self.fc2):
                layer.weight.copy_(torch.tensor(nm_prune(layer.weight.numpy(), n, m, 1)))
            self.up.weight.copy_(torch.tensor(nm_prune(self.up.weight.numpy(), n, m, 0)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.grouped(torch.relu(self.conv(x))))
        x = torch.relu(self.up(x))
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def nm_net(n: int = 2, m: int = 4, batch: int = 2) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return NMNet(n, m).eval(), torch.randn(batch, 6, 4, 4)
