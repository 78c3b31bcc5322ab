"""reuse_attention: finds attention, caches its map or output in state by a policy; 'always'
is the identity at every call; a reusing call reads what the last recomputing call left."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import npuc
from npuc.interpreter import interpret
from npuc.passes.reuse_attention import attention_maps, schedule_for
from npuc.state import Activity
from tests.stateful import CALLS, Attention, loop_inputs


def captured(model: nn.Module, calls: list[tuple]) -> npuc.ir.Graph:
    torch.manual_seed(0)
    return npuc.capture(model.eval(), tuple(torch.from_numpy(a) for a in calls[0]))


def timesteps_of(calls: list[tuple]) -> list[int]:
    return [int(c[1][0]) for c in calls]


def sequence(graph: npuc.ir.Graph, calls: list[tuple]) -> list[np.ndarray]:
    state: dict = {}
    return [interpret(graph, *c, state=state)[0] for c in calls]


@pytest.mark.parametrize("sdpa", [False, True], ids=["hand-written", "sdpa"])
def test_always_is_the_identity_at_every_call(sdpa: bool) -> None:
    calls = loop_inputs()
    torch.manual_seed(1)
    graph = captured(Attention(sdpa=sdpa), calls)
    assert len(attention_maps(graph)) == 1
    cached = npuc.passes.apply(graph, "reuse_attention", timesteps=timesteps_of(calls),
                               policy="always")
    assert len(cached.state) == 1 and cached.state[0].name.endswith(".map")
    for got, want in zip(sequence(cached, calls), sequence(graph, calls), strict=True):
        np.testing.assert_array_equal(got, want)


@settings(max_examples=20, deadline=None)
@given(st.sampled_from(["late", "every"]), st.integers(1, 3), st.floats(0.0, 1.0),
       st.sampled_from(["map", "output"]))
def test_a_reusing_call_reads_what_the_last_recomputing_call_left(policy: str, every: int,
                                                                    reuse_after: float,
                                                                    mode: str) -> None:
    """Mode "output" on a model that returns the attention output: a reusing call returns the
    last recomputing call's output bit for bit, a recomputing call its own."""
    calls = loop_inputs(seed=every)
    torch.manual_seed(2)
    graph = captured(Attention(project=False), calls)
    cached = npuc.passes.apply(graph, "reuse_attention", timesteps=timesteps_of(calls),
                               policy=policy, every=every, reuse_after=reuse_after, mode="output")
    plan = schedule_for(policy, CALLS, reuse_after, every)
    assert plan[0] == 1
    plain = sequence(graph, calls)
    got = sequence(cached, calls)
    last = 0
    for i, recompute in enumerate(plan):
        last = i if recompute else last
        # the output is reshaped from the cached product: the same values, bit for bit
        np.testing.assert_array_equal(got[i], plain[last])
    if mode == "map":  # and a cached map gives a different, still finite, output
        mapped = npuc.passes.apply(graph, "reuse_attention", timesteps=timesteps_of(calls),
                                   policy=policy, every=every, reuse_after=reuse_after)
        out = sequence(mapped, calls)
        for i, recompute in enumerate(plan):
            assert np.isfinite(out[i]).all()
            if recompute:
                np.testing.assert_array_equal(out[i], plain[i])


def test_a_reusing_call_skips_qk_and_softmax_and_costs_less() -> None:
    calls = loop_inputs()
    torch.manual_seed(3)
    graph = captured(Attention(), calls)
    cached = npuc.passes.apply(graph, "reuse_attention", timesteps=timesteps_of(calls),
                               policy="late", reuse_after=0.5, every=3)
    activity = Activity(cached)
    recompute, reuse = (set(activity.computed(int(calls[i][1][0]))) for i in (0, 4))
    skipped = {n.op for n in recompute - reuse}
    assert {"softmax", "matmul"} <= skipped
    cm = npuc.compile(cached, calibration=calls, target="npu-int8")
    report = cm.simulate_calls(timesteps_of(calls))
    costs = [r.total_cycles for r in report.reports]
    plan = schedule_for("late", CALLS, 0.5, 3)
    assert max(c for c, p in zip(costs, plan, strict=True) if not p) < min(
        c for c, p in zip(costs, plan, strict=True) if p)


def test_per_layer_schedules_and_clear_errors() -> None:
    calls = loop_inputs()
    torch.manual_seed(4)
    graph = captured(Attention(), calls)
    (soft, _), = attention_maps(graph)
    times = timesteps_of(calls)
    own = [1, 0, 1, 0, 0, 1]
    cached = npuc.passes.apply(graph, "reuse_attention", timesteps=times,
                               layers={soft.loc: own})
    write = cached.state[0].write
    table, stores = write.inputs[0].attrs["recompute"], write.attrs["recompute"]
    assert [table[t] for t in times] == own
    assert [stores[t] for t in times] == [1, 0, 1, 0, 0, 0]  # only before a reusing call
    assert sum(table) == len(table) - own.count(0)  # values no call takes recompute
    with pytest.raises(ValueError, match="matches no attention"):
        npuc.passes.apply(graph, "reuse_attention", timesteps=times, layers={"nope*": own})
    with pytest.raises(ValueError, match="the first 1"):
        npuc.passes.apply(graph, "reuse_attention", timesteps=times, layers={"*": [0] * 6})
    with pytest.raises(ValueError, match="no input 'step'"):
        npuc.passes.apply(graph, "reuse_attention", step="step", calls=6)
    with pytest.raises(ValueError, match="one int32/int64 element"):
        npuc.passes.apply(graph, "reuse_attention", step="x", calls=6)
    with pytest.raises(ValueError, match="how many calls"):
        npuc.passes.apply(graph, "reuse_attention")


class TwoBlocks(nn.Module):
    """Two timestep-conditioned attention blocks with residuals: a tiny denoiser."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = Attention(), Attention()

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = x + self.a(x, t)
        return h + self.b(h, t)


def sampler(calls: list[tuple]) -> tuple:
    """A sequential loop x <- x - 0.1 * model(x, t) from calls[0]'s x; returns (sample(g) for
    search_policy, the timesteps)."""
    times = [int(c[1][0]) for c in calls]

    def sample(graph: npuc.ir.Graph) -> np.ndarray:
        state: dict = {}
        x = calls[0][0]
        for t in times:
            x = x - np.float32(0.1) * interpret(graph, x, np.array([t]), state=state)[0]
        return x

    return sample, times


def test_the_searched_policy_meets_its_bound_and_saves_what_the_target_rewards() -> None:
    from npuc.passes.reuse_attention import (
        layer_savings,
        probe_schedules,
        reuse_attention_graph,
        search_policy,
    )

    calls = loop_inputs(calls=5)
    torch.manual_seed(6)
    graph = captured(TwoBlocks(), calls)
    sample, times = sampler(calls)
    reference = sample(graph)

    def quality(x: np.ndarray) -> float:
        return -float(np.linalg.norm(x - reference) / np.linalg.norm(reference))

    probe = npuc.compile(graph, calibration=calls, target="npu-int8", passes=[
        ("reuse_attention", {"timesteps": times, "layers": probe_schedules(graph, len(calls))}),
        *npuc.targets.get("npu-int8").pipeline])
    savings = layer_savings(probe, times)
    assert set(savings) == {soft.loc for soft, _ in attention_maps(graph)}
    assert all(s > 0 for s in savings.values())
    loose = search_policy(graph, times, sample, quality, -1.0, savings)
    assert all(s == [1, 0, 0, 0, 0] for s in loose.layers.values())  # everything reusable
    assert loose.saved_s == pytest.approx(4 * sum(savings.values()))
    tight = search_policy(graph, times, sample, quality, loose.quality / 4, savings)
    assert tight.quality >= loose.quality / 4 and tight.saved_s < loose.saved_s
    again = quality(sample(reuse_attention_graph(graph, "t", times, tight.layers)))
    assert again == pytest.approx(tight.quality)  # the policy is what was measured
    strict = search_policy(graph, times, sample, quality, 0.0, savings)
    assert strict.saved_s == 0 and strict.quality == strict.baseline == 0.0
    # a layer whose reuse saves nothing on the target is never reused
    (first, second) = sorted(savings)
    none = search_policy(graph, times, sample, quality, -1.0, {first: savings[first],
                                                               second: -1e-6})
    assert none.layers[second] == [1] * 5 and none.layers[first].count(0) == 4
    assert "layer-calls reuse" in str(tight)


@settings(max_examples=12, deadline=None)
@given(st.integers(1, 3), st.sampled_from([1, 2, 4]), st.integers(2, 9), st.booleans(),
       st.sampled_from(["map", "output"]), st.integers(0, 1000))
def test_random_attention_is_found_and_always_is_exact(blocks: int, heads: int, tokens: int,
                                                       sdpa: bool, mode: str, seed: int) -> None:
    """Random stacks of attention blocks (heads, tokens, hand-written or sdpa): every attention
    is found, each gets its own state, and `always` computes what the model did, every call."""
    torch.manual_seed(seed)
    model = nn.Sequential(*[Attention(heads=heads, sdpa=sdpa) for _ in range(blocks)])

    class Stack(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = model

        def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            for layer in self.layers:
                x = x + layer(x, t)
            return x

    calls = loop_inputs(seed, calls=3, n=tokens)
    graph = captured(Stack(), calls)
    assert len(attention_maps(graph)) == blocks
    cached = npuc.passes.apply(graph, "reuse_attention", timesteps=timesteps_of(calls),
                               policy="always", mode=mode)
    assert len(cached.state) == blocks and len({s.name for s in cached.state}) == blocks
    for got, want in zip(sequence(cached, calls), sequence(graph, calls), strict=True):
        np.testing.assert_array_equal(got, want)


@settings(max_examples=20, deadline=None)
@given(st.lists(st.integers(0, 1), min_size=CALLS - 1, max_size=CALLS - 1))
def test_a_call_stores_its_map_only_when_the_next_call_reuses_it(rest: list[int]) -> None:
    """The cache changes (and the simulator counts a DRAM write) exactly at the recomputing
    calls whose next call reuses; reads are counted at the reusing calls."""
    from npuc.simulator import simulate

    calls = loop_inputs()
    torch.manual_seed(5)
    graph = captured(Attention(), calls)
    own = [1, *rest]
    cached = npuc.passes.apply(graph, "reuse_attention", timesteps=timesteps_of(calls),
                               layers={"*": own})
    slot = cached.state[0]
    nbytes, state = slot.type.nbytes, {slot.name: slot.reset_value()}
    for i, call in enumerate(calls):
        before = state[slot.name].copy()
        interpret(cached, *call, state=state)
        stores = own[i] and i + 1 < CALLS and not own[i + 1]
        assert (not np.array_equal(before, state[slot.name])) == bool(stores)
        report = simulate(cached, "npu-int8", step=timesteps_of(calls)[i], compare=False)
        assert report.state_dram_bytes == nbytes * (int(bool(stores)) + (1 - own[i]))
