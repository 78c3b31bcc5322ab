"""The contract every exact pass keeps, checked in one place for all of them.

`check_exact(name, graph, inputs)` runs the pass and asserts: the input graph is untouched, the
result verifies, the pass is idempotent (running it again prints the same graph), and the outputs
agree within 1e-5 relative error (norm-wise, with a small absolute floor for near-zero outputs).
"""

from __future__ import annotations

from typing import Any

import numpy as np

import npuc
from npuc import passes
from npuc.ir import Graph
from npuc.printer import print_graph

RTOL = 1e-5


def text(graph: Graph) -> str:
    # constants print as content digests: equal text means equal data
    return print_graph(graph, locs=False)


def assert_close(got: tuple, want: tuple, rtol: float = RTOL) -> None:
    for a, b in zip(got, want, strict=True):
        a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
        err = np.linalg.norm(a64 - b64)
        assert err <= rtol * np.linalg.norm(b64) + 1e-6 * np.sqrt(b64.size), (
            f"relative error {err / max(np.linalg.norm(b64), 1e-30):.2e} > {rtol:.0e}")


def check_exact(name: str, graph: Graph, inputs: tuple, **options: Any) -> Graph:
    """Run pass `name` and check its exact-pass contract; returns the result."""
    before = text(graph)
    ctx = passes.PassContext(calibration=[inputs])
    result = passes.apply(graph, name, ctx=ctx, **options).verify()
    assert text(graph) == before, f"{name} mutated its input"
    again = passes.apply(result, name, ctx=passes.PassContext(calibration=[inputs]), **options)
    assert text(again) == text(result), f"{name} is not idempotent"
    assert_close(npuc.interpret(result, *inputs), npuc.interpret(graph, *inputs))
    return result
