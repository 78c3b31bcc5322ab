"""Hypothesis strategies for random, well-formed float32 npuc IR graphs (and random torch models).

The design follows NNSmith: draw small sizes first (batch 1-2, channels 1-8, spatial 1-8), then
grow a graph one *layer* at a time, wiring each new node only to earlier values whose types fit.
Illegal combinations are avoided by construction (kernel, padding and group choices are derived
from the shapes at hand), never by rejection, so every drawn graph verifies.

Building blocks, from small to large:

- `tensor_types`, `weights`: shapes in the usual layouts, finite float32 arrays.
- `Value`: an IR node plus an upper bound on |element|. Every layer computes the bound of its
  result (exactly for weighted layers, from its own op's semantics for elementwise ops), and the
  graph builder squashes a value with tanh when its bound grows past `MAX_BOUND`, so interpreting
  a graph never overflows even when it squares a value several times.
- one layer builder per op family (`conv_layer`, `pool_layer`, `unary_layer`, ...), each a
  strategy that, given a `Value` (and the values built so far, for binary ops), returns a new
  `Value`. `FAMILIES` lists them with the shapes they accept.
- `graphs()` draws stacks and DAGs of layers; `graph_and_inputs()` adds input arrays.
- `torch_models()` draws random small torch modules for end-to-end capture checks.

The elementwise op lists come from the op table (`npuc.ops.OPS`): a new unary or binary float op
is picked up automatically; an op that needs a required attribute gets an entry in
`ATTR_STRATEGIES`; a new op of another kind needs a family (test_random_graphs checks coverage).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from npuc.ir import Attrs, DType, Graph, Node, StateSlot, TensorType, const, graph_input, state_read
from npuc.ops import OPS, REQUIRED, make

F32 = DType.F32

# Sizes: small enough that a 12-node graph interprets in milliseconds.
MAX_BATCH = 2
MAX_CHANNELS = 8
MAX_SPATIAL = 8  # graph inputs; intermediate values may grow to MAX_DIM
MAX_DIM = 16
MAX_RANK = 4
MAX_ELEMENTS = 2048
MAX_NODES = 12  # non-constant nodes per graph

INPUT_BOUND = 2.0  # graph inputs are drawn in [-2, 2]
MAX_BOUND = 1e4  # values whose bound exceeds this are squashed before the next layer
LAYOUTS = ("nchw", "ncl", "nlc", "nc")


# --------------------------------------------------------------------------- types and arrays


@st.composite
def tensor_types(draw: st.DrawFn, layout: str | None = None, *, dtype: DType = F32,
                 max_batch: int = MAX_BATCH, max_channels: int = MAX_CHANNELS,
                 max_spatial: int = MAX_SPATIAL) -> TensorType:
    """A tensor type in one of LAYOUTS: "nchw" (images), "ncl" (1-d signals), "nlc" (tokens:
    batch, length, channels) or "nc" (features); `layout=None` draws one."""
    layout = layout or draw(st.sampled_from(LAYOUTS))
    n = draw(st.integers(1, max_batch))
    c = draw(st.integers(1, max_channels))
    spatial = st.integers(1, max_spatial)
    shapes = {
        "nchw": lambda: (n, c, draw(spatial), draw(spatial)),
        "ncl": lambda: (n, c, draw(spatial)),
        "nlc": lambda: (n, draw(spatial), c),
        "nc": lambda: (n, c),
    }
    if layout not in shapes:
        raise ValueError(f"unknown layout {layout!r}; use one of {LAYOUTS}")
    return TensorType(shapes[layout](), dtype)


def _f32(v: float) -> float:
    return float(np.float32(v))


# Arrays up to this size draw every element through Hypothesis (best shrinking); larger ones
# would exhaust its entropy budget, and its sparse "fill" mode makes near-constant arrays that hide
# layout bugs (a transposed weight looks the same), so they are mostly dense seeded draws.
_SMALL_ARRAY = 16


@st.composite
def weights(draw: st.DrawFn, shape: Sequence[int], bound: float = 2.0, *,
            lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """A finite float32 array of `shape` with elements in [-bound, bound] (or [lo, hi])."""
    lo = _f32(-bound if lo is None else lo)
    hi = _f32(bound if hi is None else hi)
    shape = tuple(int(s) for s in shape)
    size = math.prod(shape)
    elements = st.floats(lo, hi, width=32, allow_subnormal=False)
    if size <= _SMALL_ARRAY:
        return draw(hnp.arrays(np.float32, shape, elements=elements, fill=st.nothing()))
    if draw(st.integers(0, 7)) == 0:  # occasionally structured: a constant with a few outliers
        return draw(hnp.arrays(np.float32, shape, elements=elements))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return np.clip(rng.uniform(lo, hi, shape).astype(np.float32), lo, hi)


# --------------------------------------------------------------------------- values


@dataclass(frozen=True)
class Value:
    """A node, an upper bound on the magnitude of its elements and, when known, a lower bound
    (guards such as |x| + 0.5 make values positive, which log, sqrt and div rely on)."""

    node: Node
    bound: float
    low: float | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return self.node.shape

    @property
    def rank(self) -> int:
        return len(self.node.shape)

    @property
    def size(self) -> int:
        return self.node.type.size


def _param(draw: st.DrawFn, shape: Sequence[int], loc: str | None, name: str,
           bound: float = 2.0, **kw: float) -> tuple[Node, np.ndarray]:
    array = draw(weights(shape, bound, **kw))
    return const(array, loc=f"{loc}.{name}" if loc else None), array


def _scalar(value: float, loc: str | None = None) -> Node:
    return const(np.array(value, dtype=np.float32), loc=loc)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _amax(array: np.ndarray | None) -> float:
    return float(np.max(np.abs(array))) if array is not None and array.size else 0.0


def _fan_in_bound(fan_in: int) -> float:
    # Kaiming-uniform-like scale: a weighted layer keeps magnitudes roughly constant.
    return 1.5 / math.sqrt(max(fan_in, 1))


# --------------------------------------------------------------------------- elementwise ops


def _clamp_attrs() -> st.SearchStrategy[dict[str, Any]]:
    finite = st.floats(-3, 3, width=32)
    pairs = st.tuples(finite, finite).map(sorted)
    return st.one_of(
        pairs.map(lambda p: {"min": p[0], "max": p[1]}),
        st.just({"min": 0.0, "max": 6.0}),  # ReLU6
        finite.map(lambda v: {"min": -math.inf, "max": v}),
        finite.map(lambda v: {"min": v, "max": math.inf}),
    )


# Attribute strategies for elementwise ops whose attributes are required or constrained jointly;
# other attributes take their declared choices or their default.
ATTR_STRATEGIES: dict[str, Callable[[], st.SearchStrategy[dict[str, Any]]]] = {
    "clamp": _clamp_attrs,
    "leaky_relu": lambda: st.fixed_dictionaries(
        {"alpha": st.one_of(st.just(0.01), st.floats(-0.5, 0.5, width=32))}),
    "power": lambda: st.fixed_dictionaries(
        {"exponent": st.sampled_from([2.0, 3.0, 0.5, -1.0, 1.5])}),
}

# Elementwise ops on booleans only (they type-check on floats but mean nothing there).
BOOL_OPS = frozenset({"logical_not", "logical_and", "logical_or"})


def attrs_for(op: str) -> st.SearchStrategy[dict[str, Any]]:
    """Attributes for `op`: ATTR_STRATEGIES, else each attribute's choices or default."""
    if op in ATTR_STRATEGIES:
        return ATTR_STRATEGIES[op]()
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for name, spec in OPS[op].attrs.items():
        if spec.choices is not None:
            fields[name] = st.sampled_from(spec.choices)
        elif spec.default is REQUIRED:
            return st.nothing()
        elif spec.default is not None:
            fields[name] = st.just(spec.default)
    return st.fixed_dictionaries(fields)


def _drawable(op: str) -> bool:
    return op in ATTR_STRATEGIES or all(
        s.default is not REQUIRED or s.choices for s in OPS[op].attrs.values())


def _float_semantics(op: str, arity: int) -> str | None:
    """The result dtype of `op` on float32 operands, or None when it does not take them."""
    if op in BOOL_OPS or not _drawable(op):
        return None
    opdef = OPS[op]
    attrs = _probe_attrs(op)
    try:
        typ = opdef.infer([TensorType((3,), F32)] * arity, opdef.check_attrs(attrs))
        with np.errstate(all="ignore"):
            opdef.impl(opdef.check_attrs(attrs), *([np.ones(3, np.float32)] * arity))
    except Exception:
        return None
    return typ.dtype.value


# Legal attributes for ops whose required attributes have no declared choices, so that the op
# table can be asked what the op does with floats.
_PROBE_ATTRS: dict[str, dict[str, Any]] = {"clamp": {"min": -1.0, "max": 1.0},
                                           "power": {"exponent": 2.0}}


def _probe_attrs(op: str) -> dict[str, Any]:
    if op in _PROBE_ATTRS:
        return _PROBE_ATTRS[op]
    return {k: (s.choices[0] if s.choices else s.default) for k, s in OPS[op].attrs.items()
            if s.default is not None and (s.default is not REQUIRED or s.choices)}


def _integer_only(op: str) -> bool:
    """Ops of quantized graphs (npuc.ops.quantized): tests/quant covers them."""
    return OPS[op].typed or op == "lut"


def _elementwise(arity: int, result: str) -> tuple[str, ...]:
    return tuple(sorted(
        name for name, d in OPS.items()
        if d.category == "elementwise" and d.arity == (arity, arity) and not _integer_only(name)
        and _float_semantics(name, arity) == result
    ))


UNARY_OPS = _elementwise(1, "f32")  # relu, gelu, sigmoid, exp, log, ... (float -> float)
BINARY_OPS = _elementwise(2, "f32")  # add, sub, mul, div, pow, maximum, minimum, (prelu: own)
COMPARE_OPS = _elementwise(2, "bool")  # eq, ne, lt, le, gt, ge
REDUCE_OPS = tuple(sorted(name for name, d in OPS.items()
                          if d.category == "reduce" and not _integer_only(name)))


def _grid(bound: float) -> np.ndarray:
    return (np.linspace(-1, 1, 41) * bound).astype(np.float32)


def _probe(op: str, attrs: Attrs, samples: Sequence[np.ndarray]) -> float:
    """max |op(...)| over every combination of the sample values (inf when any is not finite):
    a cheap, op-agnostic bound for elementwise ops, which are continuous with few extrema."""
    grids = np.meshgrid(*[np.asarray(s, np.float32).reshape(-1) for s in samples],
                        indexing="ij")
    try:
        with np.errstate(all="ignore"):
            out = np.asarray(OPS[op].impl(attrs, *grids), np.float64)
    except (FloatingPointError, ValueError, TypeError):
        return math.inf
    if not np.all(np.isfinite(out)):
        return math.inf
    return float(np.max(np.abs(out), initial=0.0)) * 1.01 + 1e-3


def _samples(v: Value) -> np.ndarray:
    """Values a probe tries for operand `v`: its data when constant, else a grid over its bound."""
    if v.node.is_const:
        return np.unique(v.node.data)
    if v.low is not None:
        return np.linspace(v.low, v.bound, 41).astype(np.float32)
    return _grid(v.bound)


def _abs_plus(v: Value, loc: str | None) -> Value:
    """|v| + 0.5: moves an operand into the domain of log, sqrt, reciprocal, pow's base..."""
    node = make("add", [make("abs", [v.node], loc=loc), _scalar(0.5)], loc=loc)
    return Value(node, v.bound + 0.5, low=0.5)


def _clamped(v: Value, loc: str | None, limit: float = 3.0) -> Value:
    node = make("clamp", [v.node], {"min": -limit, "max": limit}, loc=loc)
    return Value(node, min(v.bound, limit))


def _guarded(op: str, attrs: dict[str, Any], operands: Sequence[Value],
             loc: str | None) -> Value | None:
    """op(operands) if its result is finite and bounded on the operands' ranges; otherwise the
    first guard that makes it so (|x| + 0.5 for log/sqrt/div/pow, a clamp for exp); None if none
    does. The guards are ordinary nodes, so graphs show domain-safe idioms as models write them."""
    checked = OPS[op].check_attrs(attrs)
    guards: list[Callable[[Sequence[Value]], list[Value]]] = [
        lambda xs: list(xs),
        lambda xs: [xs[0], _abs_plus(xs[1], loc)] if len(xs) == 2 else [_abs_plus(xs[0], loc)],
        lambda xs: ([_abs_plus(xs[0], loc), _clamped(xs[1], loc, 2.0)] if len(xs) == 2
                    else [_clamped(xs[0], loc)]),
    ]
    for guard in guards:
        args = guard(operands)
        bound = _probe(op, checked, [_samples(a) for a in args])
        if bound <= MAX_BOUND:
            return Value(make(op, [a.node for a in args], attrs, loc), bound)
    return None


# --------------------------------------------------------------------------- layer builders
# Each builder is a strategy: given the value `x` to extend, the values built so far (`pool`,
# for binary ops and joins) and a location string, it returns a new Value, or None when it
# cannot extend `x` (the graph builder then just skips the step).

Pool = Sequence[Value]


def _weighted_bound(x_bound: float, w: np.ndarray, out_axis: int, b: np.ndarray | None) -> float:
    """|y| <= |x| * max_o sum |w[o]| + max |b| for y = sum_i x_i w[o, i] + b[o]."""
    rows = np.moveaxis(np.abs(w.astype(np.float64)), out_axis, 0).reshape(w.shape[out_axis], -1)
    return x_bound * float(rows.sum(axis=1).max(initial=0.0)) + _amax(b)


@st.composite
def conv_layer(draw: st.DrawFn, x: Value, pool: Pool = (), loc: str | None = None) -> Value:
    """conv on an (N, C, *spatial) value: stride 1-2, dilation 1-2, padding up to the kernel's
    span and possibly asymmetric, groups from 1 to depthwise, optional bias."""
    n, c, *spatial = x.shape
    groups = draw(st.one_of(st.just(1), st.just(c), st.sampled_from(_divisors(c))))
    cout = groups * draw(st.integers(1, max(1, MAX_CHANNELS // groups)))
    kernel, stride, dilation, padding = [], [], [], []
    for size in spatial:
        d = draw(st.integers(1, 2))
        k = draw(st.integers(1, 3))
        span = d * (k - 1) + 1
        most = span - 1 if size < MAX_DIM // 2 else (span - 1) // 2  # big maps must not grow
        lo, hi = draw(st.integers(0, most)), draw(st.integers(0, most))
        hi = max(hi, span - size - lo)  # at least one output pixel
        kernel.append(k)
        dilation.append(d)
        stride.append(draw(st.integers(1, 2)))
        padding += [lo, hi]
    cin = c // groups
    w_node, w = _param(draw, (cout, cin, *kernel), loc, "weight",
                       _fan_in_bound(cin * math.prod(kernel)))
    inputs = [x.node, w_node]
    b = None
    if draw(st.booleans()):
        b_node, b = _param(draw, (cout,), loc, "bias", 1.0)
        inputs.append(b_node)
    attrs = {"stride": stride, "padding": padding, "dilation": dilation, "groups": groups}
    return Value(make("conv", inputs, attrs, loc), _weighted_bound(x.bound, w, 0, b))


@st.composite
def conv_transpose_layer(draw: st.DrawFn, x: Value, pool: Pool = (),
                         loc: str | None = None) -> Value:
    """conv_transpose (weight IOHW): stride 1-2, dilation 1-2, asymmetric padding that never
    crops the output to nothing, output_padding below max(stride, dilation), groups."""
    n, c, *spatial = x.shape
    groups = draw(st.sampled_from(_divisors(c)))
    og = draw(st.integers(1, max(1, MAX_CHANNELS // groups)))
    kernel, stride, dilation, padding, out_pad = [], [], [], [], []
    for size in spatial:
        s = draw(st.integers(1, 2)) if size * 2 + 2 <= MAX_DIM else 1
        d = draw(st.integers(1, 2))
        k = draw(st.integers(1, 3))
        edge = d * (k - 1)
        lo = draw(st.integers(0, edge))
        hi = draw(st.integers(0, edge - lo))  # lo + hi <= edge keeps out >= (size - 1) * s + 1
        kernel.append(k)
        stride.append(s)
        dilation.append(d)
        padding += [lo, hi]
        out_pad.append(draw(st.integers(0, max(s, d) - 1)))
    w_node, w = _param(draw, (c, og, *kernel), loc, "weight",
                       _fan_in_bound(c // groups * math.prod(kernel)))
    inputs = [x.node, w_node]
    b = None
    if draw(st.booleans()):
        b_node, b = _param(draw, (og * groups,), loc, "bias", 1.0)
        inputs.append(b_node)
    attrs = {"stride": stride, "padding": padding, "dilation": dilation, "groups": groups,
             "output_padding": out_pad}
    # Every output sums at most all of one output channel's taps, over every input channel.
    bound = x.bound * float(np.abs(w.astype(np.float64)).sum(axis=(0, *range(2, w.ndim))).max())
    return Value(make("conv_transpose", inputs, attrs, loc), bound + _amax(b))


@st.composite
def linear_layer(draw: st.DrawFn, x: Value, pool: Pool = (), loc: str | None = None) -> Value:
    """linear(x, w[out, in], b?) over the last axis."""
    fin = x.shape[-1]
    fout = draw(st.integers(1, MAX_CHANNELS))
    w_node, w = _param(draw, (fout, fin), loc, "weight", _fan_in_bound(fin))
    inputs = [x.node, w_node]
    b = None
    if draw(st.booleans()):
        b_node, b = _param(draw, (fout,), loc, "bias", 1.0)
        inputs.append(b_node)
    return Value(make("linear", inputs, loc=loc), _weighted_bound(x.bound, w, 0, b))


@st.composite
def matmul_layer(draw: st.DrawFn, x: Value, pool: Pool = (), loc: str | None = None) -> Value:
    """matmul with a constant (K, N) or broadcast-batched matrix, or with another value: x @ y^T
    for a y of x's shape (attention scores), or x @ y for a y whose rows match x's columns."""
    k = x.shape[-1]
    partners = [v for v in pool if v.rank >= 2 and v.rank == x.rank and x.rank >= 2
                and v.shape[:-2] == x.shape[:-2] and v.shape[-2] == k]
    same = [v for v in pool if v.shape == x.shape and x.rank >= 2]
    mode = draw(st.sampled_from(["const"] + ["gram"] * bool(same) + ["value"] * bool(partners)))
    if mode == "const":
        cols = draw(st.integers(1, MAX_CHANNELS))
        batch: tuple[int, ...] = ()
        if x.rank >= 3 and draw(st.booleans()):
            batch = tuple(draw(st.sampled_from([1, s])) for s in x.shape[-3:-2])
        w_node, w = _param(draw, (*batch, k, cols), loc, "weight", _fan_in_bound(k))
        col_sums = np.abs(w.astype(np.float64)).sum(axis=-2).max(initial=0.0)
        return Value(make("matmul", [x.node, w_node], loc=loc), x.bound * float(col_sums))
    if mode == "gram":
        y = draw(st.sampled_from(same))
        perm = list(range(x.rank))
        perm[-2], perm[-1] = perm[-1], perm[-2]
        yt = make("permute", [y.node], {"perm": perm}, loc)
        return Value(make("matmul", [x.node, yt], loc=loc), k * x.bound * y.bound)
    y = draw(st.sampled_from(partners))
    return Value(make("matmul", [x.node, y.node], loc=loc), k * x.bound * y.bound)


def _eps() -> st.SearchStrategy[float]:
    return st.sampled_from([1e-5, 1e-3, 1e-6, 0.1])


@st.composite
def batch_norm_layer(draw: st.DrawFn, x: Value, pool: Pool = (),
                     loc: str | None = None) -> Value:
    """Inference batch_norm over axis 1 with random affine and running statistics (var > 0)."""
    c = x.shape[1]
    gamma_node, gamma = _param(draw, (c,), loc, "weight", 2.0)
    beta_node, beta = _param(draw, (c,), loc, "bias", 1.0)
    mean_node, mean = _param(draw, (c,), loc, "running_mean", 1.0)
    var_node, var = _param(draw, (c,), loc, "running_var", lo=0.1, hi=4.0)
    eps = draw(_eps())
    scale = np.abs(gamma.astype(np.float64)) / np.sqrt(var.astype(np.float64) + eps)
    bound = float(np.max(scale * (x.bound + np.abs(mean)) + np.abs(beta)))
    node = make("batch_norm", [x.node, gamma_node, beta_node, mean_node, var_node],
                {"eps": eps}, loc)
    return Value(node, bound)


def _affine_params(draw: st.DrawFn, shape: tuple[int, ...], loc: str | None
                   ) -> tuple[list[Node], float, float]:
    """None, gamma, or gamma and beta (the ops' optional operands are positional)."""
    count = draw(st.integers(0, 2))
    nodes, g, b = [], 1.0, 0.0
    if count >= 1:
        node, gamma = _param(draw, shape, loc, "weight", 2.0)
        nodes.append(node)
        g = _amax(gamma)
    if count == 2:
        node, beta = _param(draw, shape, loc, "bias", 1.0)
        nodes.append(node)
        b = _amax(beta)
    return nodes, g, b


@st.composite
def layer_norm_layer(draw: st.DrawFn, x: Value, pool: Pool = (),
                     loc: str | None = None) -> Value:
    """layer_norm over the last 1-3 axes, with no, scale-only or full affine parameters."""
    ndim = draw(st.integers(1, min(x.rank, 3)))
    shape = x.shape[x.rank - ndim:]
    params, g, b = _affine_params(draw, shape, loc)
    rms = draw(st.booleans())  # RMSNorm: no centring
    node = make("layer_norm", [x.node, *params],
                {"ndim": ndim, "eps": draw(_eps()), "rms": rms or None}, loc)
    # A normalised value is at most sqrt(count) in magnitude.
    return Value(node, math.sqrt(math.prod(shape)) * g + b)


@st.composite
def group_norm_layer(draw: st.DrawFn, x: Value, pool: Pool = (),
                     loc: str | None = None) -> Value:
    """group_norm with a group count dividing the channels (1 = layer norm, C = instance norm)."""
    c = x.shape[1]
    groups = draw(st.sampled_from(_divisors(c)))
    params, g, b = _affine_params(draw, (c,), loc)
    node = make("group_norm", [x.node, *params], {"groups": groups, "eps": draw(_eps())}, loc)
    return Value(node, math.sqrt(x.size // (x.shape[0] * groups)) * g + b)


@st.composite
def unary_layer(draw: st.DrawFn, x: Value, pool: Pool = (), loc: str | None = None,
                ops: Sequence[str] = UNARY_OPS) -> Value | None:
    """A float unary op from the op table (activations and math), with guards where its domain
    needs them."""
    op = draw(st.sampled_from(list(ops)))
    return _guarded(op, draw(attrs_for(op)), [x], loc)


@st.composite
def prelu_layer(draw: st.DrawFn, x: Value, pool: Pool = (), loc: str | None = None) -> Value:
    """prelu with one slope or one per channel (axis 1)."""
    channels = x.shape[1] if x.rank > 1 else 1
    shape = draw(st.sampled_from(sorted({(1,), (channels,), ()})))
    node, slope = _param(draw, shape, loc, "weight", 1.0)
    return Value(make("prelu", [x.node, node], loc=loc), x.bound * max(1.0, _amax(slope)))


def _broadcastable_shape(draw: st.DrawFn, shape: tuple[int, ...]) -> tuple[int, ...]:
    """A shape that broadcasts against `shape` without growing it: a suffix of it with some
    axes set to 1 (a 0-d scalar at the extreme)."""
    keep = draw(st.integers(0, len(shape)))
    tail = shape[len(shape) - keep:]
    return tuple(draw(st.sampled_from([1, s])) for s in tail)


def _broadcast(*shapes: tuple[int, ...]) -> tuple[int, ...] | None:
    try:
        return tuple(np.broadcast_shapes(*shapes))
    except ValueError:
        return None


def _partners(x: Value, pool: Pool) -> list[Value]:
    """Pool values that broadcast with x to something of at most x's rank and MAX_ELEMENTS."""
    out = []
    for v in pool:
        shape = _broadcast(x.shape, v.shape)
        if shape is not None and len(shape) <= MAX_RANK and math.prod(shape) <= MAX_ELEMENTS:
            out.append(v)
    return out


@st.composite
def _operand(draw: st.DrawFn, x: Value, pool: Pool, loc: str | None, bound: float = 2.0
             ) -> Value:
    """Another operand for x: a broadcasting constant, or an earlier value that broadcasts."""
    partners = _partners(x, pool)
    same = [v for v in partners if v.shape == x.shape]
    kinds = ["const"] + ["same"] * bool(same) + ["value"] * bool(partners)
    kind = draw(st.sampled_from(kinds))
    if kind == "same":
        return draw(st.sampled_from(same))
    if kind == "value":
        return draw(st.sampled_from(partners))
    node, array = _param(draw, _broadcastable_shape(draw, x.shape), loc, "other", bound)
    return Value(node, _amax(array))


@st.composite
def binary_layer(draw: st.DrawFn, x: Value, pool: Pool = (), loc: str | None = None,
                 ops: Sequence[str] = BINARY_OPS) -> Value | None:
    """add/sub/mul/div/pow/maximum/minimum of x with a broadcasting constant or another value
    (itself included), in either operand order."""
    op = draw(st.sampled_from(list(ops)))
    y = draw(_operand(x, pool, loc))
    a, b = (x, y) if draw(st.booleans()) else (y, x)
    return _guarded(op, {}, [a, b], loc)


@st.composite
def where_layer(draw: st.DrawFn, x: Value, pool: Pool = (), loc: str | None = None) -> Value:
    """where(compare(x, t), a, b): a boolean mask from a comparison op selects between values."""
    op = draw(st.sampled_from(list(COMPARE_OPS)))
    t = draw(_operand(x, pool, loc))
    cond = make(op, [x.node, t.node], loc=loc)
    # the other branch must broadcast with the condition, which may be larger than x
    other = draw(_operand(Value(cond, 1.0), pool, loc))
    a, b = (x, other) if draw(st.booleans()) else (other, x)
    return Value(make("where", [cond, a.node, b.node], loc=loc), max(a.bound, b.bound))


@st.composite
def softmax_layer(draw: st.DrawFn, x: Value, pool: Pool = (), loc: str | None = None) -> Value:
    """softmax or log_softmax over any axis (negative axes included)."""
    op = draw(st.sampled_from(["softmax", "log_softmax"]))
    axis = draw(st.integers(-x.rank, x.rank - 1))
    bound = 1.0 if op == "softmax" else 2 * x.bound + math.log(x.shape[axis]) + 1
    return Value(make(op, [x.node], {"axis": axis}, loc), bound)


@st.composite
def glu_layer(draw: st.DrawFn, x: Value, pool: Pool = (), loc: str | None = None) -> Value:
    """glu over an axis of even size."""
    even = [a for a in range(x.rank) if x.shape[a] % 2 == 0]
    axis = draw(st.sampled_from(even))
    if draw(st.booleans()):
        axis -= x.rank
    return Value(make("glu", [x.node], {"axis": axis}, loc), x.bound)


@st.composite
def pool_layer(draw: st.DrawFn, x: Value, pool: Pool = (), loc: str | None = None) -> Value:
    """max_pool or avg_pool: kernel 1-3, stride 1-3, padding up to half the kernel (possibly
    asymmetric), dilation (max_pool, unpadded), ceil_mode, count_include_pad. Every window
    holds at least one real element, so no output is a -inf or 0/0 of padding alone."""
    op = draw(st.sampled_from(["max_pool", "avg_pool"]))
    kernel, stride, dilation, padding = [], [], [], []
    for size in x.shape[2:]:
        k = draw(st.integers(1, min(3, size)))
        d = draw(st.integers(1, 2)) if op == "max_pool" and size >= 2 * k - 1 else 1
        lo, hi = (draw(st.integers(0, k // 2)), draw(st.integers(0, k // 2))) if d == 1 else (0, 0)
        kernel.append(k)
        dilation.append(d)
        stride.append(draw(st.integers(1, 3)))
        padding += [lo, hi]
    attrs: dict[str, Any] = {"kernel": kernel, "stride": stride, "padding": padding,
                             "dilation": dilation, "ceil_mode": draw(st.booleans())}
    if op == "avg_pool":
        attrs["count_include_pad"] = draw(st.booleans())
    return Value(make(op, [x.node], attrs, loc), x.bound)


@st.composite
def adaptive_pool_layer(draw: st.DrawFn, x: Value, pool: Pool = (),
                        loc: str | None = None) -> Value:
    """adaptive_avg_pool to any size from 1 up to a little larger than the input."""
    size = [draw(st.integers(1, min(MAX_DIM, s + 2))) for s in x.shape[2:]]
    return Value(make("adaptive_avg_pool", [x.node], {"size": size}, loc), x.bound)


@st.composite
def resize_layer(draw: st.DrawFn, x: Value, pool: Pool = (), loc: str | None = None) -> Value:
    """resize, nearest or (bi)linear with or without align_corners, by a scale factor (the
    output size is floor(in * scale), scale recorded) or to an explicit size (scale 0)."""
    mode = draw(st.sampled_from(["nearest", "bilinear"]))
    size, scales = [], []
    for s in x.shape[2:]:
        factors = [f for f in (2.0, 0.5, 1.5, 3.0) if 1 <= math.floor(s * f) <= MAX_DIM]
        if factors and draw(st.booleans()):
            f = draw(st.sampled_from(factors))
            size.append(math.floor(s * f))
            scales.append(f)
        else:
            size.append(draw(st.integers(1, min(MAX_DIM, 2 * s + 1))))
            scales.append(0.0)
    align = draw(st.booleans()) if mode == "bilinear" else False
    attrs = {"size": size, "mode": mode, "scales": scales, "align_corners": align}
    return Value(make("resize", [x.node], attrs, loc), x.bound)


@st.composite
def pixel_shuffle_layer(draw: st.DrawFn, x: Value, pool: Pool = (),
                        loc: str | None = None) -> Value:
    """pixel_shuffle by 2 or 3; when the channels do not divide, a 1x1 conv first makes them."""
    factors = [f for f in (2, 3) if x.shape[2] * f <= MAX_DIM and x.shape[3] * f <= MAX_DIM]
    f = draw(st.sampled_from(factors))
    if x.shape[1] % (f * f):
        c = x.shape[1]
        cout = f * f * draw(st.integers(1, 2))
        w_node, w = _param(draw, (cout, c, 1, 1), loc, "expand", _fan_in_bound(c))
        conv = make("conv", [x.node, w_node], {"stride": [1, 1], "padding": [0] * 4,
                                               "dilation": [1, 1]}, loc)
        x = Value(conv, _weighted_bound(x.bound, w, 0, None))
    return Value(make("pixel_shuffle", [x.node], {"factor": f}, loc), x.bound)


def _prime_factors(n: int) -> list[int]:
    out, p = [], 2
    while n > 1:
        while n % p == 0:
            out.append(p)
            n //= p
        p += 1
    return out


@st.composite
def reshape_layer(draw: st.DrawFn, x: Value, pool: Pool = (), loc: str | None = None) -> Value:
    """reshape: flatten (N, -1), insert or drop a unit axis, or regroup the element count into
    1-4 random factors."""
    shape = list(x.shape)
    kinds = ["regroup", "unsqueeze"] + ["flatten"] * (x.rank >= 3) + ["squeeze"] * (1 in shape)
    kind = draw(st.sampled_from(kinds))
    if kind == "flatten":
        new = [shape[0], math.prod(shape[1:])]
    elif kind == "unsqueeze" and x.rank < MAX_RANK:
        new = shape[:]
        new.insert(draw(st.integers(0, x.rank)), 1)
    elif kind == "squeeze":
        ones = [i for i, s in enumerate(shape) if s == 1]
        del shape[draw(st.sampled_from(ones))]
        new = shape
    else:
        factors = draw(st.permutations(_prime_factors(x.size)))
        rank = draw(st.integers(1, MAX_RANK))
        new = [1] * rank
        for f in factors:
            new[draw(st.integers(0, rank - 1))] *= f
    return Value(make("reshape", [x.node], {"shape": new}, loc), x.bound)


@st.composite
def permute_layer(draw: st.DrawFn, x: Value, pool: Pool = (), loc: str | None = None) -> Value:
    """permute by a random permutation (NCHW <-> NHWC and friends)."""
    perm = draw(st.permutations(range(x.rank)))
    return Value(make("permute", [x.node], {"perm": perm}, loc), x.bound)


@st.composite
def flip_layer(draw: st.DrawFn, x: Value, pool: Pool = (), loc: str | None = None) -> Value:
    """Reverse a random non-empty set of axes (negative axes included)."""
    axes = draw(st.lists(st.integers(0, x.rank - 1), min_size=1, max_size=x.rank, unique=True))
    axes = [a - x.rank if draw(st.booleans()) else a for a in axes]
    return Value(make("flip", [x.node], {"axes": axes}, loc), x.bound)


@st.composite
def slice_layer(draw: st.DrawFn, x: Value, pool: Pool = (), loc: str | None = None) -> Value:
    """A non-empty slice along any axis: negative axis/start/end, steps 1-3, and ends past the
    size (as torch records `x[1:]`)."""
    axis = draw(st.integers(-x.rank, x.rank - 1))
    size = x.shape[axis]
    start = draw(st.integers(0, size - 1))
    end = draw(st.integers(start + 1, size))
    step = draw(st.integers(1, 3))
    if draw(st.booleans()):
        start -= size
    if end == size:
        end = draw(st.sampled_from([size, size + 3, 2**31 - 1, 2**63 - 1]))
    elif draw(st.booleans()):
        end -= size
    attrs = {"axis": axis, "start": start, "end": end, "step": step}
    return Value(make("slice", [x.node], attrs, loc), x.bound)


@st.composite
def concat_layer(draw: st.DrawFn, x: Value, pool: Pool = (), loc: str | None = None) -> Value:
    """concat of x with earlier values (or itself, or a constant) that match it off the axis."""
    axis = draw(st.integers(-x.rank, x.rank - 1))
    a = axis % x.rank

    def fits(v: Value) -> bool:
        return v.rank == x.rank and all(
            s == t for i, (s, t) in enumerate(zip(v.shape, x.shape, strict=True)) if i != a)

    partners = [v for v in pool if fits(v)] + [x]
    parts = [x]
    for _ in range(draw(st.integers(1, 2))):
        if draw(st.booleans()):
            parts.append(draw(st.sampled_from(partners)))
        else:
            shape = list(x.shape)
            shape[a] = draw(st.integers(1, 3))
            node, array = _param(draw, shape, loc, f"part{len(parts)}")
            parts.append(Value(node, _amax(array)))
    parts = draw(st.permutations(parts))
    node = make("concat", [p.node for p in parts], {"axis": axis}, loc)
    return Value(node, max(p.bound for p in parts))


@st.composite
def pad_layer(draw: st.DrawFn, x: Value, pool: Pool = (), loc: str | None = None) -> Value:
    """Constant pad of some axes by (lo, hi) in [-2, 2]; negative amounts crop, never to empty."""
    pads = []
    for size in x.shape:
        if draw(st.booleans()):
            lo = draw(st.integers(-min(2, size - 1), 2))
            hi = draw(st.integers(-min(2, size + lo - 1), 2))
        else:
            lo = hi = 0
        pads += [lo, hi]
    value = draw(st.one_of(st.just(0.0), st.floats(-2, 2, width=32)))
    return Value(make("pad", [x.node], {"pads": pads, "value": value}, loc),
                 max(x.bound, abs(value)))


@st.composite
def expand_layer(draw: st.DrawFn, x: Value, pool: Pool = (), loc: str | None = None) -> Value:
    """expand unit axes to 1-4 and possibly prepend new leading axes."""
    shape = [draw(st.integers(1, 4)) if s == 1 else s for s in x.shape]
    lead = draw(st.integers(0 if 1 in x.shape else 1, MAX_RANK - x.rank))
    shape = [draw(st.integers(1, 2)) for _ in range(lead)] + shape
    return Value(make("expand", [x.node], {"shape": shape}, loc), x.bound)


@st.composite
def reduce_layer(draw: st.DrawFn, x: Value, pool: Pool = (), loc: str | None = None) -> Value:
    """mean/sum/amax/amin over a non-empty set of distinct axes (some written negative)."""
    op = draw(st.sampled_from(list(REDUCE_OPS)))
    axes = draw(st.lists(st.integers(0, x.rank - 1), min_size=1, max_size=x.rank, unique=True))
    axes = [a - x.rank if draw(st.booleans()) else a for a in axes]
    keepdim = draw(st.booleans())
    count = math.prod(x.shape[a] for a in axes)
    bound = x.bound * count if op == "sum" else x.bound
    return Value(make(op, [x.node], {"axes": axes, "keepdim": keepdim}, loc), bound)


@st.composite
def gather_layer(draw: st.DrawFn, x: Value, pool: Pool = (), loc: str | None = None) -> Value:
    """gather along an axis with constant int64 indices in [0, size) (the op's domain: capture
    makes negative constant indices positive), of rank 0 (select) up to what keeps the result
    within MAX_RANK."""
    axis = draw(st.integers(-x.rank, x.rank - 1))
    size = x.shape[axis]
    idx_rank = draw(st.integers(0, min(2, MAX_RANK - x.rank + 1)))
    shape = tuple(draw(st.integers(1, 3)) for _ in range(idx_rank))
    idx = draw(hnp.arrays(np.int64, shape, elements=st.integers(0, size - 1)))
    node = const(idx, DType.I64, loc=f"{loc}.index" if loc else None)
    return Value(make("gather", [x.node, node], {"axis": axis}, loc), x.bound)


@dataclass(frozen=True)
class Family:
    """A layer builder, the values it accepts, and how often `graphs()` picks it."""

    name: str
    build: Callable[..., st.SearchStrategy[Value | None]]
    applies: Callable[[Value], bool]
    ops: tuple[str, ...]  # the IR ops it can emit (besides const and guard ops)
    weight: int = 1


def _spatial(v: Value) -> bool:
    return v.rank in (3, 4)


FAMILIES: dict[str, Family] = {f.name: f for f in [
    Family("conv", conv_layer, _spatial, ("conv",), weight=2),
    Family("conv_transpose", conv_transpose_layer, _spatial, ("conv_transpose",)),
    Family("linear", linear_layer, lambda v: v.rank >= 1, ("linear",)),
    Family("matmul", matmul_layer, lambda v: v.rank >= 1, ("matmul", "permute")),
    Family("batch_norm", batch_norm_layer, lambda v: v.rank >= 2, ("batch_norm",)),
    Family("layer_norm", layer_norm_layer, lambda v: v.rank >= 1, ("layer_norm",)),
    Family("group_norm", group_norm_layer, lambda v: v.rank >= 2, ("group_norm",)),
    Family("unary", unary_layer, lambda v: True, UNARY_OPS, weight=4),
    Family("prelu", prelu_layer, lambda v: True, ("prelu",)),
    Family("binary", binary_layer, lambda v: True, BINARY_OPS, weight=3),
    Family("where", where_layer, lambda v: True, ("where", *COMPARE_OPS)),
    Family("softmax", softmax_layer, lambda v: v.rank >= 1, ("softmax", "log_softmax")),
    Family("glu", glu_layer, lambda v: any(s % 2 == 0 for s in v.shape), ("glu",)),
    Family("pool", pool_layer, _spatial, ("max_pool", "avg_pool")),
    Family("adaptive_pool", adaptive_pool_layer, _spatial, ("adaptive_avg_pool",)),
    Family("resize", resize_layer, _spatial, ("resize",)),
    Family("pixel_shuffle", pixel_shuffle_layer,
           lambda v: v.rank == 4 and v.shape[2] * 2 <= MAX_DIM and v.shape[3] * 2 <= MAX_DIM,
           ("pixel_shuffle", "conv")),
    Family("reshape", reshape_layer, lambda v: True, ("reshape",)),
    Family("permute", permute_layer, lambda v: v.rank >= 2, ("permute",)),
    Family("flip", flip_layer, lambda v: v.rank >= 1, ("flip",)),
    Family("slice", slice_layer, lambda v: v.rank >= 1, ("slice",)),
    Family("concat", concat_layer, lambda v: v.rank >= 1, ("concat",)),
    Family("pad", pad_layer, lambda v: v.rank >= 1, ("pad",)),
    Family("expand", expand_layer, lambda v: 1 in v.shape or v.rank < MAX_RANK, ("expand",)),
    Family("reduce", reduce_layer, lambda v: v.rank >= 1, REDUCE_OPS),
    Family("gather", gather_layer, lambda v: v.rank >= 1, ("gather",)),
]}

def accepting_layouts(families: Sequence[Family]) -> list[str]:
    """The LAYOUTS whose (2, 2, ...) example some of `families` accepts (so a graph restricted
    to, say, convolutions gets an image or a signal, not a feature vector)."""
    out = []
    for layout in LAYOUTS:
        x = Value(graph_input("x", TensorType((2,) * len(layout), F32)), 1.0)  # a letter/axis
        if any(f.applies(x) for f in families):
            out.append(layout)
    return out or list(LAYOUTS)


# Ops no family emits, and why (test_random_graphs checks this list against the op table).
NOT_GENERATED = {
    "input": "a graph leaf",
    "const": "a graph leaf",
    "cast": "changes dtype; these graphs are float32",
    "logical_not": "bool only",
    "logical_and": "bool only",
    "logical_or": "bool only",
    "state": "stateful_graphs adds it",
    "reuse": "stateful_graphs adds it",
    **{op: "integer only (tests/quant)" for op in OPS if _integer_only(op)},
}


# --------------------------------------------------------------------------- graphs


def _squash(v: Value, loc: str | None) -> Value:
    """tanh of a value whose bound grew past MAX_BOUND (computed values are still finite)."""
    return Value(make("tanh", [v.node], loc=loc), 1.0)


_NAME_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-"


def _locs(draw: st.DrawFn) -> Callable[[int, str], str | None]:
    """Module-path locs (as capture records), none at all, or arbitrary text (for the printer's
    escaping)."""
    style = draw(st.sampled_from(["path", "path", "none", "text"]))
    if style == "none":
        return lambda i, name: None
    if style == "text":
        return lambda i, name: draw(st.text(max_size=6))
    return lambda i, name: f"layers.{i}.{name}"


def _count_ops(root: Node, seen: set[int]) -> int:
    stack, count = [root], 0
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        count += node.op not in ("const", "input")
        stack.extend(node.inputs)
    return count


@st.composite
def graphs(draw: st.DrawFn, *, families: Sequence[str] | None = None, layout: str | None = None,
           max_layers: int = 8, max_nodes: int = MAX_NODES, max_inputs: int = 2,
           max_outputs: int = 3) -> Graph:
    """A random well-formed float32 graph: 1-`max_inputs` inputs of a drawn layout, then up to
    `max_layers` layers (from `families`, default all), each extending an earlier value (mostly
    the latest) and possibly joining others, so graphs are chains, branches and rejoins.
    The outputs are the last value and up to `max_outputs - 1` other values nothing reads, now
    and then also an intermediate value, a repeat or an input. If no family applies to the
    input, the graph is a single relu."""
    chosen = [FAMILIES[f] for f in (families or FAMILIES)]
    t = draw(tensor_types(layout or draw(st.sampled_from(accepting_layouts(chosen)))))
    n_inputs = draw(st.integers(1, max_inputs))
    names = draw(st.lists(st.text(_NAME_CHARS, min_size=1, max_size=4), min_size=n_inputs,
                          max_size=n_inputs, unique=True))
    types = [t] + [TensorType(_broadcastable_shape(draw, t.shape) if draw(st.booleans())
                              else t.shape, F32) for _ in range(n_inputs - 1)]
    inputs = [graph_input(name, typ) for name, typ in zip(names, types, strict=True)]
    pool = [Value(i, INPUT_BOUND) for i in inputs]
    loc_of = _locs(draw)
    seen: set[int] = set()
    nodes = 0
    # Bias towards full-size graphs: most bugs need a few layers to show.
    for i in range(draw(st.one_of(st.just(max_layers), st.integers(1, max_layers)))):
        # Mostly extend the newest value (deep chains), sometimes an older one (branches).
        x = pool[draw(st.one_of(st.just(len(pool) - 1), st.integers(0, len(pool) - 1)))]
        usable = [f for f in chosen if f.applies(x) for _ in range(f.weight)]
        if not usable:
            continue
        family = draw(st.sampled_from(usable))
        loc = loc_of(i, family.name)
        v = draw(family.build(x, tuple(pool), loc))
        if v is None or v.size > MAX_ELEMENTS or v.size == 0 or v.rank > MAX_RANK:
            continue
        if v.bound > MAX_BOUND:
            v = _squash(v, loc)
        added = _count_ops(v.node, set(seen))
        if nodes + added > max_nodes:
            break
        nodes += _count_ops(v.node, seen)
        pool.append(v)
    if len(pool) == n_inputs:  # every step was skipped: still return a graph with one op
        pool.append(Value(make("relu", [inputs[0]], loc=loc_of(0, "relu")), INPUT_BOUND))
    return Graph(tuple(inputs), _outputs(draw, pool[n_inputs:], max_outputs, inputs),
                 draw(st.sampled_from(["g", "main", "net_1", "a.b-c"])))


def _outputs(draw: st.DrawFn, values: list[Value], max_outputs: int, inputs: list[Node]
             ) -> tuple[Node, ...]:
    read = {id(i) for v in values for n in _walk(v.node) for i in n.inputs}
    sinks = [v.node for v in values if id(v.node) not in read]
    last = values[-1].node
    others = [n for n in sinks if n is not last]
    chosen = draw(st.lists(st.sampled_from(others), unique_by=id, max_size=max_outputs - 1)
                  ) if others else []
    outputs = [*chosen, last] if draw(st.booleans()) else [last, *chosen]
    if draw(st.integers(0, 9)) == 0:  # an intermediate value, a repeat or an input as an output
        outputs.append(draw(st.sampled_from([v.node for v in values] + inputs)))
    return tuple(outputs)


def _walk(root: Node) -> list[Node]:
    out, stack, seen = [], [root], set()
    while stack:
        node = stack.pop()
        if id(node) not in seen:
            seen.add(id(node))
            out.append(node)
            stack.extend(node.inputs)
    return out


@st.composite
def schedules(draw: st.DrawFn, max_steps: int = 8) -> tuple[int, ...]:
    """A reuse schedule: 1 = recompute, step 0 always recomputes."""
    rest = draw(st.lists(st.integers(0, 1), max_size=max_steps - 1))
    return (1, *rest)


@st.composite
def stateful_graphs(draw: st.DrawFn, schedule: tuple[int, ...] | None = None,
                    **kwargs: Any) -> tuple[Graph, Graph]:
    """(a graph from `graphs(**kwargs)` with a `step` input, where 1-2 computed values each go
    through a `reuse` of a state that caches them (by `schedule`, else a drawn one each),
    the graph it was made from). The cache's write is the reuse itself: a reusing step keeps
    what the last recomputing step left."""
    plain = draw(graphs(**kwargs))
    step = graph_input("step", TensorType((), DType.I32))
    computed = [n for n in plain.nodes if n.inputs and n.dtype == F32]
    if not computed:
        return plain.with_outputs(plain.outputs), plain
    chosen = draw(st.lists(st.sampled_from(computed), min_size=1, max_size=2, unique_by=id))
    slots: dict[Node, StateSlot] = {}

    def cache(node: Node, original: Node) -> Node | None:
        if original not in chosen:
            return None
        read = state_read(f"cache{len(slots)}", node.type)
        kept = make("reuse", [node, read, step],
                    {"recompute": schedule or draw(schedules())})
        slots[original] = StateSlot(read, kept)
        return kept

    from npuc.rewrite import rewrite

    cached = rewrite(plain, cache, origin=True)
    graph = Graph(plain.inputs + (step,), cached.outputs, plain.name, {}, tuple(slots.values()))
    return graph.verify(), plain


@st.composite
def graph_and_inputs(draw: st.DrawFn, **kwargs: Any) -> tuple[Graph, tuple[np.ndarray, ...]]:
    """A graph from `graphs(**kwargs)` and input arrays for it in [-INPUT_BOUND, INPUT_BOUND]."""
    graph = draw(graphs(**kwargs))
    arrays = tuple(draw(weights(i.shape, INPUT_BOUND)) for i in graph.inputs)
    return graph, arrays


# --------------------------------------------------------------------------- torch models
# A random torch model is a list of steps, each a torch layer or function applied to earlier
# values; the builder runs every step eagerly as it draws, so each next step sees real shapes.


def _torch():  # noqa: ANN202 - torch is imported lazily: graph-only tests need not load it
    import torch

    return torch


class _Step:
    """One call in a random torch model: fn applied to earlier values (by index)."""

    def __init__(self, fn: Callable[..., Any], args: tuple[int, ...], label: str) -> None:
        self.fn, self.args, self.label = fn, args, label

    def __repr__(self) -> str:
        return f"{self.label}{self.args}"


def _random_net(steps: list[_Step], modules: list[Any], outputs: tuple[int, ...]) -> Any:
    torch = _torch()

    class RandomNet(torch.nn.Module):
        """Runs `steps` in order on the growing list of values; returns the `outputs`."""

        def __init__(self) -> None:
            super().__init__()
            self.layers = torch.nn.ModuleList(modules)  # registered, so eval() and export see them
            self.steps = steps
            self.outs = outputs

        def forward(self, x: Any) -> Any:
            vals = [x]
            for step in self.steps:
                vals.append(step.fn(*(vals[i] for i in step.args)))
            result = tuple(vals[i] for i in self.outs)
            return result[0] if len(result) == 1 else result

        def extra_repr(self) -> str:
            return f"steps={self.steps}, outputs={self.outs}"

    return RandomNet().eval()


@dataclass
class _TorchCtx:
    """What a torch layer builder sees: the values so far, the one to extend, a generator."""

    draw: st.DrawFn
    vals: list[Any]
    src: int
    gen: Any

    @property
    def x(self) -> Any:
        return self.vals[self.src]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape)

    @property
    def channels(self) -> int:
        return self.shape[1] if len(self.shape) > 1 else 1

    def fn(self, fn: Callable[..., Any], label: str, *others: int) -> _Built:
        return fn, (self.src, *others), None, label

    def module(self, module: Any) -> _Built:
        return module, (self.src,), module, type(module).__name__


_Built = tuple[Callable[..., Any], tuple[int, ...], Any, str]  # fn, arg indices, module, label
_TORCH_LAYERS: dict[str, tuple[Callable[[tuple[int, ...]], bool],
                               Callable[[_TorchCtx], _Built]]] = {}


def _torch_layer(name: str, applies: Callable[[tuple[int, ...]], bool] = lambda s: True
                 ) -> Callable[[Callable[[_TorchCtx], _Built]], Callable[[_TorchCtx], _Built]]:
    def register(build: Callable[[_TorchCtx], _Built]) -> Callable[[_TorchCtx], _Built]:
        _TORCH_LAYERS[name] = (applies, build)
        return build

    return register


def _norm_stats(module: Any, gen: Any) -> Any:
    """Random affine and running statistics, so a norm layer is never an identity."""
    torch = _torch()
    with torch.no_grad():
        if getattr(module, "weight", None) is not None:
            module.weight.copy_(torch.rand(module.weight.shape, generator=gen) + 0.5)
            module.bias.copy_(torch.rand(module.bias.shape, generator=gen) - 0.5)
        if getattr(module, "running_mean", None) is not None:
            module.running_mean.copy_(torch.rand(module.running_mean.shape, generator=gen) - 0.5)
            module.running_var.copy_(torch.rand(module.running_var.shape, generator=gen) + 0.5)
    return module


def _rank(*ranks: int) -> Callable[[tuple[int, ...]], bool]:
    return lambda s: len(s) in ranks


@_torch_layer("activation")
def _t_activation(c: _TorchCtx) -> _Built:
    nn = _torch().nn
    make_act = c.draw(st.sampled_from([
        nn.ReLU, nn.ReLU6, nn.Sigmoid, nn.SiLU, nn.Tanh, nn.Hardsigmoid, nn.Hardswish, nn.GELU,
        lambda: nn.GELU(approximate="tanh"), lambda: nn.LeakyReLU(0.1),
        lambda: nn.Hardtanh(-0.5, 1.5), nn.PReLU, lambda: nn.PReLU(c.channels), nn.Softsign,
        nn.Tanhshrink, lambda: nn.Hardshrink(0.3),
        # ELU, SELU, CELU, Softplus, Mish, LogSigmoid: capture has no lowering for aten.elu,
        # aten.expm1 or aten.log1p (yet).
    ]))
    return c.module(make_act())


@_torch_layer("math")
def _t_math(c: _TorchCtx) -> _Built:
    """Unary math as models write it, domain-safe: exp(-|x|), sqrt(|x| + .5), x ** 2, ..."""
    torch = _torch()
    name, fn = c.draw(st.sampled_from([
        ("exp", lambda t: torch.exp(-t.abs())), ("sqrt", lambda t: torch.sqrt(t.abs() + 0.5)),
        ("rsqrt", lambda t: torch.rsqrt(t.abs() + 0.5)), ("log", lambda t: torch.log(t.abs() + 1)),
        ("square", lambda t: t.pow(2)), ("reciprocal", lambda t: 1 / (t.abs() + 1)),
        ("erf", torch.erf), ("neg", torch.neg), ("clamp", lambda t: t.clamp(-0.3, 0.8)),
        ("clamp_min", lambda t: t.clamp(min=0.2)),
    ]))
    return c.fn(fn, name)


@_torch_layer("scale_shift")
def _t_scale_shift(c: _TorchCtx) -> _Built:
    a, b = c.draw(st.floats(-2, 2, width=32)), c.draw(st.floats(-2, 2, width=32))
    return c.fn(lambda t: t * a + b, f"*{a}+{b}")


@_torch_layer("binary")
def _t_binary(c: _TorchCtx) -> _Built:
    """x op y for an earlier y of the same shape: residual add, gating, max, safe division..."""
    torch = _torch()
    same = [i for i, v in enumerate(c.vals) if tuple(v.shape) == c.shape]
    other = c.draw(st.sampled_from(same))
    name, fn = c.draw(st.sampled_from([
        ("add", lambda t, u: t + u), ("sub", lambda t, u: t - u),
        ("gate", lambda t, u: t * torch.sigmoid(u)), ("maximum", torch.maximum),
        ("minimum", torch.minimum), ("div", lambda t, u: t / (u.abs() + 0.5)),
        ("where", lambda t, u: torch.where(t > 0.1, t, u)),
        ("masked_fill", lambda t, u: t.masked_fill(u > 0.5, -1.0)),
    ]))
    return c.fn(fn, name, other)


@_torch_layer("linear")
def _t_linear(c: _TorchCtx) -> _Built:
    nn = _torch().nn
    fout = c.draw(st.integers(1, MAX_CHANNELS))
    return c.module(nn.Linear(c.shape[-1], fout, bias=c.draw(st.booleans())))


@_torch_layer("softmax")
def _t_softmax(c: _TorchCtx) -> _Built:
    F = _torch().nn.functional
    dim = c.draw(st.integers(-len(c.shape), len(c.shape) - 1))
    fn = c.draw(st.sampled_from([F.softmax, F.log_softmax]))
    return c.fn(lambda t: fn(t, dim=dim), f"{fn.__name__}({dim})")


@_torch_layer("layer_norm")
def _t_layer_norm(c: _TorchCtx) -> _Built:
    nn = _torch().nn
    ndim = c.draw(st.integers(1, min(2, len(c.shape))))
    return c.module(_norm_stats(nn.LayerNorm(c.shape[-ndim:]), c.gen))


@_torch_layer("rms_norm")
def _t_rms_norm(c: _TorchCtx) -> _Built:
    """Llama's hand-written RMSNorm (fold_norms makes it one layer_norm {rms})."""
    torch = _torch()
    gain = torch.rand(c.shape[-1], generator=c.gen) + 0.5
    eps = c.draw(st.sampled_from([1e-6, 1e-5]))
    return c.fn(lambda t: gain * (t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + eps)),
                "rms_norm")


@_torch_layer("reduce", lambda s: len(s) >= 2)
def _t_reduce(c: _TorchCtx) -> _Built:
    torch = _torch()
    rank = len(c.shape)
    dims = tuple(c.draw(st.lists(st.integers(1, rank - 1), min_size=1, unique=True)))
    keep = c.draw(st.booleans())
    fn = c.draw(st.sampled_from([torch.mean, torch.sum, torch.amax, torch.amin]))
    return c.fn(lambda t: fn(t, dim=dims, keepdim=keep), f"{fn.__name__}{dims}")


@_torch_layer("expand_back", lambda s: len(s) >= 2)
def _t_expand_back(c: _TorchCtx) -> _Built:
    """x - mean over an axis, broadcast back (expand_as): centring as normalisations write it."""
    dim = c.draw(st.integers(1, len(c.shape) - 1))
    return c.fn(lambda t: t - t.mean(dim, keepdim=True).expand_as(t), f"center({dim})")


@_torch_layer("glu", lambda s: any(d % 2 == 0 for d in s[1:]))
def _t_glu(c: _TorchCtx) -> _Built:
    F = _torch().nn.functional
    dim = c.draw(st.sampled_from([d for d in range(1, len(c.shape)) if c.shape[d] % 2 == 0]))
    return c.fn(lambda t: F.glu(t, dim=dim), f"glu({dim})")


@_torch_layer("slice", lambda s: len(s) >= 2)
def _t_slice(c: _TorchCtx) -> _Built:
    """Basic indexing: a strided slice, select, chunk/split, or a constant index list."""
    torch = _torch()
    dim = c.draw(st.integers(1, len(c.shape) - 1))
    size = c.shape[dim]
    kind = c.draw(st.sampled_from(["slice", "select", "chunk", "index"]))
    lead = (slice(None),) * dim
    if kind == "slice":
        start, step = c.draw(st.integers(0, size - 1)), c.draw(st.integers(1, 2))
        return c.fn(lambda t: t[(*lead, slice(start, None, step))], f"[{start}::{step}]@{dim}")
    if kind == "select" and len(c.shape) > 2:
        i = c.draw(st.integers(-size, size - 1))
        return c.fn(lambda t: t.select(dim, i), f"select({dim}, {i})")
    if kind == "chunk" and size >= 2:
        k = c.draw(st.integers(0, 1))
        return c.fn(lambda t: torch.chunk(t, 2, dim=dim)[k], f"chunk({dim})[{k}]")
    idx = c.draw(st.lists(st.integers(-size, size - 1), min_size=1, max_size=4))
    return c.fn(lambda t: t[(*lead, torch.tensor(idx))], f"index{idx}@{dim}")


@_torch_layer("permute", lambda s: len(s) >= 3)
def _t_permute(c: _TorchCtx) -> _Built:
    perm = (0, *c.draw(st.permutations(range(1, len(c.shape)))))
    return c.fn(lambda t: t.permute(perm), f"permute{perm}")


@_torch_layer("reshape", lambda s: len(s) >= 3)
def _t_reshape(c: _TorchCtx) -> _Built:
    torch = _torch()
    name, fn = c.draw(st.sampled_from([
        ("flatten", lambda t: torch.flatten(t, 1)), ("flatten_last", lambda t: t.flatten(-2)),
        ("stack", lambda t: torch.stack([t, -t], 1).flatten(1, 2)),
    ]))
    return c.fn(fn, name)


@_torch_layer("matmul", lambda s: len(s) >= 3)
def _t_matmul(c: _TorchCtx) -> _Built:
    """x @ x^T (a Gram matrix, as attention scores) scaled to stay O(1)."""
    scale = 1 / c.shape[-1]
    return c.fn(lambda t: (t @ t.transpose(-1, -2)) * scale, "gram")


@_torch_layer("attention", _rank(3))
def _t_attention(c: _TorchCtx) -> _Built:
    return c.module(_attention_class()(c.shape[-1], c.draw(st.integers(1, MAX_CHANNELS))))


def _conv_kwargs(c: _TorchCtx) -> dict[str, Any]:
    channels, spatial = c.channels, c.shape[2:]
    groups = c.draw(st.sampled_from(sorted({1, channels, *_divisors(channels)})))
    k = c.draw(st.integers(1, 3))
    d = c.draw(st.integers(1, 2)) if min(spatial) > 2 * k else 1
    if c.draw(st.booleans()):
        stride, padding = 1, "same"
    else:
        stride = c.draw(st.integers(1, 2))
        span = d * (k - 1) + 1
        pads = []
        for size in spatial:  # per axis, at least enough for one output
            need = max(0, -(-(span - size) // 2))
            pads.append(c.draw(st.integers(need, max(need, span // 2))))
        padding = tuple(pads)
    return dict(in_channels=channels, kernel_size=k, stride=stride, padding=padding, dilation=d,
                groups=groups, bias=c.draw(st.booleans()),
                out_channels=groups * c.draw(st.integers(1, max(1, MAX_CHANNELS // groups))))


@_torch_layer("conv2d", _rank(4))
def _t_conv2d(c: _TorchCtx) -> _Built:
    return c.module(_torch().nn.Conv2d(**_conv_kwargs(c)))


@_torch_layer("conv1d", _rank(3))
def _t_conv1d(c: _TorchCtx) -> _Built:
    return c.module(_torch().nn.Conv1d(**_conv_kwargs(c)))


@_torch_layer("conv_transpose2d", _rank(4))
def _t_conv_transpose2d(c: _TorchCtx) -> _Built:
    nn = _torch().nn
    groups = c.draw(st.sampled_from(_divisors(c.channels)))
    k, d = c.draw(st.integers(1, 3)), c.draw(st.integers(1, 2))
    s = c.draw(st.integers(1, 2)) if max(c.shape[2:]) * 2 + 2 * k <= MAX_DIM else 1
    return c.module(nn.ConvTranspose2d(
        c.channels, groups * c.draw(st.integers(1, 2)), k, s,
        padding=c.draw(st.integers(0, d * (k - 1) // 2)),
        output_padding=c.draw(st.integers(0, max(s, d) - 1)), groups=groups, dilation=d,
        bias=c.draw(st.booleans())))


@_torch_layer("batch_norm", lambda s: len(s) in (2, 3, 4))
def _t_batch_norm(c: _TorchCtx) -> _Built:
    nn = _torch().nn
    cls = nn.BatchNorm2d if len(c.shape) == 4 else nn.BatchNorm1d
    return c.module(_norm_stats(cls(c.channels), c.gen))


@_torch_layer("group_norm", lambda s: len(s) >= 3 and math.prod(s[1:]) > 1)
def _t_group_norm(c: _TorchCtx) -> _Built:
    nn = _torch().nn
    per_channel = math.prod(c.shape[2:])
    # torch refuses groups of a single value
    groups = c.draw(st.sampled_from([g for g in _divisors(c.channels)
                                     if c.channels // g * per_channel > 1]))
    return c.module(_norm_stats(nn.GroupNorm(groups, c.channels), c.gen))


@_torch_layer("nhwc_layer_norm", _rank(4))
def _t_nhwc_layer_norm(c: _TorchCtx) -> _Built:
    """ConvNeXt's norm: permute to channels-last, layer norm over C, permute back."""
    norm = _norm_stats(_torch().nn.LayerNorm(c.channels), c.gen)
    return (lambda t: norm(t.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)), (c.src,), norm, "nhwc_norm"


@_torch_layer("pool2d", _rank(4))
def _t_pool2d(c: _TorchCtx) -> _Built:
    """Max/avg pooling with padding up to half the kernel, ceil_mode, count_include_pad, and
    (max) dilation without padding, so that no window is all padding."""
    nn = _torch().nn
    k = c.draw(st.integers(1, min(3, *c.shape[2:])))
    kw: dict[str, Any] = dict(kernel_size=k, stride=c.draw(st.integers(1, 3)),
                              ceil_mode=c.draw(st.booleans()))
    if c.draw(st.booleans()):
        dilation = 2 if min(c.shape[2:]) >= 2 * k - 1 and c.draw(st.booleans()) else 1
        return c.module(nn.MaxPool2d(**kw, dilation=dilation,
                                     padding=0 if dilation > 1 else c.draw(st.integers(0, k // 2))))
    return c.module(nn.AvgPool2d(**kw, padding=c.draw(st.integers(0, k // 2)),
                                 count_include_pad=c.draw(st.booleans())))


@_torch_layer("pool1d", _rank(3))
def _t_pool1d(c: _TorchCtx) -> _Built:
    F = _torch().nn.functional
    k = c.draw(st.integers(1, min(3, c.shape[2])))
    s, p, ceil = c.draw(st.integers(1, 2)), c.draw(st.integers(0, k // 2)), c.draw(st.booleans())
    fn = c.draw(st.sampled_from([F.max_pool1d, F.avg_pool1d]))
    return c.fn(lambda t: fn(t, k, s, p, ceil_mode=ceil), f"{fn.__name__}({k}, {s}, {p})")


@_torch_layer("adaptive_avg_pool2d", _rank(4))
def _t_adaptive(c: _TorchCtx) -> _Built:
    size = tuple(c.draw(st.integers(1, s + 1)) for s in c.shape[2:])
    return c.module(_torch().nn.AdaptiveAvgPool2d(size))


@_torch_layer("interpolate", _rank(4))
def _t_interpolate(c: _TorchCtx) -> _Built:
    F = _torch().nn.functional
    mode = c.draw(st.sampled_from(["nearest", "bilinear"]))
    align = c.draw(st.booleans()) if mode == "bilinear" else None
    scales = [f for f in (2.0, 0.5, 1.5, 3.0)
              if all(1 <= math.floor(s * f) <= MAX_DIM for s in c.shape[2:])]
    if scales and c.draw(st.booleans()):
        f = c.draw(st.sampled_from(scales))
        return c.fn(lambda t: F.interpolate(t, scale_factor=f, mode=mode, align_corners=align),
                    f"interpolate({mode}, x{f}, {align})")
    size = tuple(c.draw(st.integers(1, MAX_DIM)) for _ in c.shape[2:])
    return c.fn(lambda t: F.interpolate(t, size=size, mode=mode, align_corners=align),
                f"interpolate({mode}, {size}, {align})")


@_torch_layer("pixel_shuffle", lambda s: len(s) == 4 and s[1] % 4 == 0
              and max(s[2:]) * 2 <= MAX_DIM)
def _t_pixel_shuffle(c: _TorchCtx) -> _Built:
    return c.module(_torch().nn.PixelShuffle(2))


@_torch_layer("pixel_unshuffle", lambda s: len(s) == 4 and s[2] % 2 == 0 and s[3] % 2 == 0)
def _t_pixel_unshuffle(c: _TorchCtx) -> _Built:
    return c.module(_torch().nn.PixelUnshuffle(2))


@_torch_layer("cat", lambda s: len(s) >= 2)
def _t_cat(c: _TorchCtx) -> _Built:
    torch = _torch()
    dim = c.draw(st.integers(1, len(c.shape) - 1))
    fits = [i for i, v in enumerate(c.vals) if v.dim() == len(c.shape)
            and all(a == b for j, (a, b) in enumerate(zip(v.shape, c.shape, strict=True))
                    if j != dim)]
    other = c.draw(st.sampled_from(fits))
    return c.fn(lambda t, u: torch.cat([t, u], dim=dim), f"cat({dim})", other)


@_torch_layer("pad", lambda s: len(s) >= 3)
def _t_pad(c: _TorchCtx) -> _Built:
    """Asymmetric constant padding of the last one or two axes."""
    F = _torch().nn.functional
    pads = tuple(c.draw(st.integers(0, 2)) for _ in range(2 * min(2, len(c.shape) - 2)))
    value = c.draw(st.floats(-1, 1, width=32))
    return c.fn(lambda t: F.pad(t, pads, value=value), f"pad{pads}")


def _attention_class() -> Any:
    torch = _torch()

    class Attention(torch.nn.Module):
        """Single-head scaled dot-product attention over (N, L, C) tokens."""

        def __init__(self, channels: int, dim: int) -> None:
            super().__init__()
            self.q = torch.nn.Linear(channels, dim)
            self.k = torch.nn.Linear(channels, dim)
            self.v = torch.nn.Linear(channels, dim)
            self.scale = dim ** -0.5

        def forward(self, x: Any) -> Any:
            scores = self.q(x) @ self.k(x).transpose(-2, -1) * self.scale
            return scores.softmax(dim=-1) @ self.v(x)

    return Attention


TORCH_LAYERS = tuple(_TORCH_LAYERS)


@st.composite
def torch_models(draw: st.DrawFn, *, max_layers: int = 6, layers: Sequence[str] = TORCH_LAYERS
                 ) -> tuple[Any, tuple[Any, ...]]:
    """A random small torch module in eval mode and an example input: a DAG of `layers`
    (default all of TORCH_LAYERS: conv incl. groups/dilation/'same', BN with random statistics,
    linear, activations, pooling, interpolate, pixel_shuffle, cat, residual add, softmax,
    layer/group norm, attention, indexing...) on an NCHW, NCL or (N, L, C) input."""
    torch = _torch()
    shape = draw(tensor_types(draw(st.sampled_from(["nchw", "nchw", "ncl", "nlc"])))).shape
    x = torch.from_numpy(draw(weights(shape, INPUT_BOUND)))
    torch.manual_seed(draw(st.integers(0, 2**32 - 1)))  # parameter initialisation
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    vals, steps, modules = [x], [], []
    with torch.no_grad():
        for _ in range(draw(st.one_of(st.just(max_layers), st.integers(1, max_layers)))):
            src = draw(st.one_of(st.just(len(vals) - 1), st.integers(0, len(vals) - 1)))
            shape = tuple(vals[src].shape)
            usable = [name for name in layers if _TORCH_LAYERS[name][0](shape)]
            name = draw(st.sampled_from(usable))
            fn, args, module, label = _TORCH_LAYERS[name][1](_TorchCtx(draw, vals, src, gen))
            if module is not None:
                module.eval()
            out = fn(*(vals[i] for i in args))
            if not 0 < out.numel() <= MAX_ELEMENTS or not torch.isfinite(out).all():
                continue
            if out.abs().max() > MAX_BOUND:  # keep magnitudes moderate, as in real models
                continue
            modules += [module] if module is not None else []
            steps.append(_Step(fn, args, label))
            vals.append(out)
    if not steps:
        steps.append(_Step(torch.relu, (0,), "relu"))
        vals.append(torch.relu(x))
    outputs = (len(vals) - 1,)
    if len(vals) > 2 and draw(st.booleans()):
        outputs += (draw(st.integers(1, len(vals) - 2)),)
    return _random_net(steps, modules, outputs), (x,)


# --------------------------------------------------------------------------- channel nets
# Graphs made of what channel pruning follows (passes/channels.py), each op keeping a channel
# that is zero everywhere zero: layers (a zeroed output row and bias give a zero channel), BN
# (its shift and mean zeroed with it), relu, per-channel scales and shifts, residual adds,
# channel concats, depthwise and grouped convs, pools, spatial means, NCHW <-> NHWC permutes
# and flattens into a linear head. A channel zeroed at its producers (and at the constants that
# shift it) is then zero at every consumer: prune_channels must remove it without a trace.

CHANNEL_STEPS = ("conv", "grouped", "depthwise", "linear", "batch_norm", "relu", "scale",
                 "shift", "residual", "concat", "pool", "mean", "permute", "flatten")


def _channel_conv(draw: st.DrawFn, x: Value, loc: str, groups: int = 1, cout: int | None = None,
                  same: bool = False) -> Value:
    """A conv over (N, C, *spatial) with `groups`, `cout` outputs (default drawn), kernel 1-3;
    `same`: stride 1 and padding that keeps the spatial size."""
    c, nsp = x.shape[1], x.rank - 2
    cout = cout or groups * draw(st.integers(1, max(1, MAX_CHANNELS // groups)))
    k = draw(st.sampled_from([1, 3]))
    stride = [1 if same else draw(st.integers(1, 2)) for _ in range(nsp)]
    w_node, w = _param(draw, (cout, c // groups) + (k,) * nsp, loc, "weight",
                       _fan_in_bound(c // groups * k ** nsp))
    b_node, b = _param(draw, (cout,), loc, "bias", 1.0)
    attrs = {"stride": stride, "padding": [k // 2] * (2 * nsp), "dilation": [1] * nsp,
             "groups": groups}
    return Value(make("conv", [x.node, w_node, b_node], attrs, loc),
                 _weighted_bound(x.bound, w, 0, b))


@st.composite
def channel_nets(draw: st.DrawFn, max_steps: int = 7) -> tuple[Graph, tuple[np.ndarray, ...]]:
    """A random graph of CHANNEL_STEPS on an NCHW, NCL or NC input, ending in a layer (whose
    output channels, a graph output, stay), and an input array for it."""
    x = graph_input("x", draw(tensor_types(draw(st.sampled_from(["nchw", "ncl", "nc"])))))
    v = Value(x, INPUT_BOUND)
    for i in range(draw(st.one_of(st.just(max_steps), st.integers(1, max_steps)))):
        loc = f"layers.{i}"
        spatial = v.rank >= 3
        steps = [s for s in CHANNEL_STEPS if spatial or s in ("linear", "relu", "scale",
                                                             "shift", "residual", "concat")]
        # a layer first: channels owned by no layer (the input's) cannot be pruned
        step = draw(st.sampled_from(steps)) if i else ("conv" if spatial else "linear")
        c = v.shape[1]
        if step == "conv":
            v = _channel_conv(draw, v, loc)
        elif step == "grouped":
            groups = draw(st.sampled_from(_divisors(c)))
            v = _channel_conv(draw, v, loc, groups=groups, cout=groups * draw(st.integers(1, 3)))
        elif step == "depthwise":
            v = _channel_conv(draw, v, loc, groups=c, cout=c * draw(st.integers(1, 2)), same=True)
        elif step == "linear" and not spatial:
            v = draw(linear_layer(v, (), loc))
        elif step == "batch_norm":
            v = draw(batch_norm_layer(v, (), loc))
        elif step == "relu":
            v = Value(make("relu", [v.node], loc=loc), v.bound)
        elif step in ("scale", "shift"):
            shape = (c,) + (1,) * (v.rank - 2)
            node, array = _param(draw, shape, loc, step, lo=0.5, hi=2.0)
            op = "mul" if step == "scale" else "add"
            v = Value(make(op, [v.node, node], loc=loc),
                      v.bound * 2 if op == "mul" else v.bound + 2)
        elif step in ("residual", "concat"):
            branch = (_channel_conv(draw, v, loc + ".branch", cout=c, same=True) if spatial
                      else draw(linear_layer(v, (), loc + ".branch")))
            if step == "residual" and branch.shape == v.shape:
                v = Value(make("add", [v.node, branch.node], loc=loc), v.bound + branch.bound)
            elif step == "concat":
                parts = draw(st.permutations([v, branch]))
                v = Value(make("concat", [p.node for p in parts], {"axis": 1}, loc),
                          max(v.bound, branch.bound))
        elif step == "pool":
            nsp = v.rank - 2
            attrs = {"kernel": [2] * nsp, "stride": [2] * nsp, "padding": [0] * (2 * nsp),
                     "dilation": [1] * nsp, "ceil_mode": True}
            v = Value(make("max_pool", [v.node], attrs, loc), v.bound)
        elif step == "mean":
            v = Value(make("mean", [v.node], {"axes": list(range(2, v.rank))}, loc), v.bound)
        elif step == "permute":  # to channels-last and back: the channel axis moves and returns
            last = [0, *range(2, v.rank), 1]
            there = make("permute", [v.node], {"perm": last}, loc)
            back = [0, v.rank - 1, *range(1, v.rank - 1)]
            v = Value(make("permute", [make("relu", [there], loc=loc)], {"perm": back}, loc),
                      v.bound)
        elif step == "flatten":
            v = Value(make("reshape", [v.node], {"shape": [v.shape[0], v.size // v.shape[0]]},
                           loc), v.bound)
        if v.bound > MAX_BOUND or v.size > MAX_ELEMENTS:
            break
    head = (_channel_conv(draw, v, "head") if v.rank >= 3 else draw(linear_layer(v, (), "head")))
    return Graph((x,), (head.node,)), (draw(weights(x.shape, INPUT_BOUND)),)


@st.composite
def headed_graphs(draw: st.DrawFn, **kwargs: Any) -> tuple[Graph, tuple[np.ndarray, ...]]:
    """`graph_and_inputs(**kwargs)` with every float output read by layers before it leaves the
    graph (a 1x1 conv over axis 1 for an NCL/NCHW value, then a linear over the last axis), so
    the channels of the layers inside reach consumers instead of a graph output."""
    graph, inputs = draw(graph_and_inputs(**kwargs))
    outputs = []
    for k, out in enumerate(graph.outputs):
        v = Value(out, MAX_BOUND)
        if out.dtype.is_float and v.rank >= 1 and v.size:
            if v.rank in (3, 4):
                c, nsp = v.shape[1], v.rank - 2
                w_node, _ = _param(draw, (draw(st.integers(1, 3)), c) + (1,) * nsp,
                                   f"head{k}.conv", "weight", _fan_in_bound(c))
                attrs = {"stride": [1] * nsp, "padding": [0] * (2 * nsp),
                         "dilation": [1] * nsp}
                v = Value(make("conv", [v.node, w_node], attrs, f"head{k}.conv"), v.bound)
            v = draw(linear_layer(v, (), f"head{k}.fc"))
        outputs.append(v.node)
    return Graph(graph.inputs, tuple(outputs), graph.name, graph.meta), inputs
