"""State across calls (`Graph.state`, the `state` and `reuse` ops): its contract on random
graphs, in the dump, the verifier, the interpreter and through quantization."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import npuc
from npuc.interpreter import interpret
from npuc.ir import (
    DType,
    Graph,
    GraphError,
    StateSlot,
    TensorType,
    graph_input,
    state_read,
    structurally_equal,
)
from npuc.ops import make
from npuc.parser import ParseError, parse
from npuc.printer import print_graph
from npuc.state import Activity, unchanged_state
from tests.stateful import cached_softmax
from tests.strategies import INPUT_BOUND, schedules, stateful_graphs, weights

F32 = DType.F32


def arrays_for(graph: Graph, draw: st.DrawFn) -> tuple[np.ndarray, ...]:
    return tuple(draw(weights(i.shape, INPUT_BOUND)) for i in graph.inputs
                 if i.attrs["name"] != "step")


def run_sequence(graph: Graph, inputs: tuple, steps: range, state: dict | None = None
                 ) -> list[tuple[np.ndarray, ...]]:
    state = {} if state is None else state
    return [interpret(graph, *inputs, np.int32(s), state=state) for s in steps]


def tiny(schedule: tuple[int, ...] = (1, 0, 0, 1)) -> tuple[Graph, object, object]:
    """exp(x) cached by `schedule`, plus x: (graph, the exp node, the reuse node)."""
    t = TensorType((2, 3), F32)
    x, step = graph_input("x", t), graph_input("step", TensorType((), DType.I32))
    read = state_read("acc", t)
    fresh = make("exp", [x])
    kept = make("reuse", [fresh, read, step], {"recompute": schedule})
    graph = Graph((x, step), (make("add", [kept, x]),), "tiny", {}, (StateSlot(read, kept),))
    return graph.verify(), fresh, kept


@settings(max_examples=60, deadline=None)
@given(stateful_graphs())
def test_state_round_trips_through_the_dump(pair: tuple[Graph, Graph]) -> None:
    graph, _ = pair
    text = print_graph(graph, constants=True)
    again = parse(text)
    assert print_graph(again, constants=True) == text
    assert [s.name for s in again.state] == [s.name for s in graph.state]
    # the first trip may rename inputs the printer disambiguates ("0"); a second is exact
    assert structurally_equal(parse(print_graph(again, constants=True)), again)
    inputs = tuple(np.full(i.shape, 0.5, i.dtype.numpy) for i in graph.inputs)
    for got, want in zip(run_sequence(again, inputs[:-1], range(3))[-1],
                         run_sequence(graph, inputs[:-1], range(3))[-1], strict=True):
        np.testing.assert_array_equal(got, want)


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_always_recomputing_equals_the_graph_without_reuse(data: st.DataObject) -> None:
    graph, plain = data.draw(stateful_graphs(schedule=(1,) * 4))
    inputs = arrays_for(graph, data.draw)
    expected = interpret(plain, *inputs)
    for outputs in run_sequence(graph, inputs, range(6)):
        for got, want in zip(outputs, expected, strict=True):
            np.testing.assert_array_equal(got, want)


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_a_reusing_step_gives_what_the_last_recomputing_step_cached(data: st.DataObject) -> None:
    """With inputs that change every call, a reused value is the one computed at the last
    recomputing step: so the outputs equal the plain graph's at that step's inputs wherever
    they depend only on the cached value."""
    schedule = data.draw(schedules())
    graph, plain = data.draw(stateful_graphs(schedule=schedule))
    base = arrays_for(graph, data.draw)
    steps = range(len(schedule) + 2)
    per_step = [tuple(a * np.float32(1 + 0.25 * s) for a in base) for s in steps]
    state: dict = {}
    for s in steps:
        interpret(graph, *per_step[s], np.int32(s), state=state)
        last = max(t for t in range(s + 1) if t >= len(schedule) or schedule[t])
        # what each cache holds after step s: its fresh value at step `last`
        for slot in graph.state:
            fresh = slot.write.inputs[0]
            probe = Graph(graph.inputs, (fresh,), "probe", {}, graph.state)
            want = interpret(probe, *per_step[last], np.int32(last),
                             state=_replay(graph, per_step, last))[0]
            np.testing.assert_array_equal(state[slot.name], want)


def _replay(graph: Graph, per_step: list[tuple], upto: int) -> dict:
    """The state a sequence leaves before step `upto`."""
    state: dict = {}
    for s in range(upto):
        interpret(graph, *per_step[s], np.int32(s), state=state)
    return state


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_reset_restores_the_first_calls_results(data: st.DataObject) -> None:
    graph, _ = data.draw(stateful_graphs())
    inputs = arrays_for(graph, data.draw)
    state: dict = {}
    first = run_sequence(graph, inputs, range(5), state)
    state.clear()
    again = run_sequence(graph, inputs, range(5), state)
    for a, b in zip(first, again, strict=True):
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)


@settings(max_examples=60, deadline=None)
@given(stateful_graphs())
def test_a_reusing_step_computes_exactly_what_does_not_feed_only_the_fresh_value(
        pair: tuple[Graph, Graph]) -> None:
    graph, _ = pair
    activity = Activity(graph)
    everything = set(activity.computed(activity.horizon))
    # steps past every schedule recompute everything, reading no cache
    leaves = ("state", "input")
    assert {n for n in everything if n.op not in leaves} == {
        n for n in graph.nodes if n.op not in leaves}
    for s in range(activity.horizon):
        computed = set(activity.computed(s))
        # every output, every state write that changes its slot, and every operand of a
        # computed node that its op needs, is computed
        stored = {slot.write for slot in graph.state if not unchanged_state(slot, s)}
        assert set(graph.outputs) | stored <= computed
        for node in computed:
            needed = node.inputs
            if node.op == "reuse":
                fresh = s >= len(node.attrs["recompute"]) or node.attrs["recompute"][s]
                needed = (node.inputs[0] if fresh else node.inputs[1], node.inputs[2])
            assert set(needed) <= computed, node


def test_tiny_sequence_and_what_each_step_computes() -> None:
    graph, fresh, kept = tiny((1, 0, 0, 1))
    x = np.full((2, 3), 1.0, np.float32)
    state: dict = {}
    got = [interpret(graph, x * (s + 1), np.int32(s), state=state)[0][0, 0] for s in range(6)]
    e = np.exp(np.float32([1, 4, 5, 6]))
    want = [e[0] + 1, e[0] + 2, e[0] + 3, e[1] + 4, e[2] + 5, e[3] + 6]
    np.testing.assert_allclose(got, np.float32(want), rtol=1e-6)
    activity = Activity(graph)
    assert fresh in activity.computed(0) and fresh not in activity.computed(1)
    assert fresh in activity.computed(3) and fresh in activity.computed(17)  # past the end


def test_the_verifier_and_the_parser_refuse_bad_state() -> None:
    graph, fresh, kept = tiny()
    t = kept.type
    with pytest.raises(GraphError, match="writes"):  # a write of another type
        Graph(graph.inputs, graph.outputs, "g", {},
              (StateSlot(graph.state[0].read, make("sum", [kept], {"axes": (0,)})),)).verify()
    with pytest.raises(GraphError, match="dangling value: state"):  # read without a slot
        Graph(graph.inputs, graph.outputs, "g").verify()
    twice = (graph.state[0], StateSlot(state_read("acc", t), kept))
    with pytest.raises(GraphError, match="state names repeat"):
        Graph(graph.inputs, graph.outputs, "g", {}, twice).verify()
    text = print_graph(graph)
    with pytest.raises(ParseError, match="no 'state"):
        parse(text.replace('  state "acc" = %2\n', ""))
    with pytest.raises(ParseError, match="kept but 0 state nodes"):
        parse(text.replace('state "acc" =', 'state "other" ='))
    with pytest.raises(TypeError, match="0/1 per step"):
        make("reuse", [fresh, graph.state[0].read, graph.inputs[1]], {"recompute": (1, 2)})
    with pytest.raises(TypeError, match="one i32/i64 element"):
        make("reuse", [fresh, graph.state[0].read, graph.inputs[0]], {"recompute": (1,)})


def test_quantized_state_is_stored_as_its_write_and_compiled_runs_hold_it() -> None:
    """Through npu-int8: the cached softmax map is int8 at softmax's fixed parameters, the
    state read shares them, `cm.run` carries it and `cm.reset` forgets it."""
    graph, calls = cached_softmax()
    cm = npuc.compile(graph, calibration=calls, target="npu-int8")
    (slot,) = cm.ir.state
    assert slot.type.dtype == DType.I8 and slot.write.op == "reuse"
    assert slot.read.type == slot.write.inputs[0].type  # no requantize on the cached path
    reference: dict = {}
    for inputs in calls:
        got = cm.run(*inputs)
        want = interpret(graph, *inputs, state=reference)[0]
        assert np.abs(got - want).max() < 0.05 * np.abs(want).max()
    cached = dict(cm.state)
    cm.reset()
    assert not cm.state
    first = cm.run(*calls[0])
    cm.reset()
    np.testing.assert_array_equal(cm.run(*calls[0]), first)
    assert not np.array_equal(cached["attn.map"], cm.state["attn.map"])  # a later step moved it
