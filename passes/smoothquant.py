"""smoothquant: migrate per-channel activation scale into the weights that read the activation.

Before: %n = layer_norm(%x, %g, %b)            %q = linear(%n, %wq, %bq)   %k = linear(%n, %wk, %bk)
After:  %n' = layer_norm(%x, %g / s, %b / s)   %q = linear(%n', %wq * s, %bq)   (same for %k ...)
and for a linear producer (optionally through a ReLU / leaky ReLU, which commute with s > 0):
Before: %h = linear(%x, %w1, %b1)   %r = relu(%h)   %y = linear(%r, %w2, %b2)
After:  %h = linear(%x, %w1 / s[:, None], %b1 / s)   %r = relu(%h)   %y = linear(%r, %w2 * s, %b2)

with s_j = max|X_j|^alpha / max|W_j|^(1 - alpha) (Xiao et al., SmoothQuant): X_j is channel j of
the activation the linears read, over the calibration data; W_j the largest |weight| in input
column j over all those linears. Outlier channels shrink and the weights absorb them, so a
per-tensor activation quantizer loses less.

A group is a producer (layer_norm over the last axis with constant gamma/beta, or a linear with
constant weights) whose value -- possibly through relu/leaky_relu -- is read only by linears, as
their input 0, and is not a graph output. Option `shared_norms` also takes a layer_norm that other
ops read too (a post-norm residual add): its linears then read a smoothed copy of the layer_norm
and the other readers keep the original (one extra layer_norm per group, bit-identical residual).
Groups are solved consumers-first, each from the weights left by the groups after it, which makes
the transform a fixed point: run again, every s is 1 (within 1e-3, which snaps to exactly 1).

Requires: calibration data in the PassContext; float weights. Ensures: the same function within
float rounding; per-channel activation ranges evened out (the note reports max/median channel
absmax before and after, averaged over smoothed activations); idempotent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from npuc.ir import Graph, Node, const
from npuc.ops import make
from npuc.pipeline import PassContext, plural, register_pass
from npuc.rewrite import rewrite

from .calibration import activation_absmax, range_ratio, require_calibration
from .channel_affine import fold_input_affine, fold_output_affine, is_layer

HOMOGENEOUS = ("relu", "leaky_relu")  # f(x / s) == f(x) / s for every s > 0
SNAP = 1e-3  # |s - 1| below this is float noise of an already-smoothed group: s = 1
TINY = 1e-12  # a channel this small (activation or weights) is dead: s = 1


@dataclass(frozen=True, eq=False)
class Group:
    """A producer whose value `act` (the producer itself, or an activation of it) is read by the
    linears `consumers` as their input; `shared` when other ops read the layer_norm too."""

    producer: Node
    act: Node
    consumers: tuple[Node, ...]
    shared: bool = False


def _consumes(reader: Node, act: Node) -> bool:
    return reader.op == "linear" and is_layer(reader) and reader.inputs[0] is act


def _const_params(node: Node) -> bool:
    return all(i.is_const and i.attrs.get("data") is not None for i in node.inputs[1:])


def find_groups(graph: Graph, *, shared_norms: bool = False) -> list[Group]:
    """The smoothable groups of `graph`, in topological order of their producers."""
    outputs = set(graph.outputs)
    groups = []
    for node in graph.nodes:
        if node.op == "layer_norm":
            if node.attrs["ndim"] != 1 or not node.dtype.is_float or not _const_params(node):
                continue
            readers = list(dict.fromkeys(graph.users[node]))
            linears = tuple(r for r in readers if _consumes(r, node))
            shared = len(linears) < len(readers) or node in outputs
            if linears and (shared_norms or not shared):
                groups.append(Group(node, node, linears, shared))
        elif node.op == "linear" and is_layer(node) and node not in outputs:
            act, readers = node, list(dict.fromkeys(graph.users[node]))
            if len(readers) == 1 and readers[0].op in HOMOGENEOUS and readers[0] not in outputs \
                    and len(graph.users[node]) == 1:
                act, readers = readers[0], list(dict.fromkeys(graph.users[readers[0]]))
            linears = tuple(r for r in readers if _consumes(r, act))
            if linears and len(linears) == len(readers) and act not in outputs:
                groups.append(Group(node, act, linears))
    return groups


def column_absmax(groups: list[Group], scales: dict[Group, np.ndarray]) -> dict[Group, np.ndarray]:
    """Per input column, the max |weight| over each group's consumers, as the consumers stand
    after the producer-side (row) scaling of the groups in `scales` that they produce."""
    row = {g.producer: s for g, s in scales.items() if g.producer.op == "linear"}
    result = {}
    for g in groups:
        cols = [np.abs(c.inputs[1].data.astype(np.float64))
                / row.get(c, np.ones(c.shape[-1]))[:, None] for c in g.consumers]
        result[g] = np.max([c.max(axis=0) for c in cols], axis=0)
    return result


def smooth_scales(groups: list[Group], absmax: dict[Node, np.ndarray],
                  alpha: float) -> dict[Group, np.ndarray]:
    """s per group (all-ones groups left out), solved consumers-first: a group's column maxima
    see the row scaling of the groups downstream of it (see the module docstring)."""
    scales: dict[Group, np.ndarray] = {}
    for g in reversed(groups):
        w = column_absmax([g], scales)[g]
        x = np.asarray(absmax[g.act], np.float64)
        live = (x > TINY) & (w > TINY) & np.isfinite(x) & np.isfinite(w)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            s = np.where(live, x ** alpha / w ** (1 - alpha), 1.0)
        s = np.where(np.isfinite(s) & (s > 0) & (np.abs(s - 1) >= SNAP), s, 1.0)
        if np.any(s != 1):
            scales[g] = s
    return scales


def scaled_norm(norm: Node, inv: np.ndarray) -> Node:
    """layer_norm(x, gamma * inv, beta * inv) for the same x: its output times `inv`."""
    dtype = norm.dtype
    gamma = norm.inputs[1].data.astype(np.float64) if len(norm.inputs) > 1 else np.ones(len(inv))
    params = [const((gamma * inv).astype(dtype.numpy), dtype,
                    norm.inputs[1].loc if len(norm.inputs) > 1 else norm.loc)]
    if len(norm.inputs) > 2:
        beta = norm.inputs[2].data.astype(np.float64)
        params.append(const((beta * inv).astype(dtype.numpy), dtype, norm.inputs[2].loc))
    return make("layer_norm", [norm.inputs[0], *params], dict(norm.attrs), norm.loc)


def apply_scales(graph: Graph, scales: dict[Group, np.ndarray]) -> tuple[Graph, dict[Node, Node]]:
    """Fold each group's s into its producer (/ s) and consumers (* s), exactly. Returns the new
    graph and, for every node of `graph` still present, its counterpart -- for a shared group's
    `act`, the smoothed copy the consumers now read."""
    producers = {g.producer: (g, s) for g, s in scales.items()}
    consumers = {c: (g, s) for g, s in scales.items() for c in g.consumers}
    copies: dict[Node, Node] = {}
    final: dict[Node, Node] = {}

    def fold(node: Node, original: Node) -> Node:
        if original in producers:
            g, s = producers[original]
            if node.op == "linear":
                node = fold_output_affine(node, 1 / s, np.zeros(len(s)))
            elif not g.shared:
                node = scaled_norm(node, 1 / s)
        if original in consumers:
            g, s = consumers[original]
            x = node.inputs[0]
            if g.shared:
                if g.act not in copies:
                    copies[g.act] = scaled_norm(x, 1 / s)
                x = copies[g.act]
            node = fold_input_affine(node, s, np.zeros(len(s)), x=x)
        final[original] = node
        return node

    result = rewrite(graph, fold, origin=True)
    for act, copy in copies.items():
        final[act] = copy
    return result, final


@register_pass("smoothquant", calibration=True)
def smoothquant(graph: Graph, ctx: PassContext, *, alpha: float = 0.5,
                shared_norms: bool = False) -> Graph:
    """Migrate activation outlier scale into the next linears' weights (SmoothQuant)."""
    if not 0 <= alpha <= 1:
        raise ValueError(f"smoothquant: alpha must lie in [0, 1], got {alpha}")
    groups = find_groups(graph, shared_norms=shared_norms)
    if not groups:
        ctx.note("smoothquant: no layer_norm/linear -> linear group to smooth")
        return graph
    calibration = require_calibration(ctx.calibration, "smoothquant")
    absmax = activation_absmax(graph, calibration, {g.act for g in groups})
    scales = smooth_scales(groups, absmax, alpha)
    if not scales:
        ctx.note(f"smoothquant: {plural(len(groups), 'group')} already smooth (every s within "
                 f"{SNAP} of 1)")
        return graph
    before = np.mean([range_ratio(absmax[g.act]) for g in scales])
    after = np.mean([range_ratio(absmax[g.act] / s) for g, s in scales.items()])
    norms = sum(g.producer.op == "layer_norm" for g in scales)
    copies = sum(g.shared for g in scales)
    ctx.note(f"smoothquant: smoothed {plural(len(scales), 'group')} ({norms} layer_norm, "
             f"{len(scales) - norms} linear -> linear{f'; {copies} norms copied' if copies else ''}"
             f"); activation channel range max/median {before:.1f} -> {after:.1f}")
    return apply_scales(graph, scales)[0]
