"""The simulator on graphs with state: a call costs what it computes, plus its state traffic."""

from __future__ import annotations

import pytest

import npuc
from npuc.ir import Graph
from npuc.simulator import simulate, simulate_calls
from npuc.state import Activity
from tests.stateful import SCHEDULE, cached_softmax


@pytest.fixture(scope="module")
def compiled():  # noqa: ANN201
    graph, calls = cached_softmax(size=16)
    return npuc.compile(graph, calibration=calls, target="npu-int8")


@pytest.mark.parametrize("target", ["npu-int8", "soc"])
def test_a_reused_step_costs_the_work_it_skips_less_and_the_cache_read_more(compiled, target):
    graph = compiled.ir
    (slot,) = graph.state
    fresh, reused = (simulate(graph, target, step=s, compare=False) for s in (0, 1))
    skipped = set(Activity(graph).computed(0)) - set(Activity(graph).computed(1))
    assert slot.write.inputs[0] in skipped and slot.read not in skipped
    by_op = {r.op: r for r in fresh.rows}
    load = next(r for r in reused.rows if r.op == "state")
    assert load.engine == "dma" and load.dram_bytes == slot.type.nbytes
    # the recomputing call stores the map (on the reuse row); the reusing one stores nothing
    assert by_op["reuse"].dram_bytes == slot.type.nbytes
    assert next(r for r in reused.rows if r.op == "reuse").dram_bytes == 0
    skipped_rows = [r for r in fresh.rows if r.op in {n.op for n in skipped}]
    assert {r.op for r in skipped_rows} >= {"qconv", "qsoftmax"}
    energy = sum(r.energy_j for r in fresh.rows) - sum(r.energy_j for r in skipped_rows)
    energy -= by_op["reuse"].energy_j  # its store
    energy += load.energy_j
    assert sum(r.energy_j for r in reused.rows) == pytest.approx(energy, rel=1e-12)
    assert reused.state_dram_bytes == fresh.state_dram_bytes == slot.type.nbytes
    assert reused.state_bytes == fresh.state_bytes == slot.type.nbytes
    assert reused.latency_s < fresh.latency_s
    assert f"step 1: {slot.type.nbytes:,} B of state" in str(reused)


def test_a_sequence_sums_its_calls_and_simulates_each_pattern_once(compiled):
    steps = range(len(SCHEDULE) + 2)
    calls = simulate_calls(compiled.ir, "npu-int8", steps)
    assert calls.steps == tuple(steps)
    assert [r.step for r in calls.reports] == list(steps)
    single = {s: simulate(compiled.ir, "npu-int8", step=s, compare=False) for s in steps}
    assert calls.latency_s == pytest.approx(sum(r.latency_s for r in single.values()))
    for s in steps:  # recompute steps cost alike, reuse steps alike
        recompute = s >= len(SCHEDULE) or SCHEDULE[s]
        assert calls.reports[s].total_cycles == single[0 if recompute else 1].total_cycles
    assert str(calls).splitlines()[-1].startswith("total")
    assert compiled.simulate_calls(steps).cycles == calls.cycles


def test_step_is_refused_for_a_graph_without_reuse() -> None:
    graph, _ = cached_softmax()
    probs = graph.state[0].write.inputs[0]
    stateless = Graph(graph.inputs[:1], (probs,), "plain")
    with pytest.raises(ValueError, match="same work at every call"):
        simulate(stateless, "npu-int8", step=3)
