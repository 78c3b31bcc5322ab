"""merge_linear: exact on random layer stacks and real models; merges exactly what it claims."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import npuc
from npuc.ir import DType, Graph, Node, TensorType, const, graph_input
from npuc.ops import make
from tests.models import ZOO
from tests.passes.contract import assert_close, check_exact
from tests.passes.motifs import chains
from tests.strategies import (
    INPUT_BOUND,
    MAX_CHANNELS,
    MAX_ELEMENTS,
    Value,
    conv_layer,
    linear_layer,
    tensor_types,
    weights,
)

LAYERS = ("conv", "conv_transpose", "linear")
AFFINE = ("mul", "div", "add", "sub", "neg")

# ------------------------------------------------------------------ random stacks of linear maps


def _pointwise(draw: st.DrawFn, v: Value, loc: str) -> Value | None:
    """A 1x1 conv, grouped or not, usually stride 1."""
    if v.rank not in (3, 4):
        return None
    c = v.shape[1]
    groups = draw(st.sampled_from([g for g in range(1, c + 1) if c % g == 0]))
    cout = groups * draw(st.integers(1, max(1, MAX_CHANNELS // groups)))
    nsp = v.rank - 2
    w = draw(weights((cout, c // groups) + (1,) * nsp, 1.5 / math.sqrt(c // groups)))
    inputs = [v.node, const(w)]
    if draw(st.booleans()):
        inputs.append(const(draw(weights((cout,), 1.0))))
    stride = [draw(st.sampled_from([1, 1, 2])) for _ in range(nsp)]
    attrs = {"stride": stride, "padding": [0] * (2 * nsp), "dilation": [1] * nsp,
             "groups": groups}
    return Value(make("conv", inputs, attrs, loc), v.bound * 2 + 1)


def _affine(draw: st.DrawFn, v: Value, loc: str) -> Value:
    """mul/div/add/sub/neg by a constant along one axis (often a channel axis) or a scalar."""
    op = draw(st.sampled_from(AFFINE))
    if op == "neg":
        return Value(make("neg", [v.node], loc=loc), v.bound)
    axis = draw(st.sampled_from(sorted({1 % v.rank, v.rank - 1, 0})))
    shape = [1] * v.rank
    shape[axis] = v.shape[axis]
    if draw(st.booleans()):
        shape = shape[draw(st.integers(0, axis)):]  # fewer leading unit axes
    if draw(st.integers(0, 4)) == 0:
        shape = []
    c = draw(weights(shape, lo=0.5, hi=2.0)) * draw(st.sampled_from([1, -1]))
    operands = [v.node, const(c.astype(np.float32))]
    if op != "div" and draw(st.booleans()):
        operands.reverse()
    return Value(make(op, operands, loc=loc), v.bound * 2 + 2)


def _pad(draw: st.DrawFn, v: Value, loc: str) -> Value | None:
    """Zero (or nonzero-valued) padding, mostly of spatial axes, sometimes cropping."""
    if v.rank < 3:
        return None
    pads = []
    for i, size in enumerate(v.shape):
        if i < 2 and draw(st.integers(0, 5)):
            pads += [0, 0]
        else:
            pads += [draw(st.integers(-min(1, size - 1), 2)), draw(st.integers(0, 2))]
    value = draw(st.sampled_from([0.0, 0.0, 0.5]))
    return Value(make("pad", [v.node], {"pads": pads, "value": value}, loc), v.bound + 1)


def _move(draw: st.DrawFn, v: Value, loc: str) -> Value:
    """A reshape or permute that keeps channels whole: NCHW <-> NHWC, token flattening..."""
    s = v.shape
    options: list[tuple[str, list[int]]] = {
        4: [("permute", [0, 2, 3, 1]), ("permute", [0, 3, 1, 2]),
            ("reshape", [s[0], s[1], math.prod(s[2:])])],
        3: [("permute", [0, 2, 1]), ("reshape", [s[0] * s[1], s[-1]])],
        2: [("reshape", [s[0], s[1], 1]), ("reshape", [s[0], s[1], 1, 1])],
    }.get(v.rank, [("reshape", [1, *s])])
    op, arg = draw(st.sampled_from(options))
    attrs = {"perm": arg} if op == "permute" else {"shape": arg}
    return Value(make(op, [v.node], attrs, loc), v.bound)


def _relu(draw: st.DrawFn, v: Value, loc: str) -> Value:
    return Value(make("relu", [v.node], loc=loc), v.bound)


def _layer(builder):  # noqa: ANN001, ANN202
    def build(draw: st.DrawFn, v: Value, loc: str) -> Value | None:
        if builder is conv_layer and v.rank not in (3, 4):
            return None
        return draw(builder(v, (), loc))

    return build


STEPS = {"conv": _layer(conv_layer), "pointwise": _pointwise, "linear": _layer(linear_layer),
         "affine": _affine, "pad": _pad, "move": _move, "relu": _relu}


@st.composite
def linear_stacks(draw: st.DrawFn, max_steps: int = 6) -> tuple[Graph, tuple[np.ndarray, ...]]:
    """x -> up to `max_steps` of conv/1x1 conv/linear/affine/pad/move/relu, sometimes with an
    intermediate value as a second output (a second reader)."""
    x = graph_input("x", draw(tensor_types(draw(st.sampled_from(["nchw", "ncl", "nlc", "nc"])))))
    value, outputs = Value(x, INPUT_BOUND), []
    weights_ = ["conv", "pointwise", "pointwise", "linear", "linear", "affine", "affine", "pad",
                "move", "relu"]
    for i in range(draw(st.integers(1, max_steps))):
        built = STEPS[draw(st.sampled_from(weights_))](draw, value, f"s{i}")
        if built is None or not 0 < built.size <= MAX_ELEMENTS:
            continue
        value = built
        if draw(st.integers(0, 6)) == 0:
            outputs.append(value.node)
    outputs.append(value.node)
    return Graph((x,), tuple(dict.fromkeys(outputs))), (draw(weights(x.shape, INPUT_BOUND)),)


# ------------------------------------------------------------------ what must not be left


def _per_channel(c: Node, shape: tuple[int, ...], axis: int) -> bool:
    if not c.is_const or c.type.rank > len(shape):
        return False
    full = (1,) * (len(shape) - c.type.rank) + c.shape
    return all(n == 1 or (i == axis and n == shape[i]) for i, n in enumerate(full))


def _affine_of(node: Node, value: Node, axis: int) -> str | None:
    """"scale" or "shift" if node is value times/plus a per-channel constant along axis."""
    if node.op not in AFFINE or node.shape != value.shape:
        return None
    if node.op == "neg":
        return "scale"
    other = [i for i in node.inputs if i is not value]
    if len(other) != 1 or not _per_channel(other[0], value.shape, axis):
        return None
    if node.op == "div":
        return "scale" if node.inputs[0] is value and np.all(other[0].data != 0) else None
    return "scale" if node.op == "mul" else "shift"


def _axis(layer: Node) -> int:
    return len(layer.shape) - 1 if layer.op == "linear" else 1


def _is_1x1(conv: Node) -> bool:
    return all(k == 1 for k in conv.inputs[1].shape[2:])


def leftovers(graph: Graph) -> list[str]:
    """Direct patterns merge_linear (with allow_growth) must have merged."""
    left = []
    for node in graph.nodes:
        readers = graph.users[node]
        if len(readers) != 1 or node in graph.outputs:
            continue
        reader = readers[0]
        layer = node.op in LAYERS and all(i.is_const for i in node.inputs[1:])
        if layer and _affine_of(reader, node, _axis(node)):
            left.append(f"{reader.op} after {node.op}")
        if layer and node.op == reader.op == "linear":
            left.append("linear -> linear")
        if layer and node.op == reader.op == "conv" and all(i.is_const for i in reader.inputs[1:]):
            if _is_1x1(reader) and not any(reader.attrs["padding"]):
                left.append("conv -> 1x1 conv")
            bias_free = len(node.inputs) < 3 or not np.any(node.inputs[2].data)
            if _is_1x1(node) and set(node.attrs["stride"]) == {1} and \
                    not any(node.attrs["padding"]) and \
                    (max(reader.attrs["padding"]) <= 0 or bias_free):
                left.append("1x1 conv -> conv")
        if node.op == "pad" and reader.op == "conv" and not any(node.attrs["pads"][:4]) and \
                (node.attrs["value"] == 0 or max(node.attrs["pads"]) <= 0) and \
                not any(q < 0 < p for q, p in zip(node.attrs["pads"][4:], reader.attrs["padding"],
                                                  strict=True)):
            left.append("pad -> conv")
        if reader.op in LAYERS and all(i.is_const for i in reader.inputs[1:]) and \
                reader.inputs[0] is node:
            for value in node.inputs:
                kind = _affine_of(node, value, _axis(reader)) if not value.is_const else None
                exact = reader.op == "linear" or (reader.op == "conv"
                                                  and not any(reader.attrs["padding"]))
                if kind == "scale" or (kind == "shift" and exact):
                    left.append(f"{node.op} before {reader.op}")
    return left


@given(st.one_of(linear_stacks(), chains([["conv", "linear"], ["binary", "pad", "skip"],
                                          ["conv", "linear", "reshape", "permute"]],
                                         layout=None)))
def test_exact_and_complete_on_random_stacks(case: tuple) -> None:
    graph, inputs = case
    result = check_exact("merge_linear", graph, inputs, allow_growth=True)
    assert not leftovers(result)


def _weight_elements(graph: Graph) -> int:
    return sum(n.inputs[1].type.size for n in graph.nodes if n.op in LAYERS)


@given(linear_stacks())
def test_default_never_grows_weights(case: tuple) -> None:
    graph, inputs = case
    result = check_exact("merge_linear", graph, inputs)
    assert _weight_elements(result) <= _weight_elements(graph)


# ------------------------------------------------------------------ explicit merges and guards


def _rng_const(*shape: int, seed: int = 0) -> Node:
    return const(np.random.default_rng(seed).normal(size=shape).astype(np.float32))


def _conv(x: Node, cout: int, k: int = 1, padding: int = 0, stride: int = 1, bias: bool = True,
          groups: int = 1, seed: int = 0) -> Node:
    nsp = len(x.shape) - 2
    inputs = [x, _rng_const(cout, x.shape[1] // groups, *(k,) * nsp, seed=seed)]
    if bias:
        inputs.append(_rng_const(cout, seed=seed + 100))
    return make("conv", inputs, {"stride": [stride] * nsp, "padding": [padding] * (2 * nsp),
                                 "dilation": [1] * nsp, "groups": groups})


def _linear(x: Node, out: int, bias: bool = True, seed: int = 0) -> Node:
    inputs = [x, _rng_const(out, x.shape[-1], seed=seed)]
    if bias:
        inputs.append(_rng_const(out, seed=seed + 100))
    return make("linear", inputs)


def _run(graph: Graph, **options: bool) -> Graph:
    rng = np.random.default_rng(1)
    inputs = tuple(rng.normal(size=i.shape).astype(np.float32) for i in graph.inputs)
    return check_exact("merge_linear", graph, inputs, **options)


def _ops(graph: Graph) -> list[str]:
    return [n.op for n in graph.nodes if n.op not in ("input", "const")]


NCHW = TensorType((2, 4, 6, 6), DType.F32)
NLC = TensorType((2, 5, 4), DType.F32)


def _case(name: str) -> Graph:
    x = graph_input("x", NLC if name.startswith("tokens") else NCHW)
    if name == "3x3 -> strided 1x1":
        out = _conv(_conv(x, 6, 3, padding=1, stride=2), 4, stride=2, seed=1)
    elif name == "1x1 -> padded 3x3, no bias":
        out = _conv(_conv(x, 6, bias=False), 5, 3, padding=1, seed=1)
    elif name == "1x1 -> padded 3x3, bias":  # the padded zeros would not carry the bias
        out = _conv(_conv(x, 6), 5, 3, padding=1, seed=1)
    elif name == "depthwise -> depthwise 1x1":
        out = _conv(_conv(x, 4, 3, groups=4), 4, groups=4, seed=1)
    elif name == "1x1 -> NHWC linear":
        nhwc = make("permute", [_conv(x, 3)], {"perm": [0, 2, 3, 1]})
        out = _linear(nhwc, 5, seed=1)
    elif name == "NHWC linear -> 3x3":
        nhwc = make("permute", [x], {"perm": [0, 2, 3, 1]})
        back = make("permute", [_linear(nhwc, 6, bias=False)], {"perm": [0, 3, 1, 2]})
        out = _conv(back, 5, 3, seed=1)
    elif name == "tokens: linear -> flatten -> linear":
        flat = make("reshape", [_linear(x, 3)], {"shape": [10, 3]})
        out = _linear(flat, 2, seed=1)
    elif name == "tokens: linear -> split channels -> linear":  # mixes channel with tokens
        split = make("reshape", [_linear(x, 4)], {"shape": [2, 5, 2, 2]})
        out = _linear(split, 3, seed=1)
    elif name == "tokens: bottleneck":  # 4 -> 1 -> 4: merging would grow the weights
        out = _linear(_linear(x, 1), 4, seed=1)
    elif name == "relu between":
        out = _conv(make("relu", [_conv(x, 4, 3, padding=1)]), 4, seed=1)
    elif name == "second reader":
        mid = _conv(x, 4, 3, padding=1)
        return Graph((x,), (_conv(mid, 4, seed=1), mid))
    elif name.startswith("scale"):
        shape = {"scale per channel": (1, 4, 1, 1), "scale per row": (6, 1),
                 "scale scalar": ()}[name]
        scale = const(np.linspace(0.5, 2, math.prod(shape)).reshape(shape).astype(np.float32))
        out = make("mul", [_conv(x, 4, 3, padding=1), scale])
    elif name.startswith("pad"):
        value = 0.5 if "nonzero" in name else 0.0
        pads = [0, 0, 1, 0, 1, 2, 0, 1] if "channels" in name else [0, 0, 0, 0, 1, 2, 0, 1]
        if "crop" in name:
            pads = [0, 0, 0, 0, -1, 0, 0, 0]
        out = _conv(make("pad", [x], {"pads": pads, "value": value}), 3, 3,
                    padding=1 if "crop" in name else 0)
    return Graph((x,), (out,))


@pytest.mark.parametrize("name, left, options", [
    ("3x3 -> strided 1x1", ["conv"], {}),
    ("1x1 -> padded 3x3, no bias", ["conv"], {}),
    ("1x1 -> padded 3x3, bias", ["conv", "conv"], {}),
    ("depthwise -> depthwise 1x1", ["conv"], {}),
    ("1x1 -> NHWC linear", ["conv", "permute"], {}),
    ("NHWC linear -> 3x3", ["permute", "permute", "conv"], {}),
    ("tokens: linear -> flatten -> linear", ["linear", "reshape"], {}),
    ("tokens: linear -> split channels -> linear", ["linear", "reshape", "linear"], {}),
    ("tokens: bottleneck", ["linear", "linear"], {}),
    ("tokens: bottleneck", ["linear"], {"allow_growth": True}),
    ("relu between", ["conv", "relu", "conv"], {}),
    ("second reader", ["conv", "conv"], {}),
    ("scale per channel", ["conv"], {}),
    ("scale per row", ["conv", "mul"], {}),
    ("scale scalar", ["conv"], {}),
    ("pad zeros", ["conv"], {}),
    ("pad nonzero value", ["pad", "conv"], {}),
    ("pad channels", ["pad", "conv"], {}),
    ("pad crop then conv padding", ["pad", "conv"], {}),
])
def test_merges_and_guards(name: str, left: list[str], options: dict) -> None:
    graph = _case(name).verify()
    assert sorted(_ops(_run(graph, **options))) == sorted(left)


def test_note_counts_and_params() -> None:
    x = graph_input("x", NCHW)
    padded = make("pad", [x], {"pads": [0, 0, 0, 0, 1, 1, 1, 1], "value": 0.0})
    y = make("add", [_conv(_conv(padded, 8, 3), 4, seed=1), const(np.float32(1.0))])
    ctx = npuc.passes.PassContext()
    npuc.passes.apply(Graph((x,), (y,)), "merge_linear", ctx=ctx)
    assert ctx.notes == ["merge_linear: merged 1 pair, folded 1 scale/bias and 1 pad; "
                         "332 -> 148 params"]


# ------------------------------------------------------------------ real models


class HRFBlock(nn.Module):
    """A pre-norm transformer FFN with a high-rank-factorisation Linear(d, d) inserted before it
    (x -> Linear(d, d) -> Linear(d, 4d) -> GELU -> Linear(4d, d)), plus a residual."""

    def __init__(self, d: int = 32) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.hrf = nn.Linear(d, d)
        self.up, self.down = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(nn.functional.gelu(self.up(self.hrf(self.norm(x)))))


class ConvStack(nn.Module):
    """conv -> BN -> 1x1 projections, a zero pad, a per-channel scale and a 1x1 -> 1x1 head."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ZeroPad2d((1, 1, 2, 0)), nn.Conv2d(3, 32, 3), nn.BatchNorm2d(32),
            nn.Conv2d(32, 16, 1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.Conv2d(32, 16, 1, bias=False))
        self.gain = nn.Parameter(torch.rand(1, 16, 1, 1) + 0.5)
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(16, 16, 1), nn.Conv2d(16, 8, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x) * self.gain)


@pytest.mark.parametrize("factory, pipeline, layers", [
    (lambda: (HRFBlock(), (torch.randn(2, 10, 32),)), ["merge_linear"], (3, 2)),
    (lambda: (ConvStack(), (torch.randn(2, 3, 16, 16),)), ["fold_batchnorm", "merge_linear"],
     (6, 3)),
])
def test_real_models(factory, pipeline: list[str], layers: tuple[int, int]) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    model, inputs = factory()
    for m in model.modules():  # random BN statistics, so the fold is not an identity
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    model.eval()
    graph = npuc.capture(model, inputs)
    arrays = tuple(t.numpy() for t in inputs)
    ctx = npuc.passes.PassContext()
    result, _ = npuc.passes.run_pipeline(graph, pipeline, ctx, verify=True)
    with torch.no_grad():
        assert_close(npuc.interpret(result, *arrays), (model(*inputs).numpy(),))
    count = [sum(n.op in ("conv", "linear") for n in g.nodes) for g in (graph, result)]
    assert tuple(count) == layers
    assert npuc.driver.summarize(result).params < npuc.driver.summarize(graph).params
    print(ctx.notes[-1])


@pytest.mark.parametrize("name", ["resnet_bottleneck", "conformer_conv", "mlp"])
def test_zoo_models_stay_exact(name: str) -> None:
    model, inputs = ZOO[name]()
    graph = npuc.passes.apply(npuc.capture(model, inputs), "fold_batchnorm")
    check_exact("merge_linear", graph, tuple(t.numpy() for t in inputs))
