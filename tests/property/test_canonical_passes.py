"""Contracts of the canonical passes on random graphs.

Each pass: the result verifies, computes bit-identical outputs, is a fixed point of the pass
(idempotence), and the input graph is left untouched. Together they undo redundancy: a random
graph with injected clones, no-op chains, constant-zero additions and concat/slice round trips
cleans up to exactly what the clean graph cleans up to.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import npuc
from npuc import passes
from npuc.ir import Graph, Node, const
from npuc.ops import make
from npuc.printer import print_graph
from npuc.rewrite import rewrite
from tests.strategies import graph_and_inputs, graphs

CANONICAL = passes.CANONICAL


def text(graph: Graph) -> str:
    return print_graph(graph, constants=True, locs=False)


def cleaned(graph: Graph) -> Graph:
    """The canonical pipeline run to its fixed point."""
    for _ in range(8):
        result, _ = passes.run_pipeline(graph, CANONICAL, verify=True)
        if text(result) == text(graph):
            return result
        graph = result
    raise AssertionError("the canonical pipeline does not reach a fixed point")


@given(st.sampled_from(CANONICAL), graph_and_inputs())
def test_pass_is_exact_idempotent_and_pure(name: str, case: tuple) -> None:
    graph, inputs = case
    before = text(graph)
    once = passes.apply(graph, name).verify()
    assert text(graph) == before
    twice = passes.apply(once, name)
    assert text(twice) == text(once)
    for got, want in zip(npuc.interpret(once, *inputs), npuc.interpret(graph, *inputs),
                         strict=True):
        np.testing.assert_array_equal(got, want)


def _inject(node: Node, how: str) -> Node:
    """`node`'s value, recomputed through redundant ops that the canonical passes remove."""
    loc = node.loc
    if how == "clone":  # cse merges the copy, then max(x, x) is a no-op
        copy = Node(node.op, node.inputs, node.attrs, node.type, node.loc)
        return make("maximum", [node, copy], loc=loc) if node.dtype.is_float else node
    if how == "reshape":
        flat = make("reshape", [node], {"shape": [node.type.size]}, loc)
        return make("reshape", [flat], {"shape": list(node.shape)}, loc)
    if how == "permute" and len(node.shape) >= 2:
        perm = list(range(len(node.shape)))[::-1]
        return make("permute", [make("permute", [node], {"perm": perm}, loc)],
                    {"perm": perm}, loc)
    if how == "zero" and node.dtype.is_float:  # 2.5 - 2.5 folds to a constant 0, then x + 0
        c = const(np.array(2.5, node.dtype.numpy), node.dtype, loc)
        return make("add", [node, make("sub", [c, c], loc=loc)], loc=loc)
    if how == "concat" and len(node.shape) >= 1:
        both = make("concat", [node, make("neg", [node], loc=loc)] if node.dtype.is_float
                    else [node, node], {"axis": 0}, loc)
        return make("slice", [both], {"axis": 0, "start": 0, "end": node.shape[0]}, loc)
    return node


@given(graphs(), st.data())
def test_redundancy_is_removed_exactly(graph: Graph, data: st.DataObject) -> None:
    hows = ["clone", "reshape", "permute", "zero", "concat", "none"]

    def inject(node: Node) -> Node | None:
        if node.op in ("input", "const"):
            return None
        return _inject(node, data.draw(st.sampled_from(hows)))

    noisy = rewrite(graph, inject).verify()
    assert text(cleaned(noisy)) == text(cleaned(graph))
