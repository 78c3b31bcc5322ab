"""Small models with state for the executors' tests: a softmax map cached across calls, and
an attention block conditioned on a diffusion timestep (for reuse_attention)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from npuc.ir import DType, Graph, StateSlot, TensorType, const, graph_input, state_read
from npuc.ops import make

SCHEDULE = (1, 0, 0, 1, 0, 0)
CALLS = 6  # of a sampling loop in the reuse_attention tests


def cached_softmax(schedule: tuple[int, ...] = SCHEDULE, seed: int = 0, size: int = 8
                   ) -> tuple[Graph, list[tuple[np.ndarray, np.int32]]]:
    """softmax(conv1x1(x)) reused by `schedule` and multiplied by x; the calls of one sequence
    (fresh inputs at steps 0 .. len(schedule) + 1)."""
    rng = np.random.default_rng(seed)
    t = TensorType((1, 4, size, size), DType.F32)
    x, step = graph_input("x", t), graph_input("step", TensorType((), DType.I32))
    w = const(rng.normal(size=(4, 4, 1, 1)).astype(np.float32), loc="proj")
    conv = make("conv", [x, w], {"stride": (1, 1), "padding": (0,) * 4, "dilation": (1, 1),
                                 "groups": 1}, loc="proj")
    probs = make("softmax", [conv], {"axis": -1}, loc="attn")
    read = state_read("attn.map", probs.type, loc="attn")
    kept = make("reuse", [probs, read, step], {"recompute": schedule}, loc="attn")
    graph = Graph((x, step), (make("mul", [kept, x], loc="out"),), "cached", {},
                  (StateSlot(read, kept),))
    calls = [(rng.normal(size=t.shape).astype(np.float32), np.int32(s))
             for s in range(len(schedule) + 2)]
    return graph.verify(), calls


class Attention(nn.Module):
    """Self-attention over tokens conditioned on an integer timestep; hand-written or sdpa."""

    def __init__(self, dim: int = 16, heads: int = 2, sdpa: bool = False, steps: int = 50,
                 project: bool = True) -> None:
        super().__init__()
        self.heads, self.sdpa, self.project = heads, sdpa, project
        self.time = nn.Embedding(steps, dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        h = x + self.time(t)[:, None, :]
        q, k, v = self.qkv(h).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if self.sdpa:
            a = nn.functional.scaled_dot_product_attention(q, k, v)
        else:
            a = torch.softmax(q @ k.transpose(-1, -2) / (d // self.heads) ** 0.5, dim=-1) @ v
        a = a.transpose(1, 2).reshape(b, n, d)
        return self.out(a) if self.project else a


def loop_inputs(seed: int = 0, calls: int = CALLS, n: int = 8) -> list[tuple]:
    rng = np.random.default_rng(seed)
    timesteps = np.linspace(40, 0, calls).astype(np.int64)
    return [(rng.normal(size=(1, n, 16)).astype(np.float32), np.array([t])) for t in timesteps]
