"""smoothquant: migrate per-channel activation scale into the weights that read the activation.

Before: %n = layer_norm(%x, %g, %b)            %q = linear(%n, %wq, %bq)   %k = linear(%n, %wk, %bk)
After:  %n' = layer_norm(%x, %g / s, %b / s)   %q = linear(%n', %wq * s, %bq)   (same for %k ...)
and for a linear producer (optionally through a ReLU / leaky ReLU, which commute with s > 0):
Before: %h = linear(%x, %w1, %b1)   %r = relu(%h)   %y = linear(%r, %w2, %b2)
After:  %h = linear(%x, %w1 / s[:, None], %b1 / s)   %r = relu(%h)   %y = linear(%r, %w2 * s, %b2)

with s_j = max|X_j|^alpha / max|W_j|^(1 - alpha) (Xiao et al., SmoothQuant): X_j is channel j of
the activation the linears read, over the calibration data; W_j the largest |weight| in input
column j over all those linears. Outlier channels shrink and the weights absorb them, so a
per-tensor activation quantizer loses less. Option `alpha`: a number in [0, 1] for every group,
or None (the default): per group, the alpha of ALPHAS whose s gives the least quantization error
of the group's linears on sampled calibration rows (activation per tensor over its calibrated
range, weights per output channel, as `quantize` stores them, at the widths the target's
[quantize] table gives: W8A8 on npu-int8, W4A8 on npu-w4a8, W8A16 on dsp-int16), and no
smoothing at all for a group where no alpha beats leaving it alone. The search repeats from the
smoothed state until no alpha helps any more, so its result is its own fixed point and the pass
stays idempotent.

A group is a producer (layer_norm over the last axis with constant gamma/beta, or a linear with
constant weights) whose value -- possibly through relu/leaky_relu -- is read only by linears, as
their input 0, and is not a graph output. Option `shared_norms` (default True) also takes a
layer_norm that other ops read too (a post-norm residual add, as in BERT): its linears then read a
smoothed copy of the layer_norm and the other readers keep the original (one extra layer_norm per
group, bit-identical residual).
Groups are solved consumers-first, each from the weights left by the groups after it, which makes
the transform a fixed point: run again, every s is 1 (within 1e-3, which snaps to exactly 1).

Option `profiles`: the activation profiles to use instead of measuring them, keyed by
`calibration.value_keys` (`<loc>/<op>`): graphs that must smooth alike (an LM's prefill and decode
graphs, which then share their weights) are given one set measured over both (`shared_profiles`).

Requires: calibration data in the PassContext (not read when given `profiles`); float weights.
Ensures: the same function within float rounding; per-channel activation ranges evened out (the
note reports max/median channel absmax before and after, averaged over smoothed activations, and
the alphas used); a graph with nothing to smooth, or where smoothing would not lower the error, is
returned unchanged (the same object); idempotent.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from npuc.ir import Graph, Node, const
from npuc.ops import make
from npuc.pipeline import PassContext, plural, register_pass
from npuc.rewrite import rewrite

from .calibration import (
    Profile,
    activation_profiles,
    merge_profiles,
    range_ratio,
    require_calibration,
    value_keys,
)
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


ALPHAS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9)  # searched when alpha is None
MARGIN = 1e-3  # a searched s must beat no smoothing by this much (relative): float noise won't
MAX_ROUNDS = 16  # search rounds per group (each lowers the error by MARGIN at least)
SEARCH_ROWS, SEARCH_OUTPUTS = 256, 128


def consumer_weights(g: Group, scales: dict[Group, np.ndarray]) -> np.ndarray:
    """The group's consumers' weights stacked (sum of outputs x channels), float64, as they
    stand after the row scaling of the groups in `scales` that they produce."""
    row = {x.producer: s for x, s in scales.items() if x.producer.op == "linear"}
    return np.concatenate([c.inputs[1].data.astype(np.float64)
                           / row.get(c, np.ones(c.shape[-1]))[:, None] for c in g.consumers])


def w8a8_error(profile: Profile, w: np.ndarray, s: np.ndarray, bits: tuple[int, int] = (8, 8),
               ref: np.ndarray | None = None) -> float:
    """Relative squared error of the consumers' outputs on the sampled rows when the
    activation is divided by `s` and stored per tensor (asymmetric, over its calibrated range)
    and the weights are multiplied by `s` and stored symmetric per output channel, as the
    quantize pass does; `bits` = (activation, weight) bits, W8A8 by default. `ref`: the float
    outputs samples @ w.T, which no s changes (passed in so a search computes them once)."""
    levels, wmax = (1 << bits[0]) - 1, (1 << (bits[1] - 1)) - 1
    x = profile.samples / s
    lo, hi = min(0.0, float((profile.lo / s).min())), max(0.0, float((profile.hi / s).max()))
    step = (hi - lo) / levels if hi > lo else 1.0
    zero = np.round(-lo / step)
    xq = (np.clip(np.rint(x / step) + zero, 0, levels) - zero) * step
    ws = w * s
    wstep = np.abs(ws).max(axis=1, keepdims=True) / wmax
    wstep[wstep == 0] = 1.0
    wq = np.clip(np.rint(ws / wstep), -wmax, wmax) * wstep
    ref = profile.samples @ w.T if ref is None else ref
    return float(np.sum((xq @ wq.T - ref) ** 2) / max(float(np.sum(ref ** 2)), 1e-300))


def _scale(x: np.ndarray, wmax: np.ndarray, live: np.ndarray, a: float) -> np.ndarray:
    """s = max|X|^a / max|W|^(1 - a) on live channels; 1 elsewhere and within SNAP of 1."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        s = np.where(live, x ** a / wmax ** (1 - a), 1.0)
    return np.where(np.isfinite(s) & (s > 0) & (np.abs(s - 1) >= SNAP), s, 1.0)


def _search(profile: Profile, w: np.ndarray, live: np.ndarray, bits: tuple[int, int],
            ) -> tuple[float, np.ndarray]:
    """The searched s of one group and the alpha of its first round. Rounds repeat from the
    smoothed state until no alpha beats leaving it as it is by MARGIN, so the result is a
    fixed point of the search itself: the pass run again finds nothing to do (idempotent)."""
    total = np.ones(len(profile.absmax))
    first = None
    # the error is measured on at most SEARCH_ROWS sample rows and SEARCH_OUTPUTS output
    # channels (every k-th): representative, and a MiniLM layer norm's search stays ~0.1 s
    profile = dataclasses.replace(profile, samples=profile.samples[
        :: max(1, len(profile.samples) // SEARCH_ROWS)][:SEARCH_ROWS])
    wmax = np.abs(w).max(axis=0)  # over every consumer row, as SmoothQuant's s is defined
    w = w[:: max(1, len(w) // SEARCH_OUTPUTS)][:SEARCH_OUTPUTS]
    ref = profile.samples @ w.T  # X W^T = (X / s)(W s)^T: the same for every candidate
    for _ in range(MAX_ROUNDS):
        x = profile.absmax
        none = w8a8_error(profile, w, np.ones(len(x)), bits, ref)
        candidates = {a: _scale(x, wmax, live, a) for a in ALPHAS}
        errors = {a: w8a8_error(profile, w, s, bits, ref) for a, s in candidates.items()}
        a = min(errors, key=errors.get)
        if not errors[a] < none * (1 - MARGIN) or np.all(candidates[a] == 1):
            break
        s = candidates[a]
        first = a if first is None else first
        total = total * s
        profile = Profile(profile.absmax / s, profile.lo / s, profile.hi / s,
                          profile.samples / s)
        w, wmax = w * s, wmax * s
    return (first if first is not None else 1.0), total


def search_scales(groups: list[Group], profiles: dict[Node, Profile], alpha: float | None,
                  bits: tuple[int, int] = (8, 8),
                  ) -> tuple[dict[Group, np.ndarray], dict[Group, float]]:
    """s per group (all-ones groups left out) and the alpha each used, solved consumers-first:
    a group's weights see the row scaling of the groups downstream of it (module docstring).
    alpha None: per group, the alpha of ALPHAS whose s gives the least `w8a8_error`, or no
    smoothing at all when none beats it by MARGIN."""
    scales: dict[Group, np.ndarray] = {}
    chosen: dict[Group, float] = {}
    for g in reversed(groups):
        w = consumer_weights(g, scales)
        wmax = np.abs(w).max(axis=0)
        profile = profiles[g.act]
        x = np.asarray(profile.absmax, np.float64)
        live = (x > TINY) & (wmax > TINY) & np.isfinite(x) & np.isfinite(wmax)

        if alpha is not None:
            a, s = alpha, _scale(x, wmax, live, alpha)
        else:
            a, s = _search(profile, w, live, bits)
        if np.any(s != 1):
            scales[g], chosen[g] = s, a
    return scales, chosen


def smooth_scales(groups: list[Group], absmax: dict[Node, np.ndarray],
                  alpha: float) -> dict[Group, np.ndarray]:
    """s per group at a fixed alpha from per-channel max |x| alone (all-ones groups left out),
    solved consumers-first as `search_scales` (mobilequant starts from these)."""
    profiles = {n: Profile(np.asarray(a, np.float64), -np.asarray(a, np.float64),
                           np.asarray(a, np.float64), np.zeros((0, len(a))))
                for n, a in absmax.items()}
    return search_scales(groups, profiles, alpha)[0]


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


def target_bits(target: object) -> tuple[int, int]:
    """(activation, weight) bits the target's quantize defaults store a linear's operands in:
    16 for activations="int16", the weights' integer width ("int4": 4), else 8."""
    defaults = getattr(target, "quantize", None) or {}
    act = 16 if defaults.get("activations") == "int16" else 8
    weights = str(defaults.get("weights", "int8"))
    width = int(weights[3:]) if weights[:3] == "int" and weights[3:].isdigit() else 8
    return act, width


@register_pass("smoothquant", calibration=True, target=True)
def smoothquant(graph: Graph, ctx: PassContext, *, alpha: float | None = None,
                shared_norms: bool = True, profiles: dict[str, Profile] | None = None) -> Graph:
    """Migrate activation outlier scale into the next linears' weights (SmoothQuant)."""
    if alpha is not None and not 0 <= alpha <= 1:
        raise ValueError(f"smoothquant: alpha must lie in [0, 1] (or None: searched), got {alpha}")
    groups = find_groups(graph, shared_norms=shared_norms)
    if not groups:
        ctx.note("smoothquant: no layer_norm/linear -> linear group to smooth; graph unchanged")
        return graph
    if profiles is None:
        calibration = require_calibration(ctx.calibration, "smoothquant")
        profiles = activation_profiles(graph, calibration, {g.act for g in groups})
    else:
        keys = value_keys(graph)
        missing = sorted(keys[g.act] for g in groups if keys[g.act] not in profiles)
        if missing:
            raise ValueError(f"smoothquant: no profile given for {', '.join(missing[:3])}"
                             f"{' ...' if len(missing) > 3 else ''}")
        profiles = {g.act: profiles[keys[g.act]] for g in groups}
    bits = target_bits(ctx.target)
    scales, chosen = search_scales(groups, profiles, alpha, bits)
    if not scales:
        why = (f"every s within {SNAP} of 1" if alpha is not None else
               f"no alpha lowers the W{bits[1]}A{bits[0]} error")
        ctx.note(f"smoothquant: {plural(len(groups), 'group')} left as they are ({why}); "
                 "graph unchanged")
        return graph
    before = np.mean([range_ratio(profiles[g.act].absmax) for g in scales])
    after = np.mean([range_ratio(profiles[g.act].absmax / s) for g, s in scales.items()])
    norms = sum(g.producer.op == "layer_norm" for g in scales)
    copies = sum(g.shared for g in scales)
    alphas = sorted(set(chosen.values()))
    how = (f"alpha {alpha}" if alpha is not None else
           f"alpha searched per group for W{bits[1]}A{bits[0]}: " + ", ".join(
               f"{a} x{sum(v == a for v in chosen.values())}" for a in alphas))
    left = len(groups) - len(scales)
    ctx.note(f"smoothquant: smoothed {plural(len(scales), 'group')} ({norms} layer_norm, "
             f"{len(scales) - norms} linear -> linear{f'; {copies} norms copied' if copies else ''}"
             f"{f'; {left} left as they are' if left else ''}); activation channel range "
             f"max/median {before:.1f} -> {after:.1f}; {how}")
    return apply_scales(graph, scales)[0]


def shared_profiles(graphs: list[tuple[Graph, list[tuple]]], shared_norms: bool = True,
                    ) -> dict[str, Profile]:
    """The profiles of every group's activation over the calibration calls of all `graphs`
    (each with its own calls), keyed by `value_keys`: the `profiles` option that makes graphs of
    one model smooth alike."""
    merged: dict[str, Profile] = {}
    rows = 512 // max(len(graphs), 1)  # sample rows from every graph
    for graph, calls in graphs:
        keys = value_keys(graph)
        groups = find_groups(graph, shared_norms=shared_norms)
        acts = {g.act for g in groups}
        for node, profile in activation_profiles(graph, calls, acts, rows).items():
            key = keys[node]
            merged[key] = merge_profiles(merged[key], profile) if key in merged else profile
    return merged
