"""mobilequant: exact in float on random fan-outs and real models, ranges stored for every
quantized activation, a torch mirror that matches the interpreter, and a lower W8A8 error than
no transform on a model with outlier channels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import npuc
from npuc import passes
from npuc.errors import UnsupportedError
from npuc.ir import DType, Graph, TensorType, const, graph_input
from npuc.ops import make
from npuc.passes.calibration import value_keys
from npuc.passes.mobilequant import (
    FakeQuant,
    TorchMirror,
    fake_quant_activation,
    fake_quant_error,
    observed_ranges,
    quantized_inputs,
)
from tests.passes.contract import check_exact
from tests.passes.test_smoothquant import ZOO_MODELS, _outlier_mlp, _zoo, norm_fanout

FEW = {"steps": 3, "progress": False}


@settings(max_examples=10)
@given(norm_fanout(), st.booleans())
def test_exact_on_random_fanouts(case: tuple, shared_norms: bool) -> None:
    graph, inputs = case
    result = check_exact("mobilequant", graph, inputs, shared_norms=shared_norms, steps=2,
                         progress=False)
    keys = value_keys(result)
    assert {keys[a] for a in quantized_inputs(result)} == set(result.meta["activation_ranges"])


@pytest.mark.parametrize("shared_norms", [False, True])
@pytest.mark.parametrize("name", ZOO_MODELS)
def test_exact_on_zoo_models(name: str, shared_norms: bool) -> None:
    graph, inputs = _zoo(name)
    result = check_exact("mobilequant", graph, inputs, shared_norms=shared_norms, **FEW)
    ranges = result.meta["activation_ranges"]
    keys = value_keys(result)
    assert {keys[a] for a in quantized_inputs(result)} == set(ranges)
    assert all(lo <= 0 <= hi and lo < hi for lo, hi in ranges.values())
    assert "activation_ranges" not in graph.meta  # the input graph's meta is not touched


@pytest.mark.parametrize("name", ZOO_MODELS)
def test_mirror_matches_interpreter(name: str) -> None:
    graph, inputs = _zoo(name)
    with torch.no_grad():
        got = TorchMirror(graph).run(inputs)
    for a, b in zip(got, npuc.interpret(graph, *inputs), strict=True):
        np.testing.assert_allclose(a.numpy(), b, rtol=1e-5, atol=1e-5)


def test_lowers_w8a8_error_on_outlier_channels() -> None:
    graph, calibration = _outlier_mlp()
    ctx = passes.PassContext(calibration=calibration)
    result = passes.apply(graph, "mobilequant", ctx=ctx, steps=30, progress=False)
    none = fake_quant_error(graph, calibration)[1]
    smooth = passes.apply(graph, "smoothquant", ctx=passes.PassContext(calibration=calibration))
    smoothed = fake_quant_error(smooth, calibration)[1]
    learned = fake_quant_error(result, calibration, result.meta["activation_ranges"])[1]
    assert learned < none * 0.7, (none, smoothed, learned)
    assert learned < smoothed * 1.05, (none, smoothed, learned)  # within rounding noise of init
    assert "(learned)" in ctx.notes[-1] and result.meta["mobilequant"]["steps"] == 30
    # the stored ranges are what the pass measured its own error with
    assert result.meta["mobilequant"]["rel_error"] == pytest.approx(learned, rel=0.05)


def test_ranges_clip_and_hold_zero() -> None:
    x = torch.linspace(-1, 3, 101)
    y = fake_quant_activation(x, torch.tensor(0.5), torch.tensor(2.0))
    assert float(y.min()) == 0 and float(y.max()) == pytest.approx(2.0, abs=1e-6)
    assert len(torch.unique(y)) <= 256
    graph, calibration = _outlier_mlp()
    ranges = observed_ranges(graph, calibration)
    lo, hi = ranges["norm/layer_norm"]
    assert ranges["act/relu"][0] == 0 and lo < 0 < hi


def test_idempotent_by_its_mark_and_checks_options() -> None:
    graph, calibration = _outlier_mlp()
    ctx = passes.PassContext(calibration=calibration)
    once = passes.apply(graph, "mobilequant", ctx=ctx, **FEW)
    assert passes.apply(once, "mobilequant", ctx=ctx, **FEW) is once
    assert "already applied" in ctx.notes[-1]
    with pytest.raises(ValueError, match="steps"):
        passes.apply(graph, "mobilequant", ctx=ctx, steps=-1)


def test_unsupported_op_is_named() -> None:
    x = graph_input("x", TensorType((1, 2, 5, 5), DType.F32))
    w = const(np.ones((3, 2, 3, 3), np.float32))
    conv = make("conv", [x, w], {"stride": (1, 1), "padding": (0, 0, 0, 0), "dilation": (1, 1)},
                loc="features.0")
    graph = Graph((x,), (conv,))
    with pytest.raises(UnsupportedError, match="conv") as info:
        passes.apply(graph, "mobilequant", ctx=passes.PassContext(
            calibration=[(np.ones((1, 2, 5, 5), np.float32),)]))
    assert info.value.loc == "features.0"


def test_fake_quant_groups_start_at_identity() -> None:
    graph, calibration = _outlier_mlp()
    from npuc.passes.smoothquant import find_groups

    with_groups = FakeQuant(graph, find_groups(graph))
    plain = FakeQuant(graph)
    for fq in (with_groups, plain):
        fq.observe(calibration)
    with torch.no_grad():
        a, b = with_groups.run_all(calibration), plain.run_all(calibration)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x[0], y[0])
