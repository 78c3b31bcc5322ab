"""equalize: cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization Through Weight
Equalization and Bias Correction"), so that per-tensor weight quantization wastes less range.

Before: %1 = conv(%x, %w1, %b1)   %2 = relu(%1)   %3 = conv(%2, %w2, %b2)
After:  %1 = conv(%x, %w1', %b1 / s)   %2 = relu(%1)   %3 = conv(%2, %w2', %b2)
        w1' = output channel i of w1 divided by s_i, w2' = input channel i of w2 times s_i,
        s_i = (1 / r2_i) * sqrt(r1_i * r2_i) = sqrt(r1_i / r2_i),  r = per-channel max |w|,
        so both layers end with channel ranges sqrt(r1_i * r2_i).

Before: %2 = clamp(%1) {max = 6.0, min = 0.0}                       (ReLU6 between the layers)
After:  %2 = relu(%1)   %3 = minimum(%2, %c)    c_i = 6 / s_i, a per-channel constant

Matched: conv -> activations -> conv (channels on axis 1) and linear -> activations -> linear
(channels last), every intermediate value read only by the next op and no graph output. The
activations, any number of them, must be positively homogeneous per channel, f(x / s) = f(x) / s
for s > 0: relu, leaky_relu, prelu (any slopes), clamp, and maximum/minimum with a per-channel
constant; none at all is fine too. Scaling is exact through all of them (only positive scales
are used), with bounds divided by s. The IR's clamp takes scalar bounds only, so a clamp with a
finite nonzero bound (ReLU6) becomes relu/maximum plus minimum with a per-channel constant; with
`split_clamp=False` such pairs are left alone unless their scales are uniform. Depthwise and
grouped convs take part like any conv: a depthwise layer is the second layer of one pair and the
first of the next, its channel i's input range being the range of its filter(s) i, so a scale
passes through it channel by channel. Chains of pairs are swept until every scale is within
`tolerance` of 1 (at most `iterations` sweeps). Channels with a zero range keep scale 1.

`absorb_bias` (Nagel et al. section 4.2, made exact): where the activations are identity, relu,
leaky_relu or prelu, which are the identity on non-negative inputs, and the first layer's input is
bounded per channel by the ops producing it (clamp, relu, minimum/maximum by constants, sigmoid,
tanh), interval arithmetic gives a lower bound m_i of the first layer's output channel i; when
m_i > 0, c_i = m_i moves from the first layer's bias into the second's (b2 += w2 @ c), which is
exact because the pre-activation stays non-negative (z - c >= 0). Skipped where the second layer
zero-pads (the padded zeros would not be shifted).
The note reports, over the matched pairs, the worst max/min ratio of the shared channels' ranges
and the paper's precision (mean_i p1_i * p2_i, p = r / max r), before and after.
Requires: constant weights. Ensures: the same function within float rounding; every matched pair
has equal per-channel ranges within the tolerance (where its scales were allowed).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from npuc.ir import Graph, Node, const
from npuc.ops import make
from npuc.pipeline import PassContext, register_pass
from npuc.rewrite import rewrite

from .channel_affine import (
    channel_axis,
    channel_vector,
    fold_input_affine,
    fold_output_affine,
    is_layer,
)

_HOMOGENEOUS = ("relu", "leaky_relu", "prelu", "clamp", "maximum", "minimum")
_IDENTITY_ABOVE_ZERO = ("relu", "leaky_relu", "prelu")  # f(x) == x for x >= 0


@dataclass(frozen=True)
class _Pair:
    first: Node
    acts: tuple[Node, ...]
    second: Node

    @property
    def axis(self) -> int:
        return channel_axis(self.first) % len(self.first.shape)

    @property
    def splits(self) -> bool:
        """Whether scaling it needs per-channel clamp bounds."""
        return any(a.op == "clamp" and not all(_scale_free(a.attrs[k]) for k in ("min", "max"))
                   for a in self.acts)


def _scale_free(bound: float) -> bool:
    return bound == 0 or np.isinf(bound)


def _layer(node: Node) -> bool:
    return node.op in ("conv", "linear") and is_layer(node) and node.dtype.is_float


def _bound_const(act: Node, value: Node) -> Node:
    """The constant operand of maximum/minimum(value, c)."""
    a, b = act.inputs
    return b if a is value else a


def _homogeneous(act: Node, value: Node, axis: int) -> bool:
    """Whether act(value) is f(value) with f(x / s) == f(x) / s per channel of `axis`."""
    if act.op in ("maximum", "minimum"):
        return (act.shape == value.shape and channel_vector(
            _bound_const(act, value), value.shape, axis) is not None)
    # the value is read once (a sole reader), so a prelu slope is never the value itself
    return act.op in _HOMOGENEOUS and act.inputs[0] is value


def find_pairs(graph: Graph) -> list[_Pair]:
    """Every layer -> homogeneous activations -> layer chain of single-reader values."""
    pairs = []
    for first in graph.nodes:
        if not _layer(first):
            continue
        axis = channel_axis(first) % len(first.shape)
        value, acts = first, []
        while (reader := graph.sole_reader(value)) is not None:
            if _layer(reader) and reader.op == first.op and reader.inputs[0] is value:
                pairs.append(_Pair(first, tuple(acts), reader))
                break
            if not _homogeneous(reader, value, axis):
                break
            acts.append(reader)
            value = reader
    return pairs


def out_ranges(layer: Node) -> np.ndarray:
    """max |w| per output channel."""
    w = np.abs(layer.inputs[1].data.astype(np.float64))
    return w.reshape(w.shape[0], -1).max(axis=1)


def in_ranges(layer: Node) -> np.ndarray:
    """max |w| per input channel (over every output channel that reads it)."""
    w = np.abs(layer.inputs[1].data.astype(np.float64))
    if layer.op == "linear":
        return w.max(axis=0)
    groups = layer.attrs["groups"]
    per_group = w.reshape((groups, w.shape[0] // groups) + w.shape[1:])
    return per_group.max(axis=(1,) + tuple(range(3, per_group.ndim))).reshape(-1)


def _scales(first: Node, second: Node) -> np.ndarray:
    r1, r2 = out_ranges(first), in_ranges(second)
    live = (r1 > 0) & (r2 > 0)
    s = np.ones_like(r1)
    s[live] = np.sqrt(r1[live] / r2[live])
    return s


def range_metrics(pairs: list[tuple[Node, Node]]) -> tuple[float, float]:
    """What equalization improves, over the channels each pair shares (first layer's output
    channels r1, second's input channels r2): (the worst max/min ratio of r1 or of r2, the
    mean precision): a pair's precision is mean_i p1_i * p2_i with p = r / max r, the objective
    Nagel et al. maximize; it is 1 when every channel uses the whole per-tensor range."""
    ratios, precisions = [1.0], []
    for first, second in pairs:
        r1, r2 = out_ranges(first), in_ranges(second)
        for r in (r1, r2):
            if np.any(r > 0):
                ratios.append(float(r.max() / r[r > 0].min()))
        if r1.max() > 0 and r2.max() > 0:
            precisions.append(float(np.mean(r1 / r1.max() * r2 / r2.max())))
    return max(ratios), float(np.mean(precisions)) if precisions else 1.0


def _channel_const(values: np.ndarray, like: Node, rank: int, axis: int,
                   loc: str | None) -> Node:
    shape = (len(values),) + (1,) * (rank - 1 - axis)
    return const(values.reshape(shape).astype(like.dtype.numpy), like.dtype, loc)


def _rescale_act(act: Node, x: Node, scale: np.ndarray, axis: int) -> Node | None:
    """`act` (reading x) on a value whose channel i was divided by scale_i."""
    rank = len(act.shape)
    if act.op in ("maximum", "minimum"):
        bound = _bound_const(act, x)
        c = channel_vector(bound, x.shape, axis) / scale
        new = _channel_const(c, bound, rank, axis, bound.loc)
        return make(act.op, [new if i is bound else i for i in act.inputs], loc=act.loc)
    if act.op != "clamp":
        return None
    lo, hi = act.attrs["min"], act.attrs["max"]
    if _scale_free(lo) and _scale_free(hi):
        return None
    if np.all(scale == scale[0]):
        return make("clamp", [x], {"min": lo / scale[0], "max": hi / scale[0]}, act.loc)
    y = x  # clamp(x, lo, hi) == minimum(maximum(x, lo), hi), bounds now per channel
    if lo == 0:
        y = make("relu", [y], loc=act.loc)
    elif not np.isinf(lo):
        y = make("maximum", [y, _channel_const(lo / scale, x, rank, axis, act.loc)], loc=act.loc)
    if not np.isinf(hi):
        y = make("minimum", [y, _channel_const(hi / scale, x, rank, axis, act.loc)], loc=act.loc)
    return y


def _equalize(pairs: list[_Pair], iterations: int, tolerance: float, split_clamp: bool
              ) -> tuple[dict[Node, Node], list[np.ndarray], int]:
    """Sweep the pairs until the scales converge: (layer -> rescaled layer, each pair's total
    scale, sweeps run)."""
    current = {layer: layer for p in pairs for layer in (p.first, p.second)}
    totals = [np.ones(p.first.shape[p.axis]) for p in pairs]
    sweeps = 0
    while sweeps < iterations:
        sweeps += 1
        moved = False
        for k, pair in enumerate(pairs):
            first, second = current[pair.first], current[pair.second]
            s = _scales(first, second)
            if np.max(np.abs(s - 1)) <= tolerance:
                continue
            total = totals[k] * s
            if pair.splits and not split_clamp and not np.all(total == total[0]):
                continue
            zeros = np.zeros_like(s)
            current[pair.first] = fold_output_affine(first, 1 / s, zeros)
            current[pair.second] = fold_input_affine(second, s, zeros)
            totals[k] = total
            moved = True
        if not moved:
            break
    return current, totals, sweeps


def _input_bounds(node: Node, axis: int, depth: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (lo, hi) bounds of `node` along `axis` that its producing ops guarantee."""
    channels = node.shape[axis]
    lo, hi = np.full(channels, -np.inf), np.full(channels, np.inf)
    op = node.op
    if op in ("sigmoid", "hardsigmoid"):
        return np.zeros(channels), np.ones(channels)
    if op == "tanh":
        return -np.ones(channels), np.ones(channels)
    if depth == 0 or op not in ("relu", "clamp", "maximum", "minimum"):
        return lo, hi
    value = node.inputs[0]
    if op in ("maximum", "minimum"):
        value = next((i for i in node.inputs if not i.is_const), None)
        c = channel_vector(_bound_const(node, value), node.shape, axis) if value else None
        if value is None or c is None or value.shape != node.shape:
            return lo, hi
    lo, hi = _input_bounds(value, axis, depth - 1)
    if op == "relu":
        return np.maximum(lo, 0), np.maximum(hi, 0)
    if op == "clamp":
        a = node.attrs
        return np.clip(lo, a["min"], a["max"]), np.clip(hi, a["min"], a["max"])
    fn = np.maximum if op == "maximum" else np.minimum
    return fn(lo, c), fn(hi, c)


def _absorbable_shift(layer: Node, tolerance: float) -> np.ndarray | None:
    """c_i = the lower bound of the layer's output channel i, where it is positive."""
    x = layer.inputs[0]
    axis = channel_axis(layer) % len(x.shape)
    lo, hi = _input_bounds(x, axis)
    if layer.op == "conv" and max(layer.attrs["padding"]) > 0:
        lo, hi = np.minimum(lo, 0), np.maximum(hi, 0)  # padded zeros are inputs too
    w = layer.inputs[1].data.astype(np.float64)
    b = layer.inputs[2].data.astype(np.float64) if len(layer.inputs) > 2 else np.zeros(len(w))
    if layer.op == "conv":
        groups = layer.attrs["groups"]
        per_out = np.repeat(np.arange(groups), w.shape[0] // groups)[:, None] * w.shape[1] \
            + np.arange(w.shape[1])  # input channel of each (o, c) weight column
        shape = w.shape[:2] + (1,) * (w.ndim - 2)
        lo_w, hi_w = lo[per_out].reshape(shape), hi[per_out].reshape(shape)
    else:
        lo_w, hi_w = lo[None, :], hi[None, :]
    with np.errstate(invalid="ignore"):
        terms = np.where(w > 0, w * lo_w, np.where(w < 0, w * hi_w, 0.0))
    terms = terms.reshape(len(w), -1)
    bound = b + terms.sum(axis=1)
    magnitude = np.abs(b) + np.abs(terms).sum(axis=1)
    # a margin above rounding, so that the next run finds nothing left to absorb
    shift = np.where(np.isfinite(bound) & (bound > tolerance * magnitude), bound, 0.0)
    return shift if np.any(shift > 0) else None


def _absorb(graph: Graph, tolerance: float) -> tuple[Graph, int]:
    """Move provably positive pre-activation offsets into the next layer's bias."""
    current: dict[Node, Node] = {}
    channels = 0
    for pair in find_pairs(graph):
        if not all(a.op in _IDENTITY_ABOVE_ZERO for a in pair.acts):
            continue
        first = current.get(pair.first, pair.first)
        second = current.get(pair.second, pair.second)
        shift = _absorbable_shift(first, tolerance)
        if shift is None:
            continue
        moved = fold_input_affine(second, np.ones_like(shift), shift)
        if moved is None:
            continue
        current[pair.first] = fold_output_affine(first, np.ones_like(shift), -shift)
        current[pair.second] = moved
        channels += int(np.count_nonzero(shift))
    return _replace_layers(graph, current, {}), channels


def _replace_layers(graph: Graph, layers: dict[Node, Node],
                    acts: dict[Node, tuple[np.ndarray, int]]) -> Graph:
    def rule(node: Node, orig: Node) -> Node | None:
        if orig in layers and layers[orig] is not orig:
            new = layers[orig]
            return new.with_inputs((node.inputs[0],) + new.inputs[1:])
        if orig in acts:
            scale, axis = acts[orig]
            return _rescale_act(node, _act_value(node, orig), scale, axis)
        return None

    return rewrite(graph, rule, origin=True)


def _act_value(node: Node, orig: Node) -> Node:
    """The chain operand of an activation (the non-constant one of maximum/minimum)."""
    if node.op in ("maximum", "minimum"):
        return node.inputs[1] if orig.inputs[0].is_const else node.inputs[0]
    return node.inputs[0]


@register_pass("equalize")
def equalize(graph: Graph, ctx: PassContext, *, iterations: int = 100, tolerance: float = 1e-3,
             split_clamp: bool = True, absorb_bias: bool = False) -> Graph:
    """Cross-layer equalization of conv/linear pairs through ReLU-like activations."""
    pairs = find_pairs(graph)
    before = range_metrics([(p.first, p.second) for p in pairs])
    current, totals, sweeps = _equalize(pairs, iterations, tolerance, split_clamp)
    scaled = {act: (total, p.axis) for p, total in zip(pairs, totals, strict=True)
              if np.any(total != 1) for act in p.acts}
    graph = _replace_layers(graph, current, scaled)
    after = range_metrics([(current[p.first], current[p.second]) for p in pairs])
    note = (f"equalize: {len(pairs)} pairs, {sweeps} sweeps; channel range ratio (worst) "
            f"{before[0]:.1f} -> {after[0]:.1f}, mean precision {before[1]:.2f} -> "
            f"{after[1]:.2f}")
    if absorb_bias:
        graph, channels = _absorb(graph, tolerance)
        note += f"; absorbed bias in {channels} channels"
    ctx.note(note)
    return graph
