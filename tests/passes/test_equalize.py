"""equalize: exact on random layer chains and real models; equalized pairs end balanced."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import npuc
from npuc.ir import DType, Graph, Node, TensorType, const, graph_input
from npuc.ops import make
from npuc.passes.equalize import range_metrics
from tests.models import ZOO
from tests.passes.contract import assert_close, check_exact, text
from tests.passes.motifs import chains
from tests.strategies import MAX_CHANNELS, MAX_ELEMENTS, tensor_types, weights

TOLERANCE = 1e-3  # the pass's default

# ------------------------------------------------------------------ random chains


@st.composite
def _layer(draw: st.DrawFn, x: Node, loc: str) -> Node:
    """A conv (groups from 1 to depthwise) on NCL/NCHW values, else a linear; output channels
    scaled by factors up to 30x apart, so that there is something to equalize."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if len(x.shape) in (3, 4) and draw(st.integers(0, 3)):
        c, nsp = x.shape[1], len(x.shape) - 2
        groups = draw(st.sampled_from(sorted({1, c, *(g for g in range(1, c + 1) if c % g == 0)})))
        cout = groups * draw(st.integers(1, max(1, MAX_CHANNELS // groups)))
        k = draw(st.integers(1, min(3, *x.shape[2:])))
        shape = (cout, c // groups) + (k,) * nsp
        attrs = {"stride": [draw(st.integers(1, 2))] * nsp, "dilation": [1] * nsp,
                 "padding": [draw(st.integers(0, k // 2))] * (2 * nsp), "groups": groups}
        op = "conv"
    else:
        cout, op, attrs = draw(st.integers(1, MAX_CHANNELS)), "linear", {}
        shape = (cout, x.shape[-1])
    fan_in = math.prod(shape[1:])
    w = rng.uniform(-1, 1, shape) / math.sqrt(fan_in)
    w *= 10 ** rng.uniform(-0.75, 0.75, (cout,) + (1,) * (len(shape) - 1))
    inputs = [x, const(w.astype(np.float32), loc=f"{loc}.weight")]
    if draw(st.booleans()):
        offset = draw(st.sampled_from([0.0, 0.0, 3.0]))  # large positive biases get absorbed
        inputs.append(const((rng.uniform(-1, 1, cout) + offset).astype(np.float32),
                            loc=f"{loc}.bias"))
    return make(op, inputs, attrs, loc)


@st.composite
def _activation(draw: st.DrawFn, x: Node, axis: int, loc: str) -> Node:
    """A positively homogeneous activation (or, sometimes, one that is not: gelu)."""
    kind = draw(st.sampled_from(["relu", "relu6", "clamp", "leaky_relu", "prelu", "bound",
                                 "gelu"]))
    channels = x.shape[axis]
    if kind == "relu6":
        return make("clamp", [x], {"min": 0.0, "max": 6.0}, loc)
    if kind == "clamp":
        lo = draw(st.sampled_from([-np.inf, -1.0, 0.0, 0.5]))
        hi = draw(st.sampled_from([0.5, 3.0, np.inf]))
        return make("clamp", [x], {"min": lo, "max": hi}, loc)
    if kind == "leaky_relu":
        return make("leaky_relu", [x], {"alpha": draw(st.sampled_from([0.1, -0.2, 0.01]))}, loc)
    if kind == "prelu":
        count = draw(st.sampled_from([1, x.shape[1] if len(x.shape) > 1 else 1]))
        slope = const(draw(weights((count,), 0.5)), loc=f"{loc}.weight")
        return make("prelu", [x, slope], loc=loc)
    if kind == "bound":  # maximum/minimum with a per-channel constant
        shape = (channels,) + (1,) * (len(x.shape) - 1 - axis)
        c = const(draw(weights(shape, lo=-1.0, hi=3.0)))
        operands = [x, c] if draw(st.booleans()) else [c, x]
        return make(draw(st.sampled_from(["maximum", "minimum"])), operands, loc=loc)
    return make(kind, [x], loc=loc)


@st.composite
def layer_chains(draw: st.DrawFn, bounded_input: bool = False
                 ) -> tuple[Graph, tuple[np.ndarray, ...]]:
    """x -> (layer -> 0-2 activations) x 1-4, sometimes with an intermediate output."""
    x = graph_input("x", draw(tensor_types(draw(st.sampled_from(["nchw", "ncl", "nc", "nlc"])))))
    value, outputs = x, []
    if bounded_input:  # what bias absorption needs to bound the first layer's input
        value = draw(st.sampled_from([make("sigmoid", [x]),
                                      make("clamp", [x], {"min": 0.0, "max": 6.0})]))
    for i in range(draw(st.integers(1, 4))):
        layer = draw(_layer(value, f"l{i}"))
        if not 0 < layer.type.size <= MAX_ELEMENTS:
            break
        value = layer
        axis = len(layer.shape) - 1 if layer.op == "linear" else 1
        for j in range(draw(st.integers(0, 2))):
            value = draw(_activation(value, axis, f"a{i}.{j}"))
        if draw(st.integers(0, 6)) == 0:
            outputs.append(value)
    outputs.append(value)
    graph = Graph((x,), tuple(dict.fromkeys(outputs)))
    return graph, (draw(weights(x.shape, 2.0)),)


# ------------------------------------------------------------------ an independent pair finder

HOMOGENEOUS = ("relu", "leaky_relu", "prelu", "clamp")


def _per_channel_const(node: Node, value: Node, axis: int) -> bool:
    other = [i for i in node.inputs if i is not value]
    if len(other) != 1 or not other[0].is_const or node.shape != value.shape:
        return False
    full = (1,) * (len(value.shape) - other[0].type.rank) + other[0].shape
    return all(n == 1 or i == axis for i, n in enumerate(full))


def pairs(graph: Graph) -> list[tuple[Node, Node]]:
    """(first, second) layers joined by homogeneous activations read by one op each."""
    found = []
    for first in (n for n in graph.nodes if n.op in ("conv", "linear")):
        axis = len(first.shape) - 1 if first.op == "linear" else 1
        value = first
        while len(graph.users[value]) == 1 and value not in graph.outputs:
            reader = graph.users[value][0]
            if reader.op == first.op and reader.inputs[0] is value:
                found.append((first, reader))
                break
            if not (reader.op in HOMOGENEOUS and reader.inputs[0] is value) and not (
                    reader.op in ("maximum", "minimum")
                    and _per_channel_const(reader, value, axis)):
                break
            value = reader
    return found


def ranges(first: Node, second: Node) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel max |w|: first's output channels, second's input channels."""
    w1, w2 = (np.abs(n.inputs[1].data.astype(np.float64)) for n in (first, second))
    r1 = w1.reshape(len(w1), -1).max(axis=1)
    if second.op == "linear":
        return r1, w2.max(axis=0)
    groups = second.attrs["groups"]
    grouped = w2.reshape((groups, len(w2) // groups) + w2.shape[1:])
    return r1, grouped.max(axis=(1,) + tuple(range(3, grouped.ndim))).reshape(-1)


@given(layer_chains())
def test_exact_and_balanced_on_random_chains(case: tuple) -> None:
    graph, inputs = case
    result = check_exact("equalize", graph, inputs)
    assert len(pairs(result)) == len(pairs(graph)), "a pair was broken up"
    for first, second in pairs(result):
        r1, r2 = ranges(first, second)
        live = (r1 > 0) & (r2 > 0)
        assert np.allclose(r1[live] / r2[live], 1, atol=3 * TOLERANCE), "unbalanced pair"


@given(st.one_of(layer_chains(bounded_input=True),
                 chains([["conv", "linear"], ["unary", "prelu", "skip"], ["conv", "linear"]],
                        layout=None)))
def test_exact_with_bias_absorption(case: tuple) -> None:
    graph, inputs = case
    check_exact("equalize", graph, inputs, absorb_bias=True)


# ------------------------------------------------------------------ explicit cases


def _const(*shape: int, seed: int, scale: float = 1.0) -> Node:
    return const((np.random.default_rng(seed).normal(size=shape) * scale).astype(np.float32))


def _conv(x: Node, cout: int, k: int = 1, groups: int = 1, seed: int = 0,
          spread: bool = False) -> Node:
    w = _const(cout, x.shape[1] // groups, k, k, seed=seed).data.copy()
    if spread:  # channels 100x apart
        w *= np.logspace(-1, 1, cout, dtype=np.float32)[:, None, None, None]
    attrs = {"stride": [1, 1], "padding": [k // 2] * 4, "dilation": [1, 1], "groups": groups}
    return make("conv", [x, const(w), _const(cout, seed=seed + 1)], attrs)


def _linear(x: Node, out: int, seed: int = 0, bias: float = 0.0) -> Node:
    w = _const(out, x.shape[-1], seed=seed).data * np.logspace(-1, 1, out)[:, None]
    b = _const(out, seed=seed + 1).data * 0.1 + bias
    return make("linear", [x, const(w.astype(np.float32)), const(b.astype(np.float32))])


NCHW = TensorType((1, 4, 6, 6), DType.F32)


def _case(name: str) -> Graph:
    x = graph_input("x", NCHW)
    first = _conv(x, 6, 3, spread=True)
    mid = {"relu": lambda v: make("relu", [v]),
           "relu6": lambda v: make("clamp", [v], {"min": 0.0, "max": 6.0}),
           "gelu": lambda v: make("gelu", [v]),
           "maximum per row": lambda v: make("maximum", [v, _const(6, 1, seed=3)]),
           "identity": lambda v: v}[name.split(": ")[-1]]
    out = _conv(mid(first), 5, seed=2)
    if name.startswith("second reader"):
        return Graph((x,), (out, first))
    if name.startswith("conv -> linear"):
        out = _linear(mid(first), 5)
    return Graph((x,), (out,))


@pytest.mark.parametrize("name, options, changes", [
    ("relu", {}, True),
    ("identity", {}, True),
    ("relu6", {}, True),
    ("relu6", {"split_clamp": False}, False),
    ("gelu", {}, False),  # not positively homogeneous
    ("maximum per row", {}, False),  # a bound that is not per channel
    ("second reader: relu", {}, False),
    ("conv -> linear: relu", {}, False),  # channels on different axes
])
def test_matches_and_guards(name: str, options: dict, changes: bool) -> None:
    graph = _case(name).verify()
    inputs = (np.random.default_rng(0).normal(size=NCHW.shape).astype(np.float32),)
    result = check_exact("equalize", graph, inputs, **options)
    assert (text(result) != text(graph)) == changes
    if name == "relu6" and changes:  # the clamp's bound became a per-channel constant
        assert [n.op for n in result.nodes if n.op in ("relu", "minimum", "clamp")] == \
            ["relu", "minimum"]


def test_depthwise_chain_balances_both_pairs() -> None:
    x = graph_input("x", NCHW)
    dw = _conv(make("relu", [_conv(x, 8, spread=True)]), 8, 3, groups=8, seed=1)
    graph = Graph((x,), (_conv(make("relu", [dw]), 4, seed=2),))
    inputs = (np.random.default_rng(0).normal(size=NCHW.shape).astype(np.float32),)
    result = check_exact("equalize", graph, inputs)
    assert len(pairs(result)) == 2
    for first, second in pairs(result):
        r1, r2 = ranges(first, second)
        np.testing.assert_allclose(r1 / r2, 1, atol=3 * TOLERANCE)
    assert range_metrics(pairs(result))[0] < range_metrics(pairs(graph))[0]


def _absorb_case(bound: str) -> Graph:
    """x -> [sigmoid] -> linear (bias 40) -> relu -> linear."""
    x = graph_input("x", TensorType((2, 6), DType.F32))
    src = make("sigmoid", [x]) if bound == "sigmoid" else x
    return Graph((x,), (_linear(make("relu", [_linear(src, 6, bias=40.0)]), 3, seed=5),))


@pytest.mark.parametrize("bound, absorbs", [("sigmoid", True), ("none", False)])
def test_bias_absorption(bound: str, absorbs: bool) -> None:
    graph = _absorb_case(bound)
    inputs = (np.random.default_rng(0).normal(size=(2, 6)).astype(np.float32) * 3,)
    result = check_exact("equalize", graph, inputs, absorb_bias=True)
    plain = npuc.passes.apply(graph, "equalize")
    assert (text(result) != text(plain)) == absorbs
    if absorbs:  # the sigmoid bounds the input to [0, 1]: no positive offset is left
        first = next(n for n in result.nodes if n.op == "linear")
        w, b = first.inputs[1].data.astype(np.float64), first.inputs[2].data.astype(np.float64)
        floor = b + np.minimum(w, 0).sum(axis=1)
        assert np.all(floor <= 1e-3 * (np.abs(b) + np.abs(w).sum(axis=1)))
        ctx = npuc.passes.PassContext()
        npuc.passes.apply(graph, "equalize", ctx=ctx, absorb_bias=True)
        assert ctx.notes[0].endswith("absorbed bias in 6 channels")


@pytest.mark.parametrize("kernel, absorbed", [(1, 6), (3, 0)])
def test_bias_absorption_skips_padded_layers(kernel: int, absorbed: int) -> None:
    """sigmoid -> 1x1 conv (bias 5) -> relu -> conv: into a 1x1 conv the offset moves; into a
    3x3 conv with padding 1 it cannot (the padded zeros would not be shifted)."""
    x = graph_input("x", NCHW)
    first = make("conv", [make("sigmoid", [x]), _const(6, 4, 1, 1, seed=1),
                          const(np.full(6, 5, np.float32))],
                 {"stride": [1, 1], "padding": [0] * 4, "dilation": [1, 1], "groups": 1})
    graph = Graph((x,), (_conv(make("relu", [first]), 3, kernel, seed=2),))
    inputs = (np.random.default_rng(0).normal(size=NCHW.shape).astype(np.float32),)
    ctx = npuc.passes.PassContext()
    npuc.passes.apply(graph, "equalize", ctx=ctx, absorb_bias=True)
    assert ctx.notes[0].endswith(f"absorbed bias in {absorbed} channels")
    check_exact("equalize", graph, inputs, absorb_bias=True)


# ------------------------------------------------------------------ real models


@pytest.mark.parametrize("name", ["mobilenetv2_block", "kws_cnn"])
def test_real_models_after_fold_batchnorm(name: str) -> None:
    model, inputs = ZOO[name]()
    graph = npuc.capture(model, inputs)
    arrays = tuple(t.numpy() for t in inputs)
    folded = npuc.passes.apply(graph, "fold_batchnorm")
    ctx = npuc.passes.PassContext()
    result, _ = npuc.passes.run_pipeline(graph, ["fold_batchnorm", "equalize"], ctx, verify=True)
    with torch.no_grad():
        assert_close(npuc.interpret(result, *arrays), (model(*inputs).numpy(),))
    check_exact("equalize", folded, arrays)
    (ratio_before, precision_before), (ratio_after, precision_after) = (
        range_metrics(pairs(g)) for g in (folded, result))
    assert len(pairs(folded)) == len(pairs(result)) == {"mobilenetv2_block": 2, "kws_cnn": 5}[name]
    assert ratio_after < ratio_before and precision_after > precision_before
    print(ctx.notes[-1])
