"""merge_linear: collapse consecutive linear maps (layer pairs, per-channel scales and biases,
zero padding) into one layer.

Before: %1 = linear(%x, %w1, %b1)   %2 = linear(%1, %w2, %b2)
After:  %2 = linear(%x, %w, %b)      w = w2 @ w1,  b = w2 @ b1 + b2

Before: %1 = conv(%x, %w1, %b1) {3x3, stride s}   %2 = conv(%1, %w2, %b2) {1x1, padding 0, stride t}
After:  %2 = conv(%x, %w, %b) {3x3, stride s*t}   w[o] = sum_m w2[o, m] w1[m],  b = w2 @ b1 + b2

Before: %1 = conv(%x, %w, %b)   %2 = mul(%1, %s)   %3 = add(%2, %t)     (s, t per channel)
After:  %3 = conv(%x, %w * s, %b * s + t)

Before: %1 = pad(%x) {pads = [0, 0, 0, 0, 1, 1, 1, 1], value = 0.0}   %2 = conv(%1, %w) {padding 0}
After:  %2 = conv(%x, %w) {padding = [1, 1, 1, 1]}

Matched, where every intermediate value is read only by the next op (and is no graph output):
- layer pairs: linear -> linear; conv -> pointwise conv (1x1, unpadded, any stride and groups);
  pointwise conv (stride 1) -> conv, when the second conv does not zero-pad or the first has no
  bias (padded zeros would not carry it); also through reshape/permute ops that provably keep
  every channel index in place (same element count before, at and after the channel axis), when
  the layer on one side of them is per-position (linear, or a 1x1 stride-1 unpadded conv);
- mul/div/add/sub/neg by a constant that varies only along the layer's channel axis, right
  after a conv/conv_transpose/linear (output side) or right before one (input side: shifts only
  where `fold_input_affine` is exact, i.e. not through zero padding);
- pad with value 0 (or cropping only) on the spatial axes right before a conv.
Guards: a non-linearity or any other op between, a second reader, a constant that varies along
another axis or grows the shape, padding with a nonzero value, crop-then-pad on one side, and (by
default) a merge whose weight would be larger than the two it replaces (a low-rank bottleneck such
as Linear(512, 64) -> Linear(64, 512); option `allow_growth`): the inequality is lowrank's
`factorisation_shrinks`, so no pair lowrank made is merged back, whatever the pass order.
Options: `allow_growth` (False), `max_sweeps` (64; a fold can bring the next pair together).
Requires: constant weights with data. Ensures: the same function within float rounding (weights
are composed in float64); no matched pattern is left.
"""

from __future__ import annotations

import numpy as np

from npuc.driver import summarize
from npuc.ir import Graph, Node, const
from npuc.ops import make
from npuc.pipeline import PassContext, plural, register_pass
from npuc.rewrite import rewrite

from .channel_affine import fold_input_affine, fold_output_affine
from .channels import AFFINE as _AFFINE
from .channels import channel_axis, is_layer, moved_axis, per_channel_affine
from .lowrank import factorisation_shrinks

_MOVES = ("reshape", "permute")
_MERGEABLE = ("conv", "linear")


def _dense(layer: Node) -> np.ndarray:
    """The layer's weight as float64 (O, I, *k), groups expanded with zeros."""
    w = layer.inputs[1].data.astype(np.float64)
    groups = layer.attrs.get("groups", 1)
    if groups == 1:
        return w
    og, ig = w.shape[0] // groups, w.shape[1]
    dense = np.zeros((w.shape[0], ig * groups) + w.shape[2:])
    for g in range(groups):
        dense[g * og:(g + 1) * og, g * ig:(g + 1) * ig] = w[g * og:(g + 1) * og]
    return dense


def _grouped(dense: np.ndarray, groups: int) -> np.ndarray:
    """The inverse of `_dense` for a block-diagonal weight."""
    if groups == 1:
        return dense
    og, ig = dense.shape[0] // groups, dense.shape[1] // groups
    return np.concatenate([dense[g * og:(g + 1) * og, g * ig:(g + 1) * ig]
                           for g in range(groups)])


def _bias(layer: Node) -> np.ndarray:
    if len(layer.inputs) > 2:
        return layer.inputs[2].data.astype(np.float64)
    return np.zeros(layer.inputs[1].shape[0])


def _pointwise(layer: Node) -> bool:
    """A per-position map: linear, or a 1x1 conv with stride 1 and no padding."""
    if layer.op == "linear":
        return True
    a = layer.attrs
    return (all(k == 1 for k in layer.inputs[1].shape[2:]) and all(s == 1 for s in a["stride"])
            and not any(a["padding"]))


def _matrix(layer: Node) -> np.ndarray:
    """A per-position layer's (out, in) channel matrix."""
    dense = _dense(layer)
    return dense.reshape(dense.shape[:2])


class _Merger:
    """The rewrite rules of one sweep, counting what they fold."""

    def __init__(self, graph: Graph, allow_growth: bool, counts: dict[str, int]) -> None:
        self.graph, self.allow_growth, self.counts = graph, allow_growth, counts

    def __call__(self, node: Node, orig: Node) -> Node | None:
        if node.op in _AFFINE:
            return self._fold_after(node, orig)
        if node.op in ("conv", "linear", "conv_transpose") and node.dtype.is_float:
            return (self._merge(node, orig) or self._fold_pad(node, orig)
                    or self._fold_before(node, orig))
        return None

    def _feeds_only(self, orig_value: Node, orig_reader: Node) -> bool:
        return self.graph.sole_reader(orig_value) is orig_reader

    def _fold_after(self, node: Node, orig: Node) -> Node | None:
        """layer -> per-channel affine: into the layer's output channels."""
        for i, layer in enumerate(node.inputs):
            if is_layer(layer) and layer.dtype.is_float and self._feeds_only(orig.inputs[i], orig):
                affine = per_channel_affine(node, layer, channel_axis(layer))
                if affine is not None:
                    self.counts["affine"] += 1
                    return fold_output_affine(layer, *affine)
        return None

    def _fold_before(self, node: Node, orig: Node) -> Node | None:
        """per-channel affine -> layer: into the layer's input channels, where exact."""
        src, src_orig = node.inputs[0], orig.inputs[0]
        if not (is_layer(node) and src.op in _AFFINE and self._feeds_only(src_orig, orig)):
            return None
        for value in src.inputs:
            if value.is_const:
                continue
            affine = per_channel_affine(src, value, channel_axis(node))
            result = fold_input_affine(node, *affine, x=value) if affine else None
            if result is not None:
                self.counts["affine"] += 1
                return result
        return None

    def _fold_pad(self, node: Node, orig: Node) -> Node | None:
        """Zero pad (or crop) of the spatial axes -> conv: into the conv's padding."""
        pad, pad_orig = node.inputs[0], orig.inputs[0]
        if node.op != "conv" or pad.op != "pad" or not self._feeds_only(pad_orig, orig):
            return None
        pads = pad.attrs["pads"]
        if any(pads[:4]) or (pad.attrs["value"] != 0 and max(pads) > 0):
            return None
        old = node.attrs["padding"]
        if any(q < 0 < p for q, p in zip(pads[4:], old, strict=True)):
            return None  # crop then pad is not one padding
        padding = [q + p for q, p in zip(pads[4:], old, strict=True)]
        self.counts["pad"] += 1
        return make("conv", [pad.inputs[0], *node.inputs[1:]],
                    dict(node.attrs, padding=padding), node.loc)

    def _chain(self, node: Node, orig: Node) -> tuple[Node, list[Node]] | None:
        """The layer feeding `node` through single-reader reshape/permute ops, and those ops
        (producer side first)."""
        moves: list[Node] = []
        cur, org, reader = node.inputs[0], orig.inputs[0], orig
        # `cur` computes the value of position `org` (so org's readers are cur's); walking on
        # through cur's input needs cur to be org rebuilt, not a replacement made in this sweep.
        while self._feeds_only(org, reader) and cur.op in _MOVES and cur.op == org.op:
            moves.append(cur)
            cur, org, reader = cur.inputs[0], org.inputs[0], org
        if not self._feeds_only(org, reader) or cur.op not in _MERGEABLE or not is_layer(cur) \
                or not cur.dtype.is_float:
            return None
        return cur, moves[::-1]

    def _merge(self, node: Node, orig: Node) -> Node | None:
        """layer -> [reshape/permute]* -> layer: one layer (plus the moves, re-sized)."""
        if node.op not in _MERGEABLE or not is_layer(node):
            return None
        found = self._chain(node, orig)
        if found is None:
            return None
        first, moves = found
        axes = _track_channel(first, moves)
        if axes is None or axes[-1] != channel_axis(node) % len(node.inputs[0].shape):
            return None
        if not moves and first.op != node.op:
            return None  # conv and linear mix channels on different axes
        result = None
        if not moves and node.op == "conv" and _unpadded_1x1(node):
            result = self._outer(first, node, _matrix(node), tuple(node.attrs["stride"]))
        elif _pointwise(node):
            merged = self._outer(first, node, _matrix(node), None)
            result = merged and _replay(merged, moves, axes)
        elif _pointwise(first):
            x = _replay(first.inputs[0], moves, axes)
            result = self._inner(first, node, x)
        if result is None or result.type != node.type:
            return None
        self.counts["pairs"] += 1
        return result

    def _outer(self, first: Node, second: Node, m: np.ndarray,
               stride: tuple[int, ...] | None) -> Node | None:
        """`second` (channel matrix `m`) after `first`, in `first`'s geometry."""
        w1 = _dense(first)
        w = np.tensordot(m, w1, axes=([1], [0]))
        b = m @ _bias(first) + _bias(second)
        attrs = dict(first.attrs)
        if stride is not None:
            attrs["stride"] = [s * t for s, t in zip(attrs["stride"], stride, strict=True)]
        return self._build(first, second, first, first.inputs[0], w, b, attrs)

    def _inner(self, first: Node, second: Node, x: Node) -> Node | None:
        """per-position `first` before `second`, in `second`'s geometry, reading `x`."""
        m, b1 = _matrix(first), _bias(first)
        w2 = _dense(second)
        if second.op == "conv" and max(second.attrs["padding"]) > 0 and np.any(b1 != 0):
            return None  # the zero padding would not carry first's bias
        w = np.tensordot(w2, m, axes=([1], [0]))  # (O, *k, I)
        w = np.moveaxis(w, -1, 1)
        b = _bias(second) + np.tensordot(w2, b1, axes=([1], [0])).reshape(len(w2), -1).sum(1)
        return self._build(first, second, second, x, w, b, dict(second.attrs))

    def _build(self, first: Node, second: Node, geometry: Node, x: Node, w: np.ndarray,
               b: np.ndarray, attrs: dict) -> Node | None:
        groups = 1
        if first.op == second.op == "conv" and first.attrs["groups"] == second.attrs["groups"]:
            groups = first.attrs["groups"]  # block-diagonal stays block-diagonal
        if geometry.op == "conv":
            attrs["groups"] = groups
            w = _grouped(w, groups)
        factors = first.inputs[1].type.size + second.inputs[1].type.size
        # lowrank's own acceptance rule: a pair it kept as smaller is never merged back
        if factorisation_shrinks(w.size, factors) and not self.allow_growth:
            return None
        dtype = geometry.inputs[1].dtype
        inputs = [x, const(w.astype(dtype.numpy), dtype, geometry.inputs[1].loc)]
        if len(first.inputs) > 2 or len(second.inputs) > 2:
            loc = (second if len(second.inputs) > 2 else first).inputs[2].loc
            inputs.append(const(b.astype(dtype.numpy), dtype, loc))
        try:
            return make(geometry.op, inputs, attrs, geometry.loc)
        except TypeError:
            return None  # e.g. a stride product that no longer gives the same output size


def _unpadded_1x1(conv: Node) -> bool:
    return all(k == 1 for k in conv.inputs[1].shape[2:]) and not any(conv.attrs["padding"])


def _track_channel(first: Node, moves: list[Node]) -> list[int] | None:
    """The channel axis of first's output, then after each move; None if a move mixes it."""
    axes = [channel_axis(first) % len(first.shape)]
    for move in moves:
        axis = moved_axis(move, axes[-1])
        if axis is None:
            return None
        axes.append(axis)
    return axes


def _replay(x: Node, moves: list[Node], axes: list[int]) -> Node:
    """Apply `moves` to `x`, whose channel count (on axes[0]) may differ from the original."""
    channels = x.shape[axes[0]]
    for move, axis in zip(moves, axes[1:], strict=True):
        attrs = dict(move.attrs)
        if move.op == "reshape":
            attrs["shape"] = [channels if i == axis else s for i, s in enumerate(attrs["shape"])]
        x = make(move.op, [x], attrs, move.loc)
    return x


def _count(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1e6:.2f}M"
    return f"{n / 1e3:.1f}k" if n >= 1000 else str(n)


@register_pass("merge_linear")
def merge_linear(graph: Graph, ctx: PassContext, *, allow_growth: bool = False,
                 max_sweeps: int = 64) -> Graph:
    """Merge consecutive linear maps: layer pairs, per-channel scale/bias, zero padding."""
    counts = {"pairs": 0, "affine": 0, "pad": 0}
    params = summarize(graph).params
    for _ in range(max_sweeps):  # a fold can bring the next pair of a chain together
        done = sum(counts.values())
        graph = rewrite(graph, _Merger(graph, allow_growth, counts), origin=True)
        if sum(counts.values()) == done:
            break
    ctx.note(f"merge_linear: merged {plural(counts['pairs'], 'pair')}, folded "
             f"{plural(counts['affine'], 'scale/bias', 'scales/biases')} and "
             f"{plural(counts['pad'], 'pad')}; {_count(params)} -> "
             f"{_count(summarize(graph).params)} params")
    return graph
