"""The channel-dependency analysis (passes/channels.py): which channels are tied, what is pinned
and why, and that removing units rewrites a graph that verifies and computes what the unpruned
graph computes with those channels zeroed at every consumer's input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import npuc
from npuc.ir import Graph, Node, TensorType, const, graph_input
from npuc.ops import make
from npuc.passes.channels import ChannelGroup, Channels, Unit, reshaped_axis
from npuc.rewrite import rewrite
from tests.passes.contract import assert_close, text
from tests.strategies import channel_nets, headed_graphs

RNG = np.random.default_rng(0)


def conv(x: Node, cout: int, k: int = 3, groups: int = 1, loc: str = "conv") -> Node:
    nsp = len(x.shape) - 2
    w = const(RNG.normal(size=(cout, x.shape[1] // groups) + (k,) * nsp).astype(np.float32),
              loc=f"{loc}.weight")
    b = const(RNG.normal(size=cout).astype(np.float32), loc=f"{loc}.bias")
    attrs = {"stride": [1] * nsp, "padding": [k // 2] * (2 * nsp), "dilation": [1] * nsp,
             "groups": groups}
    return make("conv", [x, w, b], attrs, loc)


def linear(x: Node, out: int, loc: str = "fc") -> Node:
    w = const(RNG.normal(size=(out, x.shape[-1])).astype(np.float32), loc=f"{loc}.weight")
    return make("linear", [x, w], loc=loc)


def image(c: int = 4, size: int = 5) -> Node:
    return graph_input("x", TensorType((2, c, size, size), npuc.ir.DType.F32))


def first_units(group: ChannelGroup, k: int) -> list[Unit]:
    return list(group.units[:k])


def masked(ch: Channels, units: list[Unit]) -> Graph:
    """The unpruned graph with the removed channels zeroed wherever they are summed away: at
    every consumer layer's input, and at both operands of a matmul of two activations whose
    contracted axis holds them (the analysis ties those axes; pruning drops their terms)."""
    contracted = {c: ((0, len(c.inputs[0].shape) - 1 if c.op in ("linear", "matmul") else 1),)
                  for c in ch.consumers}
    for n in ch.graph.nodes:
        if n.op == "matmul" and not any(i.is_const for i in n.inputs):
            contracted[n] = ((0, len(n.inputs[0].shape) - 1), (1, len(n.inputs[1].shape) - 2))

    def zero(node: Node, orig: Node) -> Node | None:
        if orig not in contracted:
            return None
        inputs = list(node.inputs)
        for k, axis in contracted[orig]:
            # the removed mask is the analysed graph's: read it on the original operand
            gone = ch.removed_mask(orig.inputs[k], axis, units)
            if gone.any():
                shape = [1] * len(inputs[k].shape)
                shape[axis] = -1
                inputs[k] = make("mul", [inputs[k],
                                         const((~gone).astype(np.float32).reshape(shape))])
        return node.with_inputs(tuple(inputs))

    return rewrite(ch.graph, zero, origin=True)


def check_removal(ch: Channels, units: list[Unit], inputs: tuple) -> Graph:
    before = text(ch.graph)
    pruned = ch.prune(units).verify()
    assert text(ch.graph) == before  # prune never mutates the analysed graph
    assert_close(npuc.interpret(pruned, *inputs), npuc.interpret(masked(ch, units), *inputs))
    return pruned


# -- hand-built structures -------------------------------------------------------------------


def test_residual_add_ties_both_branches() -> None:
    x = image()
    a = conv(x, 6, loc="a")
    b = conv(make("relu", [conv(x, 3, loc="c")]), 6, loc="b")
    out = conv(make("add", [a, b]), 2, loc="head")
    ch = Channels(Graph((x,), (out,)))
    group = ch.group_of(a)
    assert group is ch.group_of(b) and group.prunable
    assert [len(u) for u in group.units] == [2] * 6  # channel i of a with channel i of b
    assert all(u[0][1] == u[1][1] for u in group.units)
    assert out in group.consumers
    pruned = check_removal(ch, first_units(group, 2), (RNG.normal(size=x.shape).astype("f4"),))
    convs = {n.loc: n for n in pruned.nodes if n.op == "conv"}
    assert convs["a"].shape[1] == convs["b"].shape[1] == 4
    assert convs["head"].inputs[1].shape[1] == 4


def test_concat_offsets_and_flatten_into_linear() -> None:
    x = image(3, 4)
    a, b = conv(x, 2, loc="a"), conv(x, 3, loc="b")
    cat = make("concat", [a, b], {"axis": 1})
    flat = make("reshape", [make("relu", [cat])], {"shape": [2, 5 * 16]})
    out = linear(flat, 4)
    ch = Channels(Graph((x,), (out,)))
    where = ch.positions(flat, ((b, 1),))  # b's channel 1 is concat channel 3: 16 features
    assert list(where) == [1] and list(where[1]) == list(range(3 * 16, 4 * 16))
    unit = ch.group_of(b).units[1]
    pruned = check_removal(ch, [unit], (RNG.normal(size=x.shape).astype("f4"),))
    fc = next(n for n in pruned.nodes if n.op == "linear")
    assert fc.inputs[1].shape == (4, 4 * 16)


def test_depthwise_carries_and_grouped_ties_across_groups() -> None:
    x = image(4)
    p = conv(x, 6, loc="p")
    dw = conv(make("relu", [p]), 12, groups=6, loc="dw")  # depthwise, multiplier 2
    g2 = conv(dw, 4, k=1, groups=2, loc="g2")  # grouped consumer: 6 inputs per group
    ch = Channels(Graph((x,), (make("relu", [g2]),)))
    assert ch.group_of(dw) is None  # a depthwise conv owns no channels
    group = ch.group_of(p)
    # dw output c*2+m carries p's channel c; g2's groups read dw channels 0-5 and 6-11, so p's
    # channel c is tied to p's channel c+3 (same local input of both groups)
    assert sorted(len(u) for u in group.units) == [2, 2, 2]
    assert dw in group.values and g2 in group.consumers
    pruned = check_removal(ch, first_units(group, 1), (RNG.normal(size=x.shape).astype("f4"),))
    convs = {n.loc: n for n in pruned.nodes if n.op == "conv"}
    assert convs["dw"].attrs["groups"] == 4 and convs["dw"].shape[1] == 8
    assert convs["g2"].inputs[1].shape[1] == 4 and convs["g2"].attrs["groups"] == 2


def test_contraction_of_two_activations_ties_them() -> None:
    """q @ k^T (attention scores): q's and k's channels meet in the contraction, so channel i of
    q goes with channel i of k, and removing it drops that term of the sum: equal to zeroing it
    in both operands (the random-graph test's oracle, which once zeroed only at layers)."""
    x = graph_input("x", TensorType((2, 5, 6), npuc.ir.DType.F32))
    q, k = linear(x, 4, loc="q"), linear(x, 4, loc="k")
    scores = make("matmul", [q, make("permute", [k], {"perm": [0, 2, 1]})])
    ch = Channels(Graph((x,), (linear(scores, 3, loc="head"),)))
    group = ch.group_of(q)
    assert group is ch.group_of(k) and group.prunable
    assert all(sorted(p.loc for p, _ in u) == ["k", "q"] for u in group.units)
    pruned = check_removal(ch, first_units(group, 1), (RNG.normal(size=x.shape).astype("f4"),))
    assert sorted(n.inputs[1].shape for n in pruned.nodes if n.loc in ("q", "k")) == [(3, 6)] * 2


def test_pinned_groups_say_why() -> None:
    x = graph_input("x", TensorType((2, 6, 4), npuc.ir.DType.F32))
    to_output = linear(x, 5, loc="out")
    normed = make("layer_norm", [linear(x, 4, loc="ln")], {"ndim": 1})
    split = make("reshape", [linear(x, 6, loc="heads")], {"shape": [2, 6, 2, 3]})
    with_input = make("add", [linear(x, 4, loc="res"),
                              make("slice", [x], {"axis": 2, "start": 0, "end": 4})])
    tail = linear(make("concat", [normed, with_input], {"axis": 2}), 3, loc="tail")
    tail2 = linear(make("reshape", [split], {"shape": [2, 6, 6]}), 2, loc="tail2")
    ch = Channels(Graph((x,), (to_output, tail, tail2)))
    reasons = {g.producers[0].loc: g.reason for g in ch.groups}
    assert "graph output" in reasons["out"]
    assert "layer_norm" in reasons["ln"]
    assert "splits the channel axis" in reasons["heads"]
    assert "no prunable layer owns" in reasons["res"]
    with pytest.raises(ValueError, match="cannot be removed"):
        ch.prune(first_units(ch.group_of(to_output), 1))


def test_a_value_is_never_emptied() -> None:
    x = image()
    a = conv(x, 3, loc="a")
    out = conv(make("relu", [a]), 2, loc="head")
    ch = Channels(Graph((x,), (out,)))
    everything = list(ch.group_of(a).units)
    assert ch.emptied(everything)
    with pytest.raises(ValueError, match="without channels"):
        ch.prune(everything)
    assert text(ch.prune([])) == text(ch.graph)


def test_partial_units_are_refused() -> None:
    x = image()
    a, b = conv(x, 4, loc="a"), conv(x, 4, loc="b")
    ch = Channels(Graph((x,), (conv(make("add", [a, b]), 2, loc="head"),)))
    with pytest.raises(ValueError, match="whole"):
        ch.prune([((a, 0),)])  # channel 0 of a without channel 0 of b


@pytest.mark.parametrize(("src", "dst", "axis", "want"), [
    ((2, 8, 3, 3), (2, 8, 9), 1, (1, 1, 1)),  # kept whole
    ((2, 8, 3, 3), (2, 72), 1, (1, 1, 9)),  # flattened with the spatial axes
    ((2, 8), (16,), 1, (0, 2, 1)),  # merged with the batch
    ((2, 8), (2, 2, 4), 1, None),  # split
    ((2, 1, 4), (2, 4), 1, (0, 2, 1)),  # a single channel fits either neighbour: the first
])
def test_reshaped_axis(src: tuple, dst: tuple, axis: int, want: tuple | None) -> None:
    assert reshaped_axis(src, dst, axis) == want


# -- random graphs ----------------------------------------------------------------------------


def random_units(ch: Channels, data: st.DataObject) -> list[Unit]:
    """A random removal: in each prunable group, a random subset of units, backed off until no
    value would lose every channel."""
    units: list[Unit] = []
    for group in ch.groups:
        if group.prunable:
            units += data.draw(st.lists(st.sampled_from(group.units), unique=True,
                                        min_size=1, max_size=len(group.units) - 1))
    while (emptied := ch.emptied(units)):
        units = [u for u in units if u not in emptied[0]]
    return units


@given(headed_graphs(families=["conv", "linear", "matmul", "conv_transpose", "batch_norm",
                                  "unary", "binary", "concat", "reshape", "permute", "pool",
                                  "slice", "reduce", "prelu", "group_norm", "glu", "flip",
                                  "expand"]), st.data())
def test_removal_equals_zeroing_at_consumers(case: tuple, data: st.DataObject) -> None:
    """On any random graph: removing any units verifies and equals the unpruned graph with
    those channels zeroed where consumers read them."""
    graph, inputs = case
    ch = Channels(graph)
    check_removal(ch, random_units(ch, data), inputs)


@given(channel_nets(), st.data())
def test_removal_on_channel_nets(case: tuple, data: st.DataObject) -> None:
    graph, inputs = case
    ch = Channels(graph)
    units = random_units(ch, data)
    pruned = check_removal(ch, units, inputs)
    layers = {n.loc: n for n in pruned.nodes if n.op in ("conv", "linear")}
    for p in ch.producers:  # every producer lost exactly its removed channels
        gone = sum(1 for u in units for q, _ in u if q is p)
        axis = len(p.shape) - 1 if p.op == "linear" else 1
        assert layers[p.loc].shape[axis] == p.shape[axis] - gone
