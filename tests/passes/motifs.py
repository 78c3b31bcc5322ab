"""Random graphs built around the pattern a pass looks for.

`chains(stages)` draws an input, then applies the stages in order, `repeat` times: each stage is a
list of family names from `tests.strategies.FAMILIES` (one is drawn; "skip" leaves the value as
it is). So `chains([["conv", "linear"], ["batch_norm"]])` gives layer -> BN chains that a random
DAG would produce only rarely. Returns (graph, inputs), like `graph_and_inputs`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from hypothesis import strategies as st

from npuc.ir import Graph, graph_input
from tests.strategies import FAMILIES, INPUT_BOUND, MAX_ELEMENTS, Value, tensor_types, weights


@st.composite
def chains(draw: st.DrawFn, stages: Sequence[Sequence[str]], *, layout: str | None = "nchw",
           repeat: int = 3) -> tuple[Graph, tuple[np.ndarray, ...]]:
    x = graph_input("x", draw(tensor_types(layout)))
    value = Value(x, INPUT_BOUND)
    outputs = []
    for i in range(draw(st.integers(1, repeat))):
        for j, stage in enumerate(stages):
            name = draw(st.sampled_from(list(stage)))
            family = FAMILIES.get(name)
            if family is None or not family.applies(value):
                continue
            built = draw(family.build(value, (value,), f"m{i}.s{j}"))
            if built is not None and 0 < built.size <= MAX_ELEMENTS:
                value = built
        if draw(st.integers(0, 3)) == 0 and value.node is not x:
            outputs.append(value.node)  # an intermediate output: a second reader for a guard
    outputs.append(value.node)
    graph = Graph((x,), tuple(dict.fromkeys(outputs)))
    return graph, (draw(weights(x.shape, INPUT_BOUND)),)
