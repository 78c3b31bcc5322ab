"""Channel dependencies: which channels of which values are tied to a layer's output channels.

The one analysis channel pruning (`prune_channels`) and `merge_linear` share (Torch-Pruning's
DependencyGraph idea, in npuc's terms). Two parts:

1. Facts about single ops: the channel axis of a layer (`channel_axis`), a constant read as a
   per-channel vector (`channel_vector`), mul/div/add/sub/neg by one as a per-channel affine map
   (`per_channel_affine`), and where a reshape/permute puts a channel axis (`reshaped_axis`,
   `moved_axis`).
2. `Channels(graph)`: every output channel of every *producer* (conv, conv_transpose, linear, or
   matmul by a constant, with constant float weights; depthwise convs are not producers, they
   carry their input's channels) is an *atom*. The analysis follows each atom forward through the
   graph and records, for every value, which atom sits at each index of each axis it reaches (a
   `labels` array per axis; -1 for channels no producer owns: a graph input's, a constant's).
   Where two values meet position by position (an add, a concat along another axis, the
   contraction of two activations in a matmul), their atoms are *tied*: removed together or not
   at all. A *unit* is a set of tied atoms; a `ChannelGroup` is the producers whose units are
   tied, with the values and consumer layers (whose input channels shrink) they reach.

   Followed: elementwise ops and activations (constants along the axis are sliced, size-1 ones
   broadcast), batch_norm/prelu (their per-channel parameters are sliced), residual adds (tied),
   concat (channel offsets: labels concatenate), depthwise convs (each output carries its input's
   atom; whole conv groups go), grouped convs (a unit takes the same local channel of every group,
   so groups stay equal), reshape/permute/expand/flip/slice(step 1) that keep the channel axis
   whole (a flatten merging it with spatial axes repeats each atom), pools, resize, pads and
   reductions over other axes, and the consumer layers reading it (conv, conv_transpose, linear,
   matmul by a constant: their weight columns go).
   Not followed, and so *pinned* (never pruned, with the reason recorded): a value that is a graph
   output, an op that normalises, pools or reduces over the channel axis (layer_norm, group_norm,
   softmax, mean over channels...), a reshape that splits the axis, a broadcast of one channel
   against many, a channel tied to one no producer owns (x + a graph input), slices with a step,
   gathers and pads along the axis, and any op the rules do not know (integer ops included).

`Channels.prune(units)` rewrites the graph with those units' channels removed from every value,
constant and layer they reach; the result verifies, and computes the same outputs whenever the
removed channels carry zeros into their consumers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from npuc.ir import Graph, Node, const
from npuc.ops import OPS, make

LAYERS = ("conv", "conv_transpose", "linear")
AFFINE = ("mul", "div", "add", "sub", "neg")

# -- facts about single ops ----------------------------------------------------------------------


def is_layer(node: Node) -> bool:
    """A conv/conv_transpose/linear whose weight (and bias, if any) are constants with data."""
    return (node.op in LAYERS and all(i.is_const and i.attrs.get("data") is not None
                                      for i in node.inputs[1:]))


def channel_axis(node: Node) -> int:
    """The axis of the layer's input and output that holds channels."""
    return len(node.shape) - 1 if node.op in ("linear", "matmul") else 1


def out_channels(node: Node) -> int:
    return node.shape[channel_axis(node)]


def channel_vector(c: Node, shape: tuple[int, ...], axis: int) -> np.ndarray | None:
    """The per-channel values (float64, one per index of `axis`) of constant `c` when `c`
    broadcasts against a value of `shape` along `axis` only without growing it; else None."""
    if not c.is_const or c.attrs.get("data") is None or not c.dtype.is_float:
        return None
    data = c.data
    if data.ndim > len(shape):
        return None
    full = data.reshape((1,) * (len(shape) - data.ndim) + data.shape)
    for i, (n, m) in enumerate(zip(full.shape, shape, strict=True)):
        if n != 1 and (i != axis or n != m):
            return None
    target = tuple(shape[i] if i == axis else 1 for i in range(len(shape)))
    return np.broadcast_to(full, target).reshape(-1).astype(np.float64)


def per_channel_affine(node: Node, value: Node, axis: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(scale, shift) with node == value * scale + shift per channel of `axis`, when `node` is
    mul/div/add/sub/neg of `value` and a per-channel constant; else None."""
    if node.op not in AFFINE or node.shape != value.shape or node.dtype != value.dtype:
        return None
    channels = value.shape[axis]
    ones, zeros = np.ones(channels), np.zeros(channels)
    if node.op == "neg":
        return -ones, zeros
    a, b = node.inputs
    if (a is value) == (b is value):  # op(v, v) or v not an operand
        return None
    first = a is value
    c = channel_vector(b if first else a, value.shape, axis)
    if c is None:
        return None
    if node.op == "mul":
        return c, zeros
    if node.op == "add":
        return ones, c
    if node.op == "sub":
        return (ones, -c) if first else (-ones, c)
    with np.errstate(divide="ignore"):
        inverse = 1 / c
    if first and np.all(np.isfinite(inverse)):  # div by a nonzero constant: a scale
        return inverse, zeros
    return None


def reshaped_axis(src: Sequence[int], dst: Sequence[int], axis: int) -> tuple[int, int, int] | None:
    """Where axis `axis` of a `src`-shaped value lands when reshaped to `dst`: (b, outer, inner)
    such that index c of the axis becomes the indices o * (C * inner) + c * inner + j of axis b
    (o < outer, j < inner: the parts of the neighbouring axes merged into b). (b, 1, 1) is the
    axis kept whole, and is preferred; None when the reshape splits the axis."""
    c = src[axis]
    inner = math.prod(src[axis + 1:])
    intact, merged = None, None
    for b in range(len(dst)):
        below, size = math.prod(dst[b + 1:]), dst[b]
        if inner % below or (size * below) % (c * inner):
            continue
        found = (b, size * below // (c * inner), inner // below)
        if found[1:] == (1, 1):
            intact = intact or found
        merged = merged or found
    return intact or merged


def moved_axis(move: Node, axis: int) -> int | None:
    """Where channel `axis` of a reshape/permute's input sits in its output, if every channel
    index stays whole and in place; else None."""
    if move.op == "permute":
        return list(move.attrs["perm"]).index(axis)
    found = reshaped_axis(move.inputs[0].shape, move.shape, axis)
    return found[0] if found is not None and found[1:] == (1, 1) else None


def weight_columns(layer: Node) -> np.ndarray:
    """The L2 norm of the weights each input channel of a consumer layer meets (one per index
    of the channel axis of its input): how much that channel can move the layer's output."""
    w = layer.inputs[1].data.astype(np.float64)
    if layer.op == "linear":
        return np.sqrt((w * w).sum(axis=0))
    if layer.op == "matmul":
        return np.sqrt(np.moveaxis(w * w, -2, 0).reshape(w.shape[-2], -1).sum(axis=1))
    if layer.op == "conv_transpose":  # (Cin, Og, *k): rows are input channels
        return np.sqrt((w * w).reshape(w.shape[0], -1).sum(axis=1))
    groups = layer.attrs["groups"]  # conv (O, Cg, *k): input c meets the rows of its group
    sq = (w * w).reshape(groups, w.shape[0] // groups, w.shape[1], -1).sum(axis=(1, 3))
    return np.sqrt(sq.reshape(-1))


def output_rows(layer: Node) -> np.ndarray:
    """A producer's weights as one flattened row per output channel (float64)."""
    w = layer.inputs[1].data.astype(np.float64)
    if layer.op == "matmul":
        return np.moveaxis(w, -1, 0).reshape(w.shape[-1], -1)
    if layer.op == "conv_transpose":  # (Cin, Og, *k), output g * Og + m reads group g's rows
        groups = layer.attrs["groups"]
        view = w.reshape((groups, w.shape[0] // groups) + w.shape[1:])
        return np.moveaxis(view, 2, 1).reshape(groups * w.shape[1], -1)
    return w.reshape(w.shape[0], -1)


# -- the analysis --------------------------------------------------------------------------------

Atom = tuple[Node, int]  # (producer, output channel)
Unit = tuple[Atom, ...]  # atoms removed together
Maps = dict[int, np.ndarray]  # axis -> atom id at each index (-1: owned by no producer)

_SPATIAL = ("max_pool", "avg_pool", "adaptive_avg_pool", "resize")
_REDUCE = ("mean", "sum", "amax", "amin")


@dataclass(frozen=True, eq=False)
class ChannelGroup:
    """Output channels of `producers` that are pruned together: each unit is one channel of
    every producer in it (more for grouped convs), removed from every value in `values` and
    from the input of every layer in `consumers`. `reason` says why the group is pinned (never
    pruned), None if it may be."""

    producers: tuple[Node, ...]
    units: tuple[Unit, ...]
    values: tuple[Node, ...]
    consumers: tuple[Node, ...]
    reason: str | None

    @property
    def prunable(self) -> bool:
        return self.reason is None and len(self.units) > 1

    def __repr__(self) -> str:
        locs = ", ".join(p.loc or p.op for p in self.producers)
        state = "prunable" if self.reason is None else f"pinned: {self.reason}"
        return f"<ChannelGroup [{locs}] {len(self.units)} units, {state}>"


class Channels:
    """The channel dependencies of a float graph (see the module docstring)."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.maps: dict[Node, Maps] = {}
        self.producers: dict[Node, tuple[int, int]] = {}  # layer -> (first atom id, count)
        self.consumers: list[Node] = []  # layers whose input channels (input 0) shrink
        self._atoms: list[Atom] = []
        self._parent: list[int] = []
        self._pins: dict[int, str] = {}
        for node in graph.nodes:
            if node.op not in ("input", "const"):
                out = self._visit(node, [self.maps.get(i, {}) for i in node.inputs])
                if out:
                    self.maps[node] = out
        for out in graph.outputs:
            for labels in self.maps.get(out, {}).values():
                self._pin(labels, "its channels reach a graph output")
        self.groups = self._groups()
        self._group_of = {p: g for g in self.groups for p in g.producers}

    # -- public ------------------------------------------------------------------------------

    def group_of(self, layer: Node) -> ChannelGroup | None:
        """The group of a producer's output channels (None for a node that is no producer)."""
        return self._group_of.get(layer)

    def positions(self, value: Node, unit: Unit) -> dict[int, np.ndarray]:
        """The indices, per axis, at which `value` holds the channels of `unit`."""
        ids = [self._id(a) for a in unit]
        return {axis: np.flatnonzero(np.isin(labels, ids))
                for axis, labels in self.maps.get(value, {}).items()
                if np.isin(labels, ids).any()}

    def unit_sums(self, contributions: Iterable[tuple[Node, int, np.ndarray]]
                  ) -> dict[Unit, float]:
        """Per unit of every group, the sum of the numbers given per index of a value's axis
        (`(value, axis, numbers)`) at the indices where that value holds the unit's channels:
        how importance measured on values (weight norms, activations) adds up to units."""
        totals = np.zeros(len(self._atoms) + 1)
        for value, axis, numbers in contributions:
            labels = self.maps.get(value, {}).get(axis % len(value.shape))
            if labels is not None:
                np.add.at(totals, labels, np.asarray(numbers, np.float64))
        return {u: float(sum(totals[self._id(a)] for a in u)) for g in self.groups
                for u in g.units}

    def emptied(self, units: Iterable[Unit]) -> list[set[Unit]]:
        """For each value axis that removing `units` would leave without channels, the units
        present there (restore one of them to keep the graph valid)."""
        removed = self._removed(units)
        unit_of = {self._find(self._id(a)): u for g in self.groups for u in g.units for a in u}
        out = []
        for maps in self.maps.values():
            for labels in maps.values():
                if (labels >= 0).all() and removed[labels].all():
                    out.append({unit_of[self._find(int(i))] for i in np.unique(labels)})
        return out

    def removed_mask(self, value: Node, axis: int, units: Iterable[Unit]) -> np.ndarray:
        """Which indices of `value`'s `axis` removing `units` takes away."""
        labels = self.maps.get(value, {}).get(axis % len(value.shape))
        if labels is None:
            return np.zeros(value.shape[axis], dtype=bool)
        return self._removed(units)[labels]

    def prune(self, units: Iterable[Unit], bias: dict[Node, np.ndarray] | None = None) -> Graph:
        """The graph with the channels of `units` removed everywhere they reach; `bias[layer]`
        (one per output channel of the unpruned layer) is added to a layer's bias first. Raises
        ValueError for a unit of a pinned group, a partial unit, or a removal that would leave a
        value without channels."""
        bias = bias or {}
        units = list(units)
        removed = self._removed(units)
        for group in self.groups:
            chosen = [u for u in group.units if removed[self._id(u[0])]]
            if chosen and group.reason is not None:
                raise ValueError(f"channels of {group!r} cannot be removed: {group.reason}")
        if self.emptied(units):
            raise ValueError("removing these units would leave a value without channels")
        keep = {node: {axis: ~removed[labels] | (labels < 0) for axis, labels in maps.items()}
                for node, maps in self.maps.items()}
        mapping: dict[Node, Node] = {n: n for n in self.graph.inputs}
        for node in self.graph.nodes:
            if node in mapping:
                continue
            inputs = [mapping[i] for i in node.inputs]
            if node in bias:
                inputs = add_to_bias(node, inputs, bias[node])
            masks = [keep.get(i, {}) for i in node.inputs]
            out_mask = keep.get(node, {})
            if all(m.all() for d in [*masks, out_mask] for m in d.values()) and node not in bias:
                same = all(a is b for a, b in zip(inputs, node.inputs, strict=True))
                mapping[node] = node if same else node.with_inputs(tuple(inputs))
            else:
                mapping[node] = _rebuild(node, inputs, masks, out_mask)
        return self.graph.remapped(mapping)

    # -- union-find over atoms ---------------------------------------------------------------

    def _new_atoms(self, layer: Node, count: int) -> np.ndarray:
        first = len(self._atoms)
        self.producers[layer] = (first, count)
        self._atoms += [(layer, c) for c in range(count)]
        self._parent += list(range(first, first + count))
        return np.arange(first, first + count)

    def _id(self, atom: Atom) -> int:
        first, count = self.producers[atom[0]]
        if not 0 <= atom[1] < count:
            raise ValueError(f"{atom[0]!r} has no output channel {atom[1]}")
        return first + atom[1]

    def _find(self, i: int) -> int:
        while self._parent[i] != i:
            self._parent[i] = self._parent[self._parent[i]]
            i = self._parent[i]
        return i

    def _union(self, a: int, b: int) -> None:
        ra, rb = self._find(a), self._find(b)
        if ra != rb:
            self._parent[max(ra, rb)] = min(ra, rb)
            reason = self._pins.pop(max(ra, rb), None)
            if reason is not None:
                self._pins.setdefault(min(ra, rb), reason)

    def _pin(self, labels: np.ndarray, reason: str) -> None:
        for i in np.unique(labels[labels >= 0]):
            self._pins.setdefault(self._find(int(i)), reason)

    def _tie(self, a: np.ndarray, b: np.ndarray, node: Node) -> np.ndarray:
        """Position-wise tie of two label arrays; an atom meeting a channel no producer owns is
        pinned. Returns the labels of the joined positions."""
        both = (a >= 0) & (b >= 0)
        for i, j in zip(a[both], b[both], strict=True):
            self._union(int(i), int(j))
        loose = (a >= 0) != (b >= 0)
        if loose.any():
            self._pin(np.where(loose, np.maximum(a, b), -1),
                      _why(node, "adds channels that no prunable layer owns"))
        return np.where(a >= 0, a, b)

    def _removed(self, units: Iterable[Unit]) -> np.ndarray:
        removed = np.zeros(len(self._atoms), dtype=bool)
        for unit in units:
            ids = [self._id(a) for a in unit]
            removed[ids] = True
        roots = np.array([self._find(i) for i in range(len(self._atoms))], dtype=np.int64)
        whole = np.zeros(len(self._atoms), dtype=bool)
        np.logical_or.at(whole, roots, removed)
        if (whole[roots] != removed).any():
            raise ValueError("a unit must be removed whole: every atom tied to it goes too")
        return np.append(removed, False)  # index -1 (no producer): never removed

    # -- grouping ----------------------------------------------------------------------------

    def _groups(self) -> list[ChannelGroup]:
        layers = list(self.producers)
        index = {p: k for k, p in enumerate(layers)}
        parent = list(range(len(layers)))

        def find(k: int) -> int:
            while parent[k] != k:
                k = parent[k]
            return k

        classes: dict[int, list[int]] = {}
        for i in range(len(self._atoms)):
            classes.setdefault(self._find(i), []).append(i)
        for members in classes.values():
            ks = {index[self._atoms[i][0]] for i in members}
            first = find(min(ks))
            for k in ks:
                parent[find(k)] = first
        by_root: dict[int, list[int]] = {}
        for root, members in classes.items():
            by_root.setdefault(find(index[self._atoms[members[0]][0]]), []).append(root)
        groups = []
        for roots in by_root.values():
            roots.sort()
            atom_ids = np.array([i for r in roots for i in classes[r]])
            units = tuple(tuple(self._atoms[i] for i in classes[r]) for r in roots)
            producers = tuple(dict.fromkeys(self._atoms[i][0] for i in sorted(atom_ids)))
            values = tuple(n for n, maps in self.maps.items()
                           if any(np.isin(v, atom_ids).any() for v in maps.values()))
            consumers = tuple(c for c in self.consumers if c.inputs[0] in values
                              and np.isin(self.maps[c.inputs[0]].get(contracted_axis(c), -1),
                                          atom_ids).any())
            reason = next((self._pins[r] for r in roots if r in self._pins), None)
            groups.append(ChannelGroup(producers, units, values, consumers, reason))
        order = {n: k for k, n in enumerate(self.graph.nodes)}
        return sorted(groups, key=lambda g: order[g.producers[0]])

    # -- propagation: one rule per op ---------------------------------------------------------

    def _visit(self, node: Node, ins: list[Maps]) -> Maps:
        op = node.op
        if op in ("conv", "conv_transpose", "linear", "matmul"):
            return self._layer(node, ins)
        if op in ("batch_norm", "prelu"):
            return self._per_channel(node, ins)
        if _broadcasting(op):
            return self._elementwise(node, ins)
        rule = _KEEPS.get(op)
        if rule is not None:
            return self._keep_axes(node, ins, rule(node))
        move = getattr(self, f"_{op}", None)
        if op in _MOVES and move is not None:
            return move(node, ins)
        self._pin_inputs(node, ins, "this op is not followed by the channel analysis")
        return {}

    def _pin_inputs(self, node: Node, ins: list[Maps], why: str) -> None:
        for maps in ins:
            for labels in maps.values():
                self._pin(labels, _why(node, why))

    def _join(self, node: Node, rank: int, parts: list[tuple[Node, Maps, int]],
              skip: int | None = None) -> Maps:
        """Broadcasting operands (`parts`: node, maps, offset of its axes in the result) meet
        position by position on every axis but `skip`: tie their labels per axis."""
        out: Maps = {}
        for axis in range(rank):
            if axis == skip:
                continue
            size, joined = node.shape[axis], None
            for value, maps, offset in parts:
                a = axis - offset
                if a < 0:
                    continue
                labels = maps.get(a)
                if labels is not None and value.shape[a] != size:
                    self._pin(labels, _why(node, "broadcasts one channel against many"))
                    continue
                if labels is None:
                    if value.is_const or value.shape[a] != size:
                        continue
                    labels = np.full(size, -1)
                joined = labels if joined is None else self._tie(joined, labels, node)
            if joined is not None and (joined >= 0).any():
                out[axis] = joined
        return out

    def _elementwise(self, node: Node, ins: list[Maps]) -> Maps:
        rank = len(node.shape)
        parts = [(v, m, rank - len(v.shape)) for v, m in zip(node.inputs, ins, strict=True)]
        return self._join(node, rank, parts)

    def _per_channel(self, node: Node, ins: list[Maps]) -> Maps:
        """batch_norm / prelu: parameters per index of axis 1 (sliced), else elementwise."""
        if any(not p.is_const for p in node.inputs[1:]):
            self._pin_inputs(node, ins, "its parameters are not constants")
            return {}
        return dict(ins[0])

    def _keep_axes(self, node: Node, ins: list[Maps], kept: dict[int, int]) -> Maps:
        """Ops acting along some axes only: `kept` maps the input axes whose channels pass to
        their output axes; channels on any other axis are pinned."""
        out: Maps = {}
        for axis, labels in ins[0].items():
            if axis in kept:
                out[kept[axis]] = labels
            else:
                self._pin(labels, _why(node, "it mixes or moves positions of the channel axis"))
        self._pin_inputs(node, [dict(m) for m in ins[1:]], "its second operand is not followed")
        return out

    def _reshape(self, node: Node, ins: list[Maps]) -> Maps:
        out: Maps = {}
        for axis, labels in ins[0].items():
            found = reshaped_axis(node.inputs[0].shape, node.shape, axis)
            if found is None or found[0] in out:
                self._pin(labels, _why(node, "it splits the channel axis"))
                continue
            b, outer, inner = found
            out[b] = np.tile(np.repeat(labels, inner), outer)
        return out

    def _permute(self, node: Node, ins: list[Maps]) -> Maps:
        perm = list(node.attrs["perm"])
        return {perm.index(a): labels for a, labels in ins[0].items()}

    def _expand(self, node: Node, ins: list[Maps]) -> Maps:
        offset = len(node.shape) - len(node.inputs[0].shape)
        out: Maps = {}
        for a, labels in ins[0].items():
            if node.shape[a + offset] != len(labels):
                self._pin(labels, _why(node, "broadcasts one channel against many"))
            else:
                out[a + offset] = labels
        return out

    def _flip(self, node: Node, ins: list[Maps]) -> Maps:
        axes = {a % len(node.shape) for a in node.attrs["axes"]}
        return {a: labels[::-1] if a in axes else labels for a, labels in ins[0].items()}

    def _slice(self, node: Node, ins: list[Maps]) -> Maps:
        axis = node.attrs["axis"] % len(node.shape)
        out = dict(ins[0])
        if axis in out:
            labels = out.pop(axis)
            if node.attrs["step"] != 1:
                self._pin(labels, _why(node, "it takes every k-th channel"))
            else:
                start, end, _ = _bounds(node, len(labels))
                if (labels[start:end] >= 0).any():
                    out[axis] = labels[start:end]
        return out

    def _concat(self, node: Node, ins: list[Maps]) -> Maps:
        rank = len(node.shape)
        axis = node.attrs["axis"] % rank
        out = self._join(node, rank, [(v, m, 0) for v, m in zip(node.inputs, ins, strict=True)],
                         skip=axis)
        parts = [m.get(axis, np.full(v.shape[axis], -1))
                 for v, m in zip(node.inputs, ins, strict=True)]
        labels = np.concatenate(parts)
        if (labels >= 0).any():
            out[axis] = labels
        return out

    def _pad(self, node: Node, ins: list[Maps]) -> Maps:
        pads = node.attrs["pads"]
        return self._keep_axes(node, ins, {a: a for a in range(len(node.shape))
                                           if not (pads[2 * a] or pads[2 * a + 1])})

    def _gather(self, node: Node, ins: list[Maps]) -> Maps:
        axis = node.attrs["axis"] % len(node.inputs[0].shape)
        shift = len(node.inputs[1].shape) - 1
        return self._keep_axes(node, ins, {a: a if a < axis else a + shift
                                           for a in range(len(node.inputs[0].shape))
                                           if a != axis})

    def _glu(self, node: Node, ins: list[Maps]) -> Maps:
        """Output channel i is half i times the gate at half + i: both go together."""
        axis = node.attrs["axis"] % len(node.shape)
        out = dict(ins[0])
        if axis in out:
            labels = out.pop(axis)
            half = len(labels) // 2
            out[axis] = self._tie(labels[:half], labels[half:], node)
        return out

    def _group_norm(self, node: Node, ins: list[Maps]) -> Maps:
        """Statistics per group of channels: a unit is a whole group (the group count drops)."""
        if any(not p.is_const for p in node.inputs[1:]):
            self._pin_inputs(node, ins, "its parameters are not constants")
            return {}
        out = self._keep_axes(node, [{a: v for a, v in ins[0].items() if a != 1}], {0: 0})
        if 1 in ins[0]:
            labels = ins[0][1]
            rows = labels.reshape(node.attrs["groups"], -1)
            for k in range(1, rows.shape[1]):
                self._tie(rows[:, 0], rows[:, k], node)
            out[1] = labels
        return out

    def _layer(self, node: Node, ins: list[Maps]) -> Maps:
        weight = node.inputs[1]
        has_weight = (weight.is_const and weight.attrs.get("data") is not None
                      and weight.dtype.is_float and node.dtype.is_float
                      and all(i.is_const for i in node.inputs[2:]))
        if node.op == "matmul":
            return self._matmul(node, ins) if not has_weight else self._dense(node, ins)
        if not has_weight:
            self._pin_inputs(node, ins, "its weights are not constants")
            return {}
        if node.op == "linear":
            return self._dense(node, ins)
        return self._conv(node, ins)

    def _dense(self, node: Node, ins: list[Maps]) -> Maps:
        """linear, or matmul by a constant: the last axis is contracted (a consumer) and the
        result's last axis is new channels (a producer); other axes pass."""
        x, w = node.inputs[:2]
        rank, last = len(node.shape), len(x.shape) - 1
        if node.op == "matmul" and (len(w.shape) < 2 or len(x.shape) < 2):
            self._pin_inputs(node, ins, "a matrix-vector product")
            return {}
        out: Maps = {}
        offset = rank - len(x.shape)
        for a, labels in ins[0].items():
            if a == last:
                self.consumers.append(node)
            elif node.op == "matmul" and a < last - 1 and \
                    _aligned(w, a + offset, rank) not in (None, 1, len(labels)):
                self._pin(labels, _why(node, "its weight broadcasts against the channels"))
            else:
                out[a + offset] = labels
        out[rank - 1] = self._new_atoms(node, node.shape[-1])
        return out

    def _matmul(self, node: Node, ins: list[Maps]) -> Maps:
        """Two activations: the contracted axes are tied, rows and columns pass, batch axes
        broadcast."""
        a, b = node.inputs
        if a.is_const or len(a.shape) < 2 or len(b.shape) < 2:
            self._pin_inputs(node, ins, "a product with a constant left operand or a vector")
            return {}
        ka = ins[0].get(len(a.shape) - 1, np.full(a.shape[-1], -1))
        kb = ins[1].get(len(b.shape) - 2, np.full(b.shape[-2], -1))
        if (ka >= 0).any() or (kb >= 0).any():
            self._tie(ka, kb, node)
        rank = len(node.shape)
        batch = [(v, {k: lab for k, lab in m.items() if k < len(v.shape) - 2},
                  rank - len(v.shape)) for v, m in zip(node.inputs, ins, strict=True)]
        out = self._join(node, rank - 2, batch)
        if len(a.shape) - 2 in ins[0]:
            out[rank - 2] = ins[0][len(a.shape) - 2]
        if len(b.shape) - 1 in ins[1]:
            out[rank - 1] = ins[1][len(b.shape) - 1]
        return out

    def _conv(self, node: Node, ins: list[Maps]) -> Maps:
        x, w = node.inputs[:2]
        groups = node.attrs["groups"]
        out: Maps = {}
        for a, labels in ins[0].items():
            if a == 0:
                out[0] = labels
            elif a >= 2:
                self._pin(labels, _why(node, "it slides over the axis that holds channels"))
        cin = x.shape[1]
        per_group_in = cin // groups
        og = node.shape[1] // groups
        labels_in = ins[0].get(1)
        if groups > 1 and per_group_in == 1:  # depthwise: each output carries its input's atom
            if labels_in is not None:
                out[1] = np.repeat(labels_in, og)
            return out
        if labels_in is not None:
            self.consumers.append(node)
            rows = labels_in.reshape(groups, per_group_in)
            for k in range(1, groups):  # the same local channel of every group goes together
                self._tie(rows[0], rows[k], node)
        atoms = self._new_atoms(node, node.shape[1])
        by_group = atoms.reshape(groups, og)
        for k in range(1, groups):
            for i, j in zip(by_group[0], by_group[k], strict=True):
                self._union(int(i), int(j))
        out[1] = atoms
        return out


def _broadcasting(op: str) -> bool:
    """A float elementwise op: its operands broadcast against each other (the integer ones,
    whose integer form is themselves, read tables and parameters instead)."""
    return OPS[op].category == "elementwise" and OPS[op].integer.params != "integer"


def _why(node: Node, text: str) -> str:
    return f"{node.op} at {node.loc or '(no module path)'}: {text}"


def _bounds(node: Node, size: int) -> tuple[int, int, int]:
    return slice(node.attrs["start"], node.attrs["end"], node.attrs["step"]).indices(size)


def _aligned(c: Node, axis: int, rank: int) -> int | None:
    """The size of constant `c` along result axis `axis` when broadcast to rank `rank`."""
    a = axis - (rank - len(c.shape))
    return c.shape[a] if a >= 0 else None


def contracted_axis(layer: Node) -> int:
    """The axis of a consumer's input that it contracts (its input channels)."""
    return len(layer.inputs[0].shape) - 1 if layer.op in ("linear", "matmul") else 1


def _reduce_axes(node: Node) -> dict[int, int]:
    rank = len(node.inputs[0].shape)
    axes = {a % rank for a in node.attrs["axes"]}
    kept = [a for a in range(rank) if a not in axes]
    if node.attrs["keepdim"]:
        return {a: a for a in kept}
    return {a: k for k, a in enumerate(kept)}


def _one_axis(node: Node) -> dict[int, int]:
    rank = len(node.shape)
    axis = node.attrs["axis"] % rank
    return {a: a for a in range(rank) if a != axis}


# Ops that act along some axes only: input axis -> output axis of the channels that pass.
_KEEPS = {
    **{op: (lambda n: {0: 0, 1: 1}) for op in _SPATIAL},
    "pixel_shuffle": lambda n: {0: 0},
    "layer_norm": lambda n: {a: a for a in range(len(n.shape) - n.attrs["ndim"])},
    "softmax": _one_axis,
    "log_softmax": _one_axis,
    **{op: _reduce_axes for op in _REDUCE},
}
_MOVES = ("reshape", "permute", "expand", "flip", "slice", "concat", "pad", "gather", "glu",
          "group_norm")


# -- the rewrite ---------------------------------------------------------------------------------


def _take(c: Node, axis: int, keep: np.ndarray) -> Node:
    """Constant `c` with the indices of `axis` that `keep` marks."""
    if keep.all():
        return c
    return const(np.compress(keep, c.data, axis=axis), c.dtype, c.loc)


def add_to_bias(layer: Node, inputs: list[Node], shift: np.ndarray) -> list[Node]:
    """The layer's operands with `shift` added to its bias (made where it had none)."""
    dtype = layer.inputs[1].dtype
    old = layer.inputs[2].data.astype(np.float64) if len(layer.inputs) > 2 else 0.0
    loc = layer.inputs[2].loc if len(layer.inputs) > 2 else layer.loc
    return [*inputs[:2], const((old + shift).astype(dtype.numpy), dtype, loc)]


def _rebuild(node: Node, inputs: list[Node], masks: list[dict[int, np.ndarray]],
             out: dict[int, np.ndarray]) -> Node:
    """`node` on its pruned `inputs`, its constants and attributes fitted to the channels kept
    (`masks`: per input, per axis; `out`: per axis of the result)."""
    op, attrs = node.op, dict(node.attrs)
    if op in ("conv", "conv_transpose", "linear", "matmul"):
        return _rebuild_layer(node, inputs, masks[0], out)
    if op in ("batch_norm", "prelu", "group_norm"):
        if 1 in out:
            inputs = [inputs[0]] + [_take(p, 0, out[1]) if p.shape == (len(out[1]),) else p
                                    for p in inputs[1:]]
            if op == "group_norm":
                per_group = len(out[1]) // attrs["groups"]
                attrs["groups"] = int(out[1].sum()) // per_group
    elif _broadcasting(op) or op == "concat":
        rank = len(node.shape)
        skip = node.attrs["axis"] % rank if op == "concat" else None
        for k, c in enumerate(inputs):
            if not c.is_const:
                continue
            for axis, keep in out.items():
                if axis != skip and _aligned(c, axis, rank) == len(keep) > 1:
                    c = _take(c, axis - (rank - len(c.shape)), keep)
            inputs[k] = c
    elif op in ("reshape", "expand"):
        attrs["shape"] = [int(out[a].sum()) if a in out else s
                          for a, s in enumerate(attrs["shape"])]
    elif op == "slice":
        axis = attrs["axis"] % len(node.shape)
        if axis in masks[0]:
            keep = masks[0][axis]
            start, end, _ = _bounds(node, len(keep))
            attrs["start"] = int(keep[:start].sum())
            attrs["end"] = attrs["start"] + int(keep[start:end].sum())
    return make(op, inputs, attrs, node.loc)


def _rebuild_layer(node: Node, inputs: list[Node], x_keep: dict[int, np.ndarray],
                   out: dict[int, np.ndarray]) -> Node:
    x, w = inputs[:2]
    attrs = dict(node.attrs)
    rank = len(node.shape)
    if node.op in ("linear", "matmul"):
        if not w.is_const:
            return make(node.op, inputs, attrs, node.loc)
        w = _take(w, len(w.shape) - 1 if node.op == "matmul" else 0, out[rank - 1])
        last = len(node.inputs[0].shape) - 1
        if last in x_keep:
            w = _take(w, len(w.shape) - 2 if node.op == "matmul" else 1, x_keep[last])
        if node.op == "matmul":  # batch axes of the weight that match the channels
            for axis, keep in out.items():
                if axis < rank - 2 and _aligned(w, axis, rank) == len(keep) > 1:
                    w = _take(w, axis - (rank - len(w.shape)), keep)
        bias = [_take(b, 0, out[rank - 1]) for b in inputs[2:]]
        return make(node.op, [x, w, *bias], attrs, node.loc)
    groups = attrs["groups"]
    cin = node.inputs[0].shape[1]
    keep_in = x_keep.get(1, np.ones(cin, dtype=bool))
    keep_out = out.get(1, np.ones(node.shape[1], dtype=bool))
    depthwise = groups > 1 and cin == groups
    in_axis, out_axis = (1, 0) if node.op == "conv" else (0, 1)
    if depthwise:  # whole groups go: the weight's input-side axis indexes them
        attrs["groups"] = int(keep_in.sum())
        w = _take(w, 0, keep_out if node.op == "conv" else keep_in)
    else:
        local_in = keep_in.reshape(groups, -1)[0]  # the analysis tied them across groups
        if node.op == "conv":
            w = _take(_take(w, out_axis, keep_out), in_axis, local_in)
        else:  # conv_transpose (Cin, Og, *k): all input rows, the local output columns
            w = _take(_take(w, in_axis, keep_in), out_axis, keep_out.reshape(groups, -1)[0])
    bias = [_take(b, 0, keep_out) for b in inputs[2:]]
    return make(node.op, [x, w, *bias], attrs, node.loc)
