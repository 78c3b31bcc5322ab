"""smoothquant (and the calibration helpers): exact on random LayerNorm -> Linear fan-outs and real
models, smooths exactly the groups its contract names, and evens out outlier channels."""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import npuc
from npuc import passes
from npuc.ir import DType, Graph, Node, TensorType, const, graph_input
from npuc.ops import make
from npuc.passes.calibration import (
    CalibrationError,
    activation_absmax,
    activation_minmax,
    activation_profiles,
    range_ratio,
    value_keys,
)
from npuc.passes.smoothquant import (
    ALPHAS,
    consumer_weights,
    find_groups,
    search_scales,
    w8a8_error,
)
from tests.models import ZOO
from tests.passes.contract import check_exact

ZOO_MODELS = ["mlp", "transformer_encoder", "attention_block"]


@st.composite
def norm_fanout(draw: st.DrawFn, *, max_outliers: int = 2) -> tuple[Graph, tuple[np.ndarray]]:
    """x -> layer_norm -> 1..3 linears (each maybe followed by [relu|leaky_relu] -> linear), and
    maybe a second reader of the layer_norm (a residual add, or the norm as a graph output).
    Some gamma channels are scaled x50 (the outliers smoothing is for)."""
    lead = draw(st.sampled_from([(4,), (2, 3), (1, 2, 3)]))
    c = draw(st.integers(2, 12))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = graph_input("x", TensorType(lead + (c,), DType.F32))
    gamma = rng.uniform(0.5, 1.5, c)
    gamma[rng.choice(c, draw(st.integers(0, min(max_outliers, c))), replace=False)] *= 50
    affine = draw(st.sampled_from(["gamma_beta", "gamma", "none"]))
    params = {"gamma_beta": [gamma, rng.normal(0, 0.3, c)], "gamma": [gamma], "none": []}[affine]
    norm = make("layer_norm", [x, *(const(p.astype(np.float32)) for p in params)],
                {"eps": 1e-5}, loc="norm")

    def linear(v: Node, out: int, loc: str) -> Node:
        w = const((rng.normal(size=(out, v.shape[-1])) / np.sqrt(v.shape[-1])).astype(np.float32))
        bias = [const(rng.normal(0, 0.1, out).astype(np.float32))] if draw(st.booleans()) else []
        return make("linear", [v, w, *bias], loc=loc)

    outputs = []
    for i in range(draw(st.integers(1, 3))):
        y = linear(norm, draw(st.integers(1, 10)), f"fc{i}")
        act = draw(st.sampled_from(["", "relu", "leaky_relu", "gelu"]))
        if act:
            y = linear(make(act, [y]), draw(st.integers(1, 6)), f"fc{i}.out")
        outputs.append(y)
    residual = draw(st.sampled_from(["", "add", "output"]))
    if residual:
        outputs.append(make("add", [norm, x]) if residual == "add" else norm)
    scale = np.exp(rng.normal(0, 1, c))  # per-channel input scale
    inputs = (rng.normal(size=x.shape) * scale).astype(np.float32)
    return Graph((x,), tuple(outputs)), (inputs,)


def _norm_params_unchanged(before: Graph, after: Graph) -> bool:
    (a,) = (n for n in before.nodes if n.op == "layer_norm")
    return any(n.op == "layer_norm" and len(n.inputs) == len(a.inputs) and all(
        np.array_equal(p.data, q.data) for p, q in zip(n.inputs[1:], a.inputs[1:], strict=True))
        for n in after.nodes)


@given(norm_fanout(), st.booleans())
def test_exact_on_random_fanouts(case: tuple, shared_norms: bool) -> None:
    graph, inputs = case
    result = check_exact("smoothquant", graph, inputs, shared_norms=shared_norms)
    (norm,) = (n for n in graph.nodes if n.op == "layer_norm")
    readers = set(graph.users[norm])
    shared = any(r.op != "linear" for r in readers) or norm in graph.outputs
    norms = [n for n in result.nodes if n.op == "layer_norm"]
    # a shared norm is never rescaled in place: kept as is, plus a smoothed copy when allowed
    if shared:
        assert _norm_params_unchanged(graph, result)
        assert len(norms) <= (2 if shared_norms else 1)
    else:
        assert len(norms) == 1


@cache
def _zoo(name: str) -> tuple[Graph, tuple[np.ndarray, ...]]:
    model, inputs = ZOO[name]()
    return npuc.capture(model, inputs), tuple(x.numpy() for x in inputs)


@pytest.mark.parametrize("shared_norms", [False, True])
@pytest.mark.parametrize("name", ZOO_MODELS)
def test_exact_on_zoo_models(name: str, shared_norms: bool) -> None:
    graph, inputs = _zoo(name)
    check_exact("smoothquant", graph, inputs, shared_norms=shared_norms)


@pytest.mark.parametrize("name, shared_norms, groups", [
    ("mlp", False, 2),                   # linear -> relu -> linear, twice
    ("transformer_encoder", False, 1),   # linear1 -> relu -> linear2; norm1 feeds a residual
    ("transformer_encoder", True, 2),    # ... unless norms may be copied
    ("attention_block", False, 0),       # q/k/v read the graph input; norm1 feeds a residual
    ("attention_block", True, 1),
])
def test_groups_on_zoo_models(name: str, shared_norms: bool, groups: int) -> None:
    graph, _ = _zoo(name)
    assert len(find_groups(graph, shared_norms=shared_norms)) == groups


def _outlier_mlp(seed: int = 0) -> tuple[Graph, list[tuple[np.ndarray]]]:
    """x -> layer_norm (3 of 32 gamma channels x50) -> linear -> relu -> linear."""
    rng = np.random.default_rng(seed)
    x = graph_input("x", TensorType((16, 32), DType.F32))
    gamma = rng.uniform(0.5, 1.5, 32)
    gamma[[3, 11, 20]] *= 50
    f32 = np.float32

    def normal(scale: float, *shape: int) -> Node:
        return const(rng.normal(0, scale, shape).astype(f32))

    norm = make("layer_norm", [x, const(gamma.astype(f32)), normal(0.2, 32)], {"eps": 1e-5},
                loc="norm")
    h = make("linear", [norm, normal(0.2, 64, 32), normal(0.1, 64)], loc="fc1")
    y = make("linear", [make("relu", [h], loc="act"), normal(0.1, 8, 64)], loc="fc2")
    calibration = [(rng.normal(size=(16, 32)).astype(f32),) for _ in range(3)]
    return Graph((x,), (y,)), calibration


def test_lowers_outlier_range_ratio() -> None:
    graph, calibration = _outlier_mlp()
    ctx = passes.PassContext(calibration=calibration)
    result = passes.apply(graph, "smoothquant", ctx=ctx)
    assert "smoothed 2 groups" in ctx.notes[-1]
    (before,) = activation_absmax(graph, calibration, [n for n in graph.nodes
                                                       if n.op == "layer_norm"]).values()
    (after,) = activation_absmax(result, calibration, [n for n in result.nodes
                                                       if n.op == "layer_norm"]).values()
    assert range_ratio(after) < range_ratio(before) / 3
    check_exact("smoothquant", graph, calibration[0])


def test_alpha_zero_keeps_activations_and_alpha_one_flattens_them() -> None:
    graph, calibration = _outlier_mlp()
    norm = next(n for n in graph.nodes if n.op == "layer_norm")
    for alpha, check in [(0.0, lambda r: r > 10), (1.0, lambda r: r < 1.01)]:
        result = passes.apply(graph, "smoothquant", alpha=alpha,
                              ctx=passes.PassContext(calibration=calibration))
        fc1 = next(n for n in result.nodes if n.loc == "fc1")
        x = activation_absmax(result, calibration, [fc1.inputs[0]])[fc1.inputs[0]]
        # alpha = 1 leaves every channel at max |X| = 1 exactly; alpha = 0 only evens weights
        assert check(range_ratio(x)), (alpha, range_ratio(x))
    assert range_ratio(activation_absmax(graph, calibration, [norm])[norm]) > 10


def test_needs_calibration() -> None:
    graph, calibration = _outlier_mlp()
    with pytest.raises(CalibrationError, match="pass smoothquant needs calibration"):
        passes.apply(graph, "smoothquant")
    with pytest.raises(ValueError, match="alpha"):
        passes.apply(graph, "smoothquant", calibration=calibration, alpha=1.5)


def test_calibration_helpers() -> None:
    graph, calibration = _outlier_mlp()
    norm = next(n for n in graph.nodes if n.op == "layer_norm")
    values = [npuc.interpret(graph.with_outputs((norm,)), *c)[0] for c in calibration]
    absmax = activation_absmax(graph, calibration, [norm, graph.inputs[0]])
    np.testing.assert_allclose(absmax[norm], np.abs(np.concatenate(values)).max(axis=0))
    lo, hi = activation_minmax(graph, calibration, [norm])[norm]
    assert (lo, hi) == pytest.approx((min(v.min() for v in values), max(v.max() for v in values)))
    inputs = np.concatenate([c[0] for c in calibration])
    np.testing.assert_allclose(absmax[graph.inputs[0]], np.abs(inputs).max(axis=0))
    keys = value_keys(graph)
    assert len(set(keys.values())) == len(keys)
    assert keys[norm] == "norm/layer_norm" and keys[graph.inputs[0]] == "input:x"


@pytest.mark.slow
def test_minilm_layer_norm_outputs_get_smoother() -> None:
    graph, inputs = _zoo("minilm")
    ctx = passes.PassContext(calibration=[inputs])
    # every norm feeds a residual: nothing to do unless norms may be copied (the default)
    assert passes.apply(graph, "smoothquant", shared_norms=False, ctx=ctx) is graph
    result = passes.apply(graph, "smoothquant", ctx=ctx)
    groups = find_groups(graph, shared_norms=True)
    assert len(groups) == 12  # embeddings + 11 of 12 layer norms; the last feeds the pooling
    # the value the linears read, before (the norm) and after (its smoothed copy)
    readers = {g.consumers[0].loc: g.act for g in groups}
    after_acts = {n.loc: n.inputs[0] for n in result.nodes if n.loc in readers}
    before = activation_absmax(graph, [inputs], readers.values())
    after = activation_absmax(result, [inputs], after_acts.values())
    ratio_before = np.mean([range_ratio(before[a]) for a in readers.values()])
    ratio_after = np.mean([range_ratio(after[a]) for a in after_acts.values()])
    assert ratio_after < ratio_before / 2, (ratio_before, ratio_after)
    rel = np.linalg.norm(npuc.interpret(result, *inputs)[0] - npuc.interpret(graph, *inputs)[0])
    assert rel <= 1e-5 * np.linalg.norm(npuc.interpret(graph, *inputs)[0])


def _digits() -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    from examples import digits_cnn

    return digits_cnn.build()


@pytest.mark.parametrize("factory", [_digits, lambda: ZOO["resnet18"](resolution=32)],
                         ids=["digits_cnn", "resnet18"])
def test_nothing_to_smooth_leaves_the_graph_unchanged(factory) -> None:
    """Where smoothquant finds nothing to do (CNNs: no layer_norm or linear -> linear group), it
    returns its input graph itself, so the default pipelines that run it compile such a model
    exactly as before: the same lowered graph with and without the pass."""
    model, inputs = factory()
    graph = npuc.capture(model, inputs)
    ctx = passes.PassContext()
    assert passes.apply(graph, "smoothquant", ctx=ctx, calibration=[inputs]) is graph
    assert "graph unchanged" in ctx.notes[0]
    pipeline = list(npuc.targets.get("npu-int8").pipeline)
    assert "smoothquant" in pipeline
    with_pass = npuc.compile(model, inputs, passes=pipeline)
    pipeline.remove("smoothquant")
    without = npuc.compile(model, inputs, passes=pipeline)
    assert with_pass.dump() == without.dump()


def test_search_leaves_a_group_alone_when_no_alpha_helps() -> None:
    """No outliers (every channel alike): no alpha beats leaving the group alone, so nothing
    changes; with outliers, the searched alpha lowers the W8A8 error below every fixed one's
    worst and the note names it."""
    rng = np.random.default_rng(1)
    x = graph_input("x", TensorType((64, 16), DType.F32))
    f32 = np.float32
    norm = make("layer_norm", [x, const(np.ones(16, f32)), const(np.zeros(16, f32))],
                {"eps": 1e-5}, loc="norm")
    w = np.sign(rng.normal(size=(8, 16))).astype(f32)  # every column the same max |w|
    graph = Graph((x,), (make("linear", [norm, const(w)], loc="fc"),))
    calibration = [(rng.normal(size=(64, 16)).astype(f32),) for _ in range(2)]
    ctx = passes.PassContext()
    assert passes.apply(graph, "smoothquant", ctx=ctx, calibration=calibration) is graph
    assert "left as they are" in ctx.notes[0]

    graph, calibration = _outlier_mlp()
    ctx = passes.PassContext()
    searched = passes.apply(graph, "smoothquant", ctx=ctx, calibration=calibration)
    assert "alpha searched per group for W8A8" in ctx.notes[0]
    groups = find_groups(graph)
    profiles = activation_profiles(graph, calibration, {g.act for g in groups})
    last = groups[0]
    w8a8 = {a: w8a8_error(profiles[last.act], consumer_weights(last, {}),
                          search_scales([last], profiles, a)[0].get(last, np.ones(32)))
            for a in ALPHAS}
    chosen = search_scales([last], profiles, None)[0][last]
    best = w8a8_error(profiles[last.act], consumer_weights(last, {}), chosen)
    assert best <= min(w8a8.values()) + 1e-12 < max(w8a8.values())
    check_exact("smoothquant", graph, calibration[0])
    assert not npuc.ir.structurally_equal(searched, graph)



@given(norm_fanout(), st.booleans())
def test_given_profiles_smooth_as_measured_ones(case: tuple, shared_norms: bool) -> None:
    """Profiles of two graphs' data merged (`shared_profiles`: an LM's prefill and decode
    graphs) smooth exactly as the profiles the pass measures on all that data itself."""
    from npuc.passes.smoothquant import shared_profiles

    graph, inputs = case
    calls = [inputs, (inputs[0][::-1] * 2,)]
    measured = passes.apply(graph, "smoothquant", calibration=calls, shared_norms=shared_norms)
    profiles = shared_profiles([(graph, calls[:1]), (graph, calls[1:])], shared_norms)
    given_ = passes.apply(graph, "smoothquant", calibration=[(inputs[0] * 0,)],  # not read
                          shared_norms=shared_norms, profiles=profiles)
    assert npuc.printer.print_graph(given_) == npuc.printer.print_graph(measured)
    for a, b in zip((n for n in given_.nodes if n.is_const),
                    (n for n in measured.nodes if n.is_const), strict=True):
        assert np.array_equal(a.data, b.data)


def test_given_profiles_must_cover_every_group() -> None:
    graph, inputs = _zoo("mlp")
    with pytest.raises(ValueError, match=r"no profile given for 1/relu, 3/relu"):
        passes.apply(graph, "smoothquant", calibration=[inputs], profiles={})
