"""lowrank: exact at full rank, error monotone in the rank, MACs/params as asked, the refusal rule
shared with merge_linear, the factorised pairs through the npu-int8 pipeline into bit-exact C
(factorised zoo models: tests/passes/test_compressed_zoo.py)."""

from __future__ import annotations

import itertools
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from torch import nn

import npuc
from npuc import passes
from npuc.driver import summarize
from npuc.ir import DType, Graph, Node, TensorType, const, graph_input
from npuc.ops import macs, make
from npuc.passes.calibration import CalibrationError
from npuc.passes.lowrank import decompose, factorisation_shrinks
from tests.codegen.harness import assert_bit_exact
from tests.passes.contract import assert_close, text
from tests.passes.motifs import chains
from tests.strategies import (
    FAMILIES,
    INPUT_BOUND,
    MAX_ELEMENTS,
    Value,
    conv_layer,
    graph_and_inputs,
    linear_layer,
    tensor_types,
    weights,
)

LAYERS = ("conv", "linear")
GRAPH_FAMILIES = ["conv", "linear", "batch_norm", "unary", "binary", "pool", "reshape",
                  "permute"]
PREFIX = ["conv", "linear", "unary", "batch_norm", "pool", "permute"]
# layer stacks with activations and BNs between: random DAGs alone rarely hold a conv with a
# 2-d kernel of 2 or more per axis (spatial factorisation), these often do
MOTIFS = [["conv", "conv", "linear"], ["unary", "batch_norm", "skip"]]
GRAPHS = st.one_of(graph_and_inputs(families=GRAPH_FAMILIES),
                   *(chains(MOTIFS, layout=layout) for layout in ("nchw", "nchw", "ncl", "nlc")))


def spatial_convs(graph: Graph) -> list[Node]:
    return [n for n in factorisable(graph)
            if n.op == "conv" and len(n.shape) == 4 and min(n.inputs[1].shape[2:]) > 1]


@st.composite
def spatial_conv_layer(draw: st.DrawFn, x: Value, loc: str) -> Value:
    """A conv with groups 1 and a kernel of 2 or 3 taps on both axes (what the spatial mode
    factorises; strategies.conv_layer draws one too rarely): stride and dilation 1-2, padding
    up to the kernel's span on each side, asymmetric too, optional bias."""
    n, c, *spatial = x.shape
    kernel, stride, dilation, padding = [], [], [], []
    for size in spatial:
        k, d = draw(st.integers(2, 3)), draw(st.integers(1, 2))
        span = d * (k - 1) + 1
        lo, hi = draw(st.integers(0, span - 1)), draw(st.integers(0, span - 1))
        kernel.append(k)
        dilation.append(d)
        stride.append(draw(st.integers(1, 2)))
        padding += [lo, max(hi, span - size - lo)]  # at least one output pixel
    w = draw(weights((draw(st.integers(1, 8)), c, *kernel), 1.5 / math.sqrt(c * math.prod(kernel))))
    inputs = [x.node, const(w, loc=f"{loc}.weight")]
    if draw(st.booleans()):
        inputs.append(const(draw(weights((len(w),), 1.0)), loc=f"{loc}.bias"))
    attrs = {"stride": stride, "padding": padding, "dilation": dilation, "groups": 1}
    return Value(make("conv", inputs, attrs, loc), x.bound * float(np.abs(w).sum()) + 1)


@st.composite
def spatial_graphs(draw: st.DrawFn) -> tuple[Graph, tuple[np.ndarray, ...]]:
    """x (NCHW) -> conv with a 2-d kernel [-> tanh -> another], the output read directly."""
    x = graph_input("x", draw(tensor_types("nchw")))
    value = draw(spatial_conv_layer(Value(x, INPUT_BOUND), "c0"))
    if draw(st.booleans()):
        squashed = Value(make("tanh", [value.node], loc="t0"), 1.0)
        value = draw(spatial_conv_layer(squashed, "c1"))
    assume(value.size <= MAX_ELEMENTS)
    return Graph((x,), (value.node,)), (draw(weights(x.shape, INPUT_BOUND)),)


def factorisable(graph: Graph) -> list[Node]:
    """The layers lowrank factorises: constant-weight float conv/linear, conv groups 1."""
    return [n for n in graph.nodes if n.op in LAYERS and all(i.is_const for i in n.inputs[1:])
            and n.attrs.get("groups", 1) == 1]


def lowrank(graph: Graph, inputs: tuple, **options: object) -> tuple[Graph, str]:
    """Run the pass; check it left its input alone and that the result verifies."""
    before = text(graph)
    ctx = passes.PassContext()
    result = passes.apply(graph, "lowrank", ctx=ctx, calibration=[inputs], progress=False,
                          **options).verify()
    assert text(graph) == before, "lowrank mutated its input"
    return result, "\n".join(ctx.notes)


def rel_error(a: Graph, b: Graph, inputs: tuple) -> float:
    got, want = npuc.interpret(a, *inputs), npuc.interpret(b, *inputs)
    err = sum(float(np.sum((np.float64(x) - y) ** 2)) for x, y in zip(got, want, strict=True))
    ref = sum(float(np.sum(np.float64(y) ** 2)) for y in want)
    return math.sqrt(err / ref) if ref else math.sqrt(err)


@st.composite
def ending_in_layer(draw: st.DrawFn) -> tuple[Graph, tuple[np.ndarray, ...]]:
    """A short random prefix, then one conv or linear (loc "last") whose output is the graph's
    only output: its output error is the layer's own, on the inputs the prefix gives it."""
    x = graph_input("x", draw(tensor_types(draw(st.sampled_from(["nchw", "ncl", "nlc", "nc"])))))
    value = Value(x, INPUT_BOUND)
    for i in range(draw(st.integers(0, 2))):
        family = FAMILIES[draw(st.sampled_from(PREFIX))]
        if family.applies(value):
            built = draw(family.build(value, (value,), f"p{i}"))
            if built is not None and 0 < built.size <= MAX_ELEMENTS:
                value = built
    conv = value.rank in (3, 4) and draw(st.booleans())
    last = draw((conv_layer if conv else linear_layer)(value, (), "last"))
    return Graph((x,), (last.node,)), (draw(weights(x.shape, INPUT_BOUND)),)


# ------------------------------------------------------------------ contract on random graphs


def check_exact_at_full_rank(graph: Graph, inputs: tuple, mode: str, fit: str) -> str:
    result, note = lowrank(graph, inputs, rank=1.0, allow_growth=True, mode=mode, fit=fit)
    assert_close(npuc.interpret(result, *inputs), npuc.interpret(graph, *inputs))
    layers = sum(n.op in LAYERS for n in graph.nodes)
    assert sum(n.op in LAYERS for n in result.nodes) == layers + len(factorisable(graph))
    return note


@pytest.mark.parametrize("mode", ["channel", "spatial", "auto"])
@given(GRAPHS, st.sampled_from(["outputs", "weights"]))
def test_exact_at_full_rank(mode: str, case: tuple, fit: str) -> None:
    check_exact_at_full_rank(*case, mode, fit)


@given(spatial_graphs(), st.sampled_from(["outputs", "weights"]))
def test_spatial_pairs_exact_at_full_rank(case: tuple, fit: str) -> None:
    note = check_exact_at_full_rank(*case, "spatial", fit)
    assert note.count(" spatial rank ") == len(spatial_convs(case[0])) > 0


@given(ending_in_layer(), st.sampled_from(["outputs", "weights"]))
def test_error_never_rises_with_the_rank(case: tuple, fit: str) -> None:
    """Linear and channel pairs: the layer's output error falls (weakly) as the rank rises, on
    any input (the left factor's columns are orthogonal, so the error is a tail sum)."""
    graph, inputs = case
    last = graph.outputs[0]
    assert last.loc == "last"
    if last not in factorisable(graph):  # grouped: left alone at every rank
        assert text(lowrank(graph, inputs, rank=1, layers=["last"])[0]) == text(graph)
        return
    full = decompose(last, "linear" if last.op == "linear" else "channel").full_rank
    errors = [rel_error(lowrank(graph, inputs, rank=r, mode="channel", fit=fit,
                                allow_growth=True, layers=["last"])[0], graph, inputs)
              for r in range(1, full + 1)]
    for r, (low, high) in enumerate(zip(errors, errors[1:], strict=False), 1):
        assert high <= low + 1e-5, f"rank {r + 1} error {high:.3g} > rank {r} error {low:.3g}"
    assert errors[-1] <= 1e-5


@given(st.integers(1, 6), st.integers(1, 6), st.integers(2, 3), st.integers(2, 3),
       st.integers(0, 2**32 - 1))
def test_spatial_weight_error_never_rises_with_the_rank(o: int, c: int, kh: int, kw: int,
                                                        seed: int) -> None:
    """Spatial pairs: the weight error is monotone; the output error need not be (the
    components' outputs are not orthogonal), so it is not claimed."""
    w = np.random.default_rng(seed).normal(size=(o, c, kh, kw)).astype(np.float32)
    x = graph_input("x", TensorType((1, c, 5, 5), DType.F32))
    conv = make("conv", [x, const(w)], {"stride": [1, 1], "padding": [1, 1, 1, 1],
                                        "dilation": [1, 1], "groups": 1})
    fact = decompose(conv, "spatial")

    def weight_error(rank: int) -> float:
        pair = fact.pair(x, rank)
        a, b = pair.inputs[0].inputs[1].data, pair.inputs[1].data  # (r, c, kh, 1), (o, r, 1, kw)
        return float(np.linalg.norm(np.einsum("tci,otj->ocij", a[..., 0], b[:, :, 0]) - w))

    errors = [weight_error(r) for r in range(1, fact.full_rank + 1)]
    assert all(high <= low + 1e-5 for low, high in zip(errors, errors[1:], strict=False))
    assert errors[-1] <= 1e-4 * np.linalg.norm(w)


@given(GRAPHS, st.sampled_from([0.3, 0.5, 0.8]), st.sampled_from(["macs", "params"]),
       st.sampled_from(["channel", "auto"]))
def test_budget_is_met(case: tuple, budget: float, of: str, mode: str) -> None:
    """Met exactly when in reach; out of reach exactly when rank 1 in every layer keeps more
    than the budget (checked in channel mode, where the search's rank 1 is that of `rank=1`)."""
    graph, inputs = case
    total = getattr(summarize(graph), of)
    floor = getattr(summarize(lowrank(graph, inputs, rank=1, mode=mode)[0]), of)
    try:
        result, note = lowrank(graph, inputs, budget=budget, budget_of=of, mode=mode, steps=3)
    except ValueError as e:
        assert "out of reach" in str(e)
        assert mode == "auto" or floor > budget * total
        return
    if factorisable(graph):
        after = getattr(summarize(result), of)
        assert after <= budget * total, note
        # it stops once the budget is met: the last step saved at most one layer's cost
        layer_cost = max(macs(n) if of == "macs" else n.inputs[1].type.size
                         for n in factorisable(graph))
        assert after > budget * total - layer_cost, note
    else:
        assert "no linear/conv layer" in note and result is graph
    assert mode == "auto" or floor <= budget * total or not factorisable(graph)
    assert summarize(result).macs <= summarize(graph).macs


@given(GRAPHS, st.one_of(st.integers(1, 8), st.sampled_from([0.25, 0.5, 0.9])),
       st.sampled_from(["channel", "spatial", "auto"]))
def test_every_accepted_pair_is_smaller(case: tuple, rank: int | float, mode: str) -> None:
    """No layer grows: each pair has fewer weights and MACs than its layer, or the layer stays
    and the note names it."""
    graph, inputs = case
    result, note = lowrank(graph, inputs, rank=rank, mode=mode)
    before, after = summarize(graph), summarize(result)
    assert after.macs <= before.macs and after.params <= before.params
    factorised = sum(n.op in LAYERS for n in result.nodes) - sum(n.op in LAYERS
                                                                 for n in graph.nodes)
    assert (factorised > 0) == (after.macs < before.macs)
    assert note.count("refused") + factorised == len(factorisable(graph)), note


@pytest.mark.parametrize("op, k", [("linear", 1), ("conv", 1), ("conv", 3)])
def test_acceptance_is_merge_linears_guard(op: str, k: int) -> None:
    """Every pair lowrank would accept (linear -> linear, a k x k conv with r filters -> 1x1
    conv) is one merge_linear leaves alone, and every other one it merges: all shapes up to 6
    channels and rank 6, the boundary r (in + out) == in * out included."""
    rng = np.random.default_rng(k)
    attrs = {} if op == "linear" else {"stride": [1, 1], "padding": [0, 0, 0, 0],
                                       "dilation": [1, 1], "groups": 1}
    for fin, fout, rank in itertools.product(range(1, 7), repeat=3):
        shape = (2, fin) if op == "linear" else (1, fin, 4, 4)
        first_w = (rank, fin) if op == "linear" else (rank, fin, k, k)
        second_w = (fout, rank) if op == "linear" else (fout, rank, 1, 1)
        x = graph_input("x", TensorType(shape, DType.F32))
        first = make(op, [x, const(rng.normal(size=first_w).astype(np.float32))], attrs)
        second = make(op, [first, const(rng.normal(size=second_w).astype(np.float32))], attrs)
        merged = passes.apply(Graph((x,), (second,)), "merge_linear")
        kept = sum(n.op == op for n in merged.nodes) == 2
        assert kept == factorisation_shrinks(fout * fin * k * k, rank * (fin * k * k + fout)), \
            (fin, fout, rank)


@given(st.sampled_from(["linear", "channel", "spatial"]), st.integers(1, 6), st.integers(1, 6),
       st.integers(2, 3), st.integers(0, 2**32 - 1))
def test_weight_fit_is_the_best_rank_r_approximation(mode: str, o: int, c: int, k: int,
                                                     seed: int) -> None:
    """fit="weights": the pair at rank r is w's best rank-r approximation in its mode's matrix
    (Eckart-Young: the weight error is the tail of numpy's singular values)."""
    rng = np.random.default_rng(seed)
    shape = (o, c) if mode == "linear" else (o, c, k, k)
    w = rng.normal(size=shape).astype(np.float32)
    x = graph_input("x", TensorType((1, c) if mode == "linear" else (1, c, 4, 4), DType.F32))
    attrs = {} if mode == "linear" else {"stride": [1, 1], "padding": [1, 1, 1, 1],
                                         "dilation": [1, 1], "groups": 1}
    fact = decompose(make("linear" if mode == "linear" else "conv", [x, const(w)], attrs), mode)
    w64 = w.astype(np.float64)
    matrix = w64.transpose(1, 2, 0, 3).reshape(c * k, o * k) if mode == "spatial" \
        else w64.reshape(o, -1)
    s = np.linalg.svd(matrix, compute_uv=False)
    for rank in range(1, fact.full_rank + 1):
        pair = fact.pair(x, rank)
        a, b = pair.inputs[0].inputs[1].data.astype(np.float64), pair.inputs[1].data
        if mode == "spatial":
            rebuilt = np.einsum("tci,otj->ocij", a[..., 0], b[:, :, 0])
        else:
            rebuilt = (b.reshape(o, rank) @ a.reshape(rank, -1)).reshape(shape)
        assert np.linalg.norm(rebuilt - w64) == pytest.approx(
            np.sqrt(np.sum(s[rank:] ** 2)), rel=1e-4, abs=1e-4)


# ------------------------------------------------------------------ guards, options, the note


def _mlp() -> tuple[Graph, tuple[np.ndarray]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 8)).eval()
    x = torch.randn(4, 16)
    return npuc.capture(model, (x,)), (x.numpy(),)


def test_a_rank_that_would_grow_the_layer_is_refused_by_name() -> None:
    graph, inputs = _mlp()
    # Linear(16, 16): rank 8 has 8 * 32 = 256 weights, not fewer than 256; rank 7 has 224
    result, note = lowrank(graph, inputs, rank=8, layers=["0"])
    assert sum(n.op == "linear" for n in result.nodes) == 2
    assert re.search(r"^\s+0\s+refused: rank 8/16 would not shrink it", note, re.M), note
    result, note = lowrank(graph, inputs, rank=7, layers=["0"])
    assert sum(n.op == "linear" for n in result.nodes) == 3
    assert re.search(r"^\s+0\s+linear\s+rank 7/16\s+MACs 1,024 -> 896, weights 256 -> 224", note,
                     re.M), note


def test_grouped_convs_are_left_alone_and_named() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.Conv2d(8, 8, 3, groups=8)).eval()
    x = torch.randn(1, 4, 6, 6)
    result, note = lowrank(npuc.capture(model, (x,)), (x.numpy(),), rank=2, mode="channel")
    assert "left alone: 1 grouped/depthwise conv or conv_transpose (1)" in note
    assert [n.inputs[1].shape for n in result.nodes if n.op == "conv"] == \
        [(2, 4, 3, 3), (8, 2, 1, 1), (8, 1, 3, 3)]


def test_note_matches_the_graphs() -> None:
    """The MACs, params and output error the note reports are those of the graphs."""
    graph, inputs = _mlp()
    result, note = lowrank(graph, inputs, rank=0.25)
    numbers = re.search(r"MACs ([\d,]+) -> ([\d,]+), params ([\d,]+) -> ([\d,]+); relative "
                        r"output error on the calibration data ([\d.]+)", note)
    assert numbers, note
    got = [int(v.replace(",", "")) for v in numbers.groups()[:4]]
    assert got == [summarize(graph).macs, summarize(result).macs, summarize(graph).params,
                   summarize(result).params]
    assert float(numbers.group(5)) == pytest.approx(rel_error(result, graph, inputs), abs=1e-4)


def test_options_are_checked() -> None:
    graph, inputs = _mlp()
    for options in [{}, {"rank": 2, "energy": 0.9}, {"rank": 0}, {"rank": 1.5},
                    {"energy": 0.0}, {"budget": 2.0}, {"max_error": 0.1, "rank": 2},
                    {"budget": 0.5, "steps": 0}]:
        with pytest.raises(ValueError, match="lowrank"):
            lowrank(graph, inputs, **options)
    with pytest.raises(TypeError, match="mode"):
        lowrank(graph, inputs, rank=2, mode="diagonal")
    with pytest.raises(CalibrationError, match="lowrank"):
        passes.apply(graph, "lowrank", rank=2)
    with pytest.raises(ValueError, match="out of reach"):
        lowrank(graph, inputs, budget=0.01)
    # a glob that matches no layer is a typo, not "nothing to factorise"
    with pytest.raises(ValueError, match=r"lowrank: option layers=\['fc\.\*'\] matches no "
                                         r"linear/conv layer.*: 0, 2"):
        lowrank(graph, inputs, rank=2, layers=["fc.*"])


def test_energy_keeps_that_fraction_of_the_singular_values() -> None:
    graph, inputs = _mlp()
    layer = factorisable(graph)[0]
    fact = decompose(layer, "linear")
    energy = np.cumsum(fact.s ** 2) / np.sum(fact.s ** 2)
    r = fact.energy_rank(0.5)
    assert energy[r - 1] >= 0.5 > (energy[r - 2] if r > 1 else 0)


def test_max_error_bounds_the_search() -> None:
    graph, inputs = _mlp()
    free, _ = lowrank(graph, inputs, budget=0.3)
    bound = rel_error(free, graph, inputs) / 3
    result, note = lowrank(graph, inputs, budget=0.3, max_error=bound)
    assert rel_error(result, graph, inputs) <= bound + 1e-6
    assert "max_error reached, budget not met" in note


@pytest.mark.parametrize("budget, steps", [(0.9, 1), (0.5, 3)])
def test_budget_search_does_not_overshoot(budget: float, steps: int) -> None:
    """Four equal 32x32 linears (one rank step: 1/64 of the MACs): the search ends within one
    rank step of the budget, however many layers stepped in the round; a step chosen for the
    round's whole gap is chosen again once other layers' steps have closed part of it."""
    rng = np.random.default_rng(0)
    x = graph_input("x", TensorType((64, 32), DType.F32))
    h = x
    for k in range(4):
        w = (rng.normal(size=(32, 32)) * np.linspace(1, 0.05, 32)).astype(np.float32)
        h = make("relu", [make("linear", [h, const(w), const(np.zeros(32, np.float32))],
                                loc=f"l{k}")])
    graph = Graph((x,), (h,))
    inputs = (rng.normal(size=(64, 32)).astype(np.float32),)
    result, note = lowrank(graph, inputs, budget=budget, steps=steps)
    kept = summarize(result).macs / summarize(graph).macs
    assert budget - 1 / 64 < kept <= budget, note


def test_output_fit_beats_the_weight_fit_on_its_calibration_data() -> None:
    """Correlated inputs (a low-dimensional signal): the output-fitted SVD is the better
    rank-r map on them."""
    torch.manual_seed(0)
    model = nn.Linear(32, 32).eval()
    x = torch.randn(64, 4) @ torch.randn(4, 32) + 0.01 * torch.randn(64, 32)
    graph, inputs = npuc.capture(model, (x,)), (x.numpy(),)
    errors = {fit: rel_error(lowrank(graph, inputs, rank=4, fit=fit)[0], graph, inputs)
              for fit in ("outputs", "weights")}
    assert errors["outputs"] < 0.1 * errors["weights"], errors


# ------------------------------------------------------------------ through the pipeline, into C


class _Net(nn.Module):
    """conv+BN (spatial), strided conv (channel), two linears (channel)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.fc1, self.fc2 = nn.Linear(32, 64), nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return self.fc2(torch.relu(self.fc1(x.mean(dim=(2, 3)))))


def with_lowrank(target: str, *steps: tuple[str, dict]) -> list:
    """The target's pipeline with the lowrank steps after BN folding (so they factorise the
    folded weights), merge_linear and everything else after them."""
    pipeline = list(npuc.targets.get(target).pipeline)
    at = pipeline.index("fold_batchnorm") + 1
    return pipeline[:at] + list(steps) + pipeline[at:]


def layer_weights(graph: Graph, ops: tuple[str, ...]) -> list[tuple[int, ...]]:
    return sorted(n.inputs[1].shape for n in graph.nodes if n.op in ops)


def test_pairs_survive_npu_int8_and_emit_bit_exact_c(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, x = _Net().eval(), torch.randn(2, 3, 8, 8)
    calibration = [(torch.randn(2, 3, 8, 8),) for _ in range(4)]
    cm = npuc.compile(model, (x,), calibration=calibration, passes=with_lowrank(
        "npu-int8", ("lowrank", {"layers": ["conv1"], "mode": "spatial", "rank": 4}),
        ("lowrank", {"layers": ["conv2", "fc*"], "mode": "channel", "rank": 0.25})))
    factorised = cm.stages["lowrank#2"]
    # conv1 spatial rank 4; conv2 rank 8 of 32, fc1 8 of 32, fc2 round(2.5) = 2 of 10
    assert layer_weights(factorised, LAYERS) == sorted([
        (4, 3, 3, 1), (16, 4, 1, 3), (8, 16, 3, 3), (32, 8, 1, 1), (8, 32), (64, 8), (2, 64),
        (10, 2)])
    assert layer_weights(cm.ir, ("qconv", "qlinear")) == layer_weights(factorised, LAYERS)
    merge = next(r for r in cm.records if r.name == "merge_linear")
    assert "merged 0 pairs" in merge.notes[0]
    assert_bit_exact(cm, [x.numpy()], tmp_path)


@pytest.mark.parametrize("at", ["start", "end"])
def test_pairs_survive_merge_linear_in_any_order(at: str) -> None:
    """By construction, not pass order: lowrank first in the pipeline (merge_linear right
    after it, twice) or last before quantize, every factorised pair reaches the integer graph."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 48), nn.ReLU(), nn.Linear(48, 10)).eval()
    x = torch.randn(4, 32)
    step = ("lowrank", {"rank": 4, "progress": False})
    pipeline = list(npuc.targets.get("npu-int8").pipeline)
    if at == "start":
        pipeline = [step, "merge_linear", *pipeline]
    else:
        pipeline.insert(pipeline.index("quantize"), step)
        pipeline.insert(pipeline.index("quantize"), "merge_linear")
    cm = npuc.compile(model, (x,), calibration=[(x,)], passes=pipeline)
    assert layer_weights(cm.ir, ("qlinear",)) == sorted([(4, 32), (48, 4), (4, 48), (10, 4)])
