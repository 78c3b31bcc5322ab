"""merge_branches: exact on random multi-branch blocks and on RepVGG, MobileOne and ACNet blocks;
merges every block where its contract says, and nothing where a guard applies."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import npuc
from npuc.ir import DType, Graph, Node, TensorType, const, graph_input
from npuc.ops import make
from tests.models import ZOO
from tests.passes.contract import assert_close, check_exact, text
from tests.strategies import INPUT_BOUND, Value, batch_norm_layer, weights

# --------------------------------------------------------------------------- random blocks


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _conv_attrs(kernel: Sequence[int], padding: Sequence[int], stride: Sequence[int],
                groups: int, dilation: Sequence[int] | None = None) -> dict:
    return {"stride": tuple(stride), "padding": tuple(padding), "groups": groups,
            "dilation": tuple(dilation or (1,) * len(kernel))}


@st.composite
def _conv(draw: st.DrawFn, x: Node, cout: int, kernel: Sequence[int], padding: Sequence[int],
          stride: Sequence[int], groups: int, loc: str) -> Node:
    """A conv on x with random weights and an optional bias."""
    cg = x.shape[1] // groups
    w = draw(weights((cout, cg, *kernel), 1.5 / math.sqrt(cg * math.prod(kernel))))
    inputs = [x, const(w, loc=f"{loc}.weight")]
    if draw(st.booleans()):
        inputs.append(const(draw(weights((cout,), 1.0)), loc=f"{loc}.bias"))
    return make("conv", inputs, _conv_attrs(kernel, padding, stride, groups), loc)


@st.composite
def _branch(draw: st.DrawFn, x: Node, kind: str, *, k: int, stride: tuple[int, ...],
            groups: int, cout: int, loc: str, relu_at: int | None = None) -> list[Node]:
    """One branch on x: its nodes, first to last (x itself for a bare identity). `relu_at` puts
    a ReLU after the first node (0) or at the end (1): the non-linearity a guard must see."""
    nsp = len(x.shape) - 2
    if kind in ("kxk", "small", "1x1", "asym"):
        size = {"kxk": k, "small": 3, "1x1": 1, "asym": k}[kind]
        kernel = [size] * nsp
        if kind == "asym":  # 1xk or kx1, centred on the kxk window
            kernel[draw(st.integers(0, nsp - 1))] = 1
        padding = [p for s in kernel for p in (s // 2, s // 2)]
        nodes = [draw(_conv(x, cout, kernel, padding, stride, groups, f"{loc}.conv"))]
    elif kind == "pool":
        kernel = [draw(st.sampled_from([1, 3])) for _ in range(nsp)]
        padding = [p for s in kernel for p in (s // 2, s // 2)]
        include = draw(st.booleans()) if not any(padding) else True
        nodes = [make("avg_pool", [x], {"kernel": kernel, "stride": stride, "padding": padding,
                                        "dilation": [1] * nsp, "count_include_pad": include},
                      f"{loc}.pool")]
    else:  # identity
        nodes = [x]
    if relu_at == 0:
        nodes.append(make("relu", [nodes[-1]], loc=f"{loc}.act"))
    if draw(st.booleans()):
        nodes.append(draw(batch_norm_layer(Value(nodes[-1], 1.0), loc=f"{loc}.bn")).node)
    if relu_at == 1:
        nodes.append(make("relu", [nodes[-1]], loc=f"{loc}.act"))
    return nodes


@st.composite
def _sum(draw: st.DrawFn, terms: list[Node]) -> Node:
    """The terms summed by a random binary add tree (any nesting, any order)."""
    terms = list(terms)
    while len(terms) > 1:
        i, j = draw(st.permutations(range(len(terms))))[:2]
        added = make("add", [terms[i], terms[j]], loc="sum")
        terms = [t for n, t in enumerate(terms) if n not in (i, j)] + [added]
    return terms[0]


@st.composite
def blocks(draw: st.DrawFn, guard: str | None = None) -> tuple[Graph, tuple[np.ndarray, ...]]:
    """A summed multi-branch block on one input: a kxk conv (k 3 or 5) plus 1-3 of kxk, 3x3 in
    5x5, 1x1, 1xk/kx1, identity and avg-pool branches, each with or without BN, 1-d or 2-d,
    groups 1 to depthwise, stride 1-2; sometimes a ReLU after the sum and a broadcast summand.
    `guard` "relu" or "reader" draws two branches and breaks one: a ReLU inside it, or one of
    its nodes also a graph output."""
    nsp = draw(st.sampled_from([2, 2, 1]))
    k = draw(st.sampled_from([3, 5]))
    stride = (1,) * nsp  # half the time, so that identity branches are common
    if draw(st.booleans()):
        stride = tuple(draw(st.integers(1, 2)) for _ in range(nsp))
    cin = draw(st.integers(1, 8))
    groups = draw(st.one_of(st.just(1), st.just(cin), st.sampled_from(_divisors(cin))))
    cout = cin if draw(st.booleans()) else groups * draw(st.integers(1, 8 // groups))
    x = graph_input("x", TensorType((draw(st.integers(1, 2)), cin,
                                     *(draw(st.integers(1, 8)) for _ in range(nsp))), DType.F32))
    kinds = ["kxk", "1x1"] + ["small"] * (k == 5) + ["asym"] * (nsp == 2)
    kinds += ["pool"] * (cout == cin) + ["identity"] * 2 * (cout == cin and max(stride) == 1)
    extra = 1 if guard else draw(st.integers(1, 3))
    chosen = ["kxk"] + [draw(st.sampled_from(kinds)) for _ in range(extra)]
    broken = draw(st.integers(0, len(chosen) - 1))
    branches = [draw(_branch(x, kind, k=k, stride=stride, groups=groups, cout=cout, loc=f"b{i}",
                             relu_at=draw(st.integers(0, 1)) if guard == "relu" and i == broken
                             else None))
                for i, kind in enumerate(chosen)]
    terms = [b[-1] for b in branches]
    if guard is None and draw(st.integers(0, 3)) == 0:  # a summand that is no branch
        terms.append(const(draw(weights((1, cout) + (1,) * nsp, 1.0)), loc="shift"))
    out = draw(_sum(terms))
    if draw(st.booleans()):
        out = make("relu", [out], loc="act")
    outputs = [out]
    if guard == "reader":
        outputs.append(draw(st.sampled_from(branches[0])))
    return Graph((x,), tuple(outputs)), (draw(weights(x.shape, INPUT_BOUND)),)


@st.composite
def stride_mismatch(draw: st.DrawFn) -> tuple[Graph, tuple[np.ndarray, ...]]:
    """kxk (no padding, stride 1) + 1x1 (stride 2) on a (2k-1)-sized input: equal shapes, so the
    sum type-checks, but no single conv computes both."""
    nsp = draw(st.sampled_from([1, 2]))
    k = draw(st.sampled_from([3, 5]))
    cin = draw(st.integers(1, 8))
    groups = draw(st.sampled_from(_divisors(cin)))
    cout = groups * draw(st.integers(1, 8 // groups))
    x = graph_input("x", TensorType((1, cin) + (2 * k - 1,) * nsp, DType.F32))
    a = draw(_conv(x, cout, (k,) * nsp, (0,) * 2 * nsp, (1,) * nsp, groups, "a"))
    b = draw(_conv(x, cout, (1,) * nsp, (0,) * 2 * nsp, (2,) * nsp, groups, "b"))
    return Graph((x,), (draw(_sum([a, b])),)), (draw(weights(x.shape, INPUT_BOUND)),)


def _ops(graph: Graph) -> Counter:
    return Counter(n.op for n in graph.nodes if n.op not in ("input", "const"))


@settings(max_examples=80)
@given(blocks())
def test_exact_and_one_conv_per_block(case: tuple) -> None:
    graph, inputs = case
    result = check_exact("merge_branches", graph, inputs)
    ops = _ops(result)
    # one conv; an add only for the broadcast summand that is no branch
    assert ops["conv"] == 1 and ops["batch_norm"] == ops["avg_pool"] == 0, ops
    assert ops["add"] == sum(n.is_const and n.loc == "shift" for n in graph.nodes), ops


@settings(max_examples=30)
@given(st.one_of(blocks(guard="relu"), blocks(guard="reader"), stride_mismatch()))
def test_guards_leave_the_graph_unchanged(case: tuple) -> None:
    graph, inputs = case
    assert text(check_exact("merge_branches", graph, inputs)) == text(graph)


# --------------------------------------------------------------------------- hand-made cases


def _rng_conv(x: Node, cout: int, kernel: Sequence[int], padding: Sequence[int], *,
              stride: Sequence[int] = (1, 1), groups: int = 1,
              dilation: Sequence[int] = (1, 1), seed: int = 0) -> Node:
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(cout, x.shape[1] // groups, *kernel)).astype(np.float32)
    return make("conv", [x, const(w)], _conv_attrs(kernel, padding, stride, groups, dilation))


def _bn(x: Node, seed: int = 0) -> Node:
    rng = np.random.default_rng(seed)
    c = x.shape[1]
    params = [rng.uniform(0.5, 2, c), rng.normal(size=c), rng.normal(size=c),
              rng.uniform(0.5, 2, c)]
    return make("batch_norm", [x, *(const(p.astype(np.float32)) for p in params)])


def _inputs(graph: Graph) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(1)
    return tuple(rng.uniform(-2, 2, i.shape).astype(np.float32) for i in graph.inputs)


X = graph_input("x", TensorType((1, 4, 6, 6), DType.F32))
Y = graph_input("y", TensorType((1, 4, 6, 6), DType.F32))


def _c3(x: Node = X, **kw: object) -> Node:
    return _rng_conv(x, 4, (3, 3), (1, 1, 1, 1), **kw)


def _c1(x: Node = X, **kw: object) -> Node:
    return _rng_conv(x, 4, (1, 1), (0, 0, 0, 0), seed=1, **kw)


GUARDS = {
    "relu inside a branch": lambda: make("add", [make("relu", [_bn(_c3())]), _bn(_c1())]),
    "different inputs": lambda: make("add", [_bn(_c3()), _bn(_c1(Y))]),
    "groups differ": lambda: make("add", [_c3(), _c1(groups=4)]),
    "misaligned padding": lambda: make("add", [_c3(), _rng_conv(X, 4, (3, 3), (2, 0, 2, 0))]),
    "dilations differ": lambda: make("add", [_rng_conv(X, 4, (3, 3), (2, 2, 2, 2),
                                                       dilation=(2, 2)),
                                             _rng_conv(X, 4, (5, 5), (2, 2, 2, 2))]),
    "pool not a conv": lambda: make("add", [_c3(), make("avg_pool", [X], {
        "kernel": [3, 3], "stride": [1, 1], "padding": [1, 1, 1, 1], "dilation": [1, 1],
        "count_include_pad": False})]),
    "lone conv and identity on another input": lambda: make("add", [_c3(), _bn(Y)]),
}


@pytest.mark.parametrize("name", GUARDS)
def test_hand_made_guards(name: str) -> None:
    graph = Graph((X, Y), (GUARDS[name](),))
    assert text(check_exact("merge_branches", graph, _inputs(graph))) == text(graph)


def test_merges_the_branches_it_can_and_keeps_the_rest() -> None:
    """Of conv3 + conv1 + relu(conv) + y, the two plain convs become one."""
    relu = make("relu", [_rng_conv(X, 4, (3, 3), (1, 1, 1, 1), seed=3)])
    total = make("add", [make("add", [make("add", [_bn(_c3()), relu]), Y]), _c1()])
    graph = Graph((X, Y), (total,))
    ops = _ops(check_exact("merge_branches", graph, _inputs(graph)))
    assert ops == Counter({"conv": 2, "add": 2, "relu": 1})


def test_nested_blocks_merge_in_one_run() -> None:
    """bn(conv3(x) + conv1(x)) + conv5(x): the inner sum becomes a conv that the BN then
    belongs to, so the outer sum merges too (in the same run: the pass is idempotent)."""
    inner = _bn(make("add", [_c3(), _c1()]))
    outer = make("add", [inner, _rng_conv(X, 4, (5, 5), (2, 2, 2, 2), seed=5)])
    graph = Graph((X, Y), (outer,))
    assert _ops(check_exact("merge_branches", graph, _inputs(graph))) == Counter({"conv": 1})


def test_dilated_kernels_and_a_centred_1x1() -> None:
    dilated = _rng_conv(X, 4, (3, 3), (2, 2, 2, 2), dilation=(2, 2))
    graph = Graph((X, Y), (make("add", [make("add", [dilated, _c1()]), _bn(X)]),))
    result = check_exact("merge_branches", graph, _inputs(graph))
    (conv,) = (n for n in result.nodes if n.op == "conv")
    assert conv.attrs["dilation"] == (2, 2) and conv.inputs[1].shape == (4, 4, 3, 3)


# --------------------------------------------------------------------------- real blocks


def _conv_bn(cin: int, cout: int, kernel: int | tuple[int, int], stride: int = 1,
             groups: int = 1) -> nn.Sequential:
    pad = (kernel // 2 if isinstance(kernel, int) else tuple(k // 2 for k in kernel))
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, pad, groups=groups, bias=False),
                         nn.BatchNorm2d(cout))


class MobileOneBlock(nn.Module):
    """MobileOne training-time block: k over-parameterised kxk conv-BN branches, a 1x1 conv-BN
    "scale" branch and (stride 1) an identity BN, summed, ReLU."""

    def __init__(self, channels: int, stride: int, groups: int, branches: int = 2) -> None:
        super().__init__()
        self.dense = nn.ModuleList(_conv_bn(channels, channels, 3, stride, groups)
                                   for _ in range(branches))
        self.scale = _conv_bn(channels, channels, 1, stride, groups)
        self.identity = nn.BatchNorm2d(channels) if stride == 1 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.scale(x)
        if self.identity is not None:
            y = y + self.identity(x)
        for branch in self.dense:
            y = y + branch(x)
        return torch.relu(y)


class ACBlock(nn.Module):
    """ACNet asymmetric convolution block: 3x3 + 1x3 + 3x1 conv-BN branches, summed."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.square = _conv_bn(cin, cout, 3)
        self.hor = _conv_bn(cin, cout, (1, 3))
        self.ver = _conv_bn(cin, cout, (3, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.square(x) + self.hor(x) + self.ver(x)


def _randomized(model: nn.Module) -> nn.Module:
    """Random BN statistics and affine parameters (fresh ones are the identity map)."""
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=gen))
            m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=gen))
    return model.eval()


def _example(name: str) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    if name == "repvgg_block":
        return ZOO[name]()
    model = {"mobileone": lambda: MobileOneBlock(8, 1, 1),
             "mobileone_dw": lambda: MobileOneBlock(8, 1, 8, branches=3),
             "mobileone_dw_s2": lambda: MobileOneBlock(8, 2, 8),
             "acnet": lambda: ACBlock(4, 8)}[name]()
    channels = next(m.in_channels for m in model.modules() if isinstance(m, nn.Conv2d))
    return _randomized(model), (torch.randn(1, channels, 12, 12),)


@pytest.mark.parametrize("name", ["repvgg_block", "mobileone", "mobileone_dw",
                                  "mobileone_dw_s2", "acnet"])
def test_real_blocks_become_one_conv(name: str) -> None:
    model, inputs = _example(name)
    graph = npuc.capture(model, inputs)
    arrays = tuple(x.numpy() for x in inputs)
    with torch.no_grad():
        want = (model(*inputs).numpy(),)
    alone = check_exact("merge_branches", graph, arrays)  # BN directly on the branches
    ctx = npuc.passes.PassContext()
    result, _ = npuc.passes.run_pipeline(graph, ["fold_batchnorm", "merge_branches"], ctx,
                                         verify=True)
    for g in (alone, result):
        assert_close(npuc.interpret(g, *arrays), want)
        ops = _ops(g)
        assert ops["conv"] == 1 and ops["batch_norm"] == 0 and ops["add"] == 0, ops
    if name == "repvgg_block":  # 3x3 + 1x1 conv-BN + identity BN on 8 channels -> one 3x3 conv
        assert ctx.notes[-1] == ("merge_branches: merged 1 branch groups (3 branches), "
                                 "688 -> 584 params")
