"""A small graph with state for the executors' tests: a softmax map cached across calls."""

from __future__ import annotations

import numpy as np

from npuc.ir import DType, Graph, StateSlot, TensorType, const, graph_input, state_read
from npuc.ops import make

SCHEDULE = (1, 0, 0, 1, 0, 0)


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
