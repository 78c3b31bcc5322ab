"""lowrank: factorise linear and conv layers by truncated SVD into two thinner layers.

Before: %y = linear(%x, %w, %b)                           w: (O, I)
After:  %t = linear(%x, %a)   %y = linear(%t, %c, %b)      a: (r, I), c: (O, r), c @ a = w_r

Before: %y = conv(%x, %w, %b) {kh x kw, stride (sh, sw), padding, dilation (dh, dw), groups 1}
After, mode "channel" (the SVD of w reshaped O x (C*kh*kw); any kernel, 1-d included):
        %t = conv(%x, %a) {kh x kw, the same stride, padding, dilation}   a: (r, C, kh, kw)
        %y = conv(%t, %c, %b) {1x1}                                      c: (O, r, 1, 1)
After, mode "spatial" (2-d kernels with kh, kw > 1; w[o, c, i, j] ~ sum_t a[t, c, i] c[o, t, j],
        the SVD of w permuted to (C*kh) x (O*kw)):
        %t = conv(%x, %a) {kh x 1, stride (sh, 1), dilation (dh, 1), the row padding}
        %y = conv(%t, %c, %b) {1 x kw, stride (1, sw), dilation (1, dw), the column padding}
The first factor has no bias, so the second's column padding pads the zeros the original padded.
Both factors carry sqrt(s) (balanced: they quantize alike) and the layer's module path (loc), so
later passes' `layers=` globs still find them.

Options, exactly one of `rank`, `energy`, `budget` choosing each layer's rank r:
- `rank`: an int r, or a float in (0, 1]: that fraction of the layer's full rank;
- `energy`: the smallest r whose singular values keep that fraction of sum(s^2);
- `budget`: the fraction of the graph's MACs (`budget_of="macs"`) or weights ("params") to
  keep, allocated by the search below; `max_error` (relative output error on the calibration
  data) bounds it, `steps` (8) is its number of rounds, `progress` shows a tqdm bar.
`mode`: "channel", "spatial" or "auto" (default): both for a conv with a 2-d kernel, compared at
the smaller of their two MAC counts (the budget search: at the budget's share of the layer), the
one with less output error on the calibration data wins; linear layers, 1-d, 1 x k, k x 1 and
1x1 convs factorise by channel in every mode. `fit`: "outputs" (default) takes the SVD of
w L, G = L L^T the Gram of the windows the layer reads on the calibration data (damped by 1% of
its mean diagonal), then the right factor times L^-1: the rank-r pair with the least output error
on that data (Eckart-Young in G's metric; digits CNN, its 3x3 conv at rank 12 of 32: 94.4% test
accuracy, 60.8% with the plain SVD); "weights": the SVD of w itself. Spatial pairs always fit
the weights (the best output fit has no closed form there). `energy` counts the singular values
of the matrix decomposed: with "outputs", the fraction of the layer's output energy kept.
`layers`: module-path globs (fnmatch on node.loc; default every layer; globs that match no
layer are an error listing the layers). `allow_growth` (False):
also factorise where the pair is not smaller (only to study the factorisation: full rank always
grows a layer).

The budget search (the iterative AutoML LRF point: many small steps, each re-measured, where
one-shot rank selection fails at high compression): round k of `steps` lowers the graph's cost to
total * budget**(k / steps). Each round runs the current graph on the calibration data, giving
its output error E = sum ||y - y_fp||^2 / sum ||y_fp||^2 over the float outputs and the input
each layer now sees (upstream factorisations included); on that input, every layer's error at
each of its ranks (linear/channel in closed form, the tail sum of s_i^2 ||v_i . x||^2; spatial by
running it at up to 16 ranks); for every layer its best next step (the rank with the least error
increase per unit of cost saved), measured end to end alone (re-running only the graph after
it); then steps are taken, least error per cost first (a layer's further steps in the round
scaled by what its measured step cost per unit of its own error), until the round's cost is met.
Steps predicted to pass `max_error` are not taken; a round measured above it is undone step by
step and the search stops there.

Requires: calibration data (the pass manager refuses it without); constant weights. Ensures: the
graph verifies; the input is not mutated; every pair has fewer weights (`factorisation_shrinks`,
the inequality merge_linear's growth guard must share, so it never merges a pair back) and fewer
MACs than the layer it replaces, else the layer is left alone and named in the note; at full rank
(`allow_growth`) the same function within float rounding; for linear and channel pairs the
layer's output error never rises with the rank (spatial pairs: the weight error does not, their
output error may). The note: per layer the mode, rank, MACs and weights before and after and its
relative output error alone on the calibration inputs; the graph's relative output error. Left
alone: grouped and depthwise convs (named in the note), conv_transpose, non-constant or non-float
weights. Not idempotent: a second run factorises the factors.
"""

from __future__ import annotations

import fnmatch
import heapq
import itertools
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import scipy.linalg
from tqdm import tqdm

from npuc.driver import summarize
from npuc.ir import Graph, Node, const, graph_input
from npuc.ops import evaluate, macs, make
from npuc.pipeline import PassContext, plural, register_pass
from npuc.rewrite import rewrite

from .calibration import require_calibration
from .channel_affine import is_layer

SPATIAL_GRID = 16  # ranks per round at which a spatial pair's error is measured (not separable)
DAMPING = 0.01  # of the mean diagonal, added to an input Gram matrix (GPTQ's default percdamp)


def factorisation_shrinks(whole: int, factors: int) -> bool:
    """Whether two factor layers with `factors` weights in all are smaller than the single layer
    of `whole` weights they compute. lowrank factorises only where this holds, and merge_linear
    must refuse a merge exactly where it holds: one shared inequality, so merge_linear never
    undoes a factorisation lowrank accepted."""
    return factors < whole


def _svd(m: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(left, right, s) with m == left @ right, s descending, left's columns and right's rows of
    norm sqrt(s_i) and mutually orthogonal: the first r terms are m's best rank-r approximation.
    From the eigenvectors U of the smaller Gram matrix (the SVD's subspaces, several times faster
    than LAPACK's SVD on these shapes); right = U^T m, so m is reproduced to rounding at full rank
    however inaccurate the solver is on tiny singular values."""
    flip = m.shape[0] > m.shape[1]
    a = m.T if flip else m
    u = np.linalg.eigh(a @ a.T)[1]
    b = u.T @ a
    s = np.linalg.norm(b, axis=1)
    order = np.argsort(-s, kind="stable")
    u, b, s = u[:, order], b[order], s[order]
    root = np.sqrt(s)
    left, right = u * root, b / np.where(root > 0, root, 1.0)[:, None]
    return (right.T, left.T, s) if flip else (left, right, s)


def _run(node: Node, x: Node, value: np.ndarray) -> np.ndarray:
    """The value of `node` (a layer or a pair) when its input `x` holds `value`."""
    if node is x:
        return value
    if node.is_const:
        return node.data
    return evaluate(node, *(_run(i, x, value) for i in node.inputs))


@dataclass(frozen=True, eq=False)
class Factorisation:
    """One layer's weight as the product of two in one mode ("linear", "channel", "spatial"):
    the mode's matrix of the weight is left @ right (see `_svd`), whose first r terms give the
    rank-r pair. MACs and weights of a pair are linear in r: `unit_macs`, `unit_weights`."""

    layer: Node
    mode: str
    left: np.ndarray
    right: np.ndarray
    s: np.ndarray
    unit_macs: int
    unit_weights: int

    @property
    def full_rank(self) -> int:
        return len(self.s)

    @property
    def dense_weights(self) -> int:
        return self.layer.inputs[1].type.size

    def macs(self, rank: int) -> int:
        return rank * self.unit_macs

    def weights(self, rank: int) -> int:
        return rank * self.unit_weights

    def accepts(self, rank: int) -> bool:
        """A pair with fewer weights (the shared predicate) and fewer MACs than the layer."""
        return (factorisation_shrinks(self.dense_weights, self.weights(rank))
                and self.macs(rank) < macs(self.layer))

    def max_rank(self, allow_growth: bool = False) -> int:
        """The largest rank lowrank takes (0: none)."""
        if allow_growth:
            return self.full_rank
        return max((r for r in range(1, self.full_rank + 1) if self.accepts(r)), default=0)

    def energy_rank(self, energy: float) -> int:
        """The smallest rank keeping `energy` of sum(s^2)."""
        kept = np.cumsum(self.s ** 2)
        if kept[-1] == 0:
            return 1
        return min(int(np.searchsorted(kept, energy * kept[-1] * (1 - 1e-12))) + 1,
                   self.full_rank)

    def _factors(self, rank: int) -> tuple[np.ndarray, np.ndarray]:
        left, right = self.left[:, :rank], self.right[:rank]
        o, *rest = self.layer.inputs[1].shape
        if self.mode == "linear":
            return right, left
        if self.mode == "channel":
            return right.reshape(rank, *rest), left.reshape(o, rank, *[1] * (len(rest) - 1))
        c, kh, kw = rest
        return (left.T.reshape(rank, c, kh, 1),
                right.reshape(rank, o, kw).transpose(1, 0, 2).reshape(o, rank, 1, kw))

    def _attrs(self) -> tuple[dict[str, Any], dict[str, Any]]:
        if self.mode == "linear":
            return {}, {}
        a = self.layer.attrs
        if self.mode == "channel":
            n = len(a["stride"])
            return dict(a), {"stride": [1] * n, "padding": [0] * (2 * n), "dilation": [1] * n,
                             "groups": 1}
        (sh, sw), (dh, dw), (top, bottom, left, right) = a["stride"], a["dilation"], a["padding"]
        return ({"stride": [sh, 1], "padding": [top, bottom, 0, 0], "dilation": [dh, 1],
                 "groups": 1},
                {"stride": [1, sw], "padding": [0, 0, left, right], "dilation": [1, dw],
                 "groups": 1})

    def pair(self, x: Node, rank: int) -> Node:
        """The rank-`rank` pair reading `x`; its second layer (the output) is returned."""
        w = self.layer.inputs[1]
        first_w, second_w = (const(f.astype(w.dtype.numpy), w.dtype, w.loc)
                             for f in self._factors(rank))
        first_a, second_a = self._attrs()
        first = make(self.layer.op, [x, first_w], first_a, self.layer.loc)
        return make(self.layer.op, [first, second_w, *self.layer.inputs[2:]], second_a,
                    self.layer.loc)

    def at(self, x: Node, rank: int | None) -> Node:
        """The pair at `rank`, or the layer itself (None), reading `x`."""
        if rank is None:
            return make(self.layer.op, [x, *self.layer.inputs[1:]], self.layer.attrs,
                        self.layer.loc)
        return self.pair(x, rank)

    def sq_errors(self, xs: Sequence[np.ndarray], ranks: Sequence[int]) -> dict[int, float]:
        """sum over the inputs `xs` of ||pair_r(x) - layer(x)||^2, for each r in `ranks`."""
        x = graph_input("x", self.layer.inputs[0].type)
        xs = [np.asarray(v, np.float64) for v in xs]
        if self.mode != "spatial":
            # left has orthogonal columns of norm sqrt(s): the rank-r error is the tail sum of
            # s_i * ||right_i . x||^2, every rank from one run of the full-rank first factor.
            first = self.pair(x, self.full_rank).inputs[0]
            axis = -1 if self.mode == "linear" else 1
            tail = np.zeros(self.full_rank)
            for v in xs:
                proj = np.moveaxis(_run(first, x, v), axis, 0).reshape(self.full_rank, -1)
                tail += np.einsum("ij,ij->i", proj, proj)
            suffix = np.append(np.cumsum((tail * self.s)[::-1])[::-1], 0.0)
            return {r: float(suffix[r]) for r in ranks}
        ys = [_run(self.layer, self.layer.inputs[0], v) for v in xs]
        return {r: float(sum(np.sum((_run(self.pair(x, r), x, v) - y) ** 2)
                             for v, y in zip(xs, ys, strict=True))) for r in ranks}

    def rel_error(self, xs: Sequence[np.ndarray], rank: int) -> float:
        """||pair(x) - layer(x)|| / ||layer(x)|| over the inputs `xs`, measured by running."""
        x = graph_input("x", self.layer.inputs[0].type)
        pair = self.pair(x, rank)
        err = ref = 0.0
        for v in xs:
            v = np.asarray(v, np.float64)
            y = _run(self.layer, self.layer.inputs[0], v)
            err += float(np.sum((_run(pair, x, v) - y) ** 2))
            ref += float(np.sum(y ** 2))
        return math.sqrt(err / ref) if ref > 0 else math.sqrt(err)


def modes_of(layer: Node, mode: str) -> list[str]:
    """The factorisations `mode` asks of `layer`: linear layers and convs whose kernel has a
    unit or single spatial axis have only "linear"/"channel"."""
    if layer.op == "linear":
        return ["linear"]
    kernel = layer.inputs[1].shape[2:]
    spatial = len(kernel) == 2 and min(kernel) > 1
    if not spatial or mode == "channel":
        return ["channel"]
    return ["spatial"] if mode == "spatial" else ["channel", "spatial"]


def _gram(layer: Node, xs: Sequence[np.ndarray]) -> np.ndarray:
    """sum of p p^T over every window p a linear/conv layer reads on the inputs `xs` (the
    conv's own im2col: the layer run with an identity kernel, so padding, stride and dilation
    are the op table's), plus DAMPING of its mean diagonal (as GPTQ damps its Hessian)."""
    w = layer.inputs[1]
    n = math.prod(w.shape[1:])
    x = graph_input("x", layer.inputs[0].type)
    eye = const(np.eye(n, dtype=w.dtype.numpy).reshape(n, *w.shape[1:]), w.dtype)
    window = make(layer.op, [x, eye], layer.attrs)
    gram = np.zeros((n, n))
    for v in xs:
        cols = np.moveaxis(_run(window, x, np.asarray(v, np.float64)),
                           -1 if layer.op == "linear" else 1, 0).reshape(n, -1)
        gram += cols @ cols.T
    return gram + DAMPING * max(np.trace(gram) / n, 1e-12) * np.eye(n)


def decompose(layer: Node, mode: str, xs: Sequence[np.ndarray] | None = None) -> Factorisation:
    """The SVD of `layer`'s weight in `mode` ("linear", "channel", "spatial"). With calibration
    inputs `xs` (linear/channel only), the SVD of w L, G = L L^T the damped Gram of the windows
    the layer reads, the right factor then times L^-1: the rank-r pair with the least output
    error on `xs` (Eckart-Young in the metric G), still exactly w at full rank."""
    w = layer.inputs[1].data.astype(np.float64)
    if mode == "spatial":
        o, c, kh, kw = w.shape
        left, right, s = _svd(w.transpose(1, 2, 0, 3).reshape(c * kh, o * kw))
    elif xs is None:
        left, right, s = _svd(w.reshape(w.shape[0], -1))
    else:
        chol = np.linalg.cholesky(_gram(layer, xs))
        left, right, s = _svd(w.reshape(w.shape[0], -1) @ chol)
        right = scipy.linalg.solve_triangular(chol, right.T, trans="T", lower=True).T
    probe = Factorisation(layer, mode, left, right, s, 0, 0)
    one = probe.pair(graph_input("x", layer.inputs[0].type), 1)
    return Factorisation(layer, mode, left, right, s, macs(one) + macs(one.inputs[0]),
                         one.inputs[1].type.size + one.inputs[0].inputs[1].type.size)


# ------------------------------------------------------------------ measuring on calibration data


def _array(value: Any, node: Node) -> np.ndarray:
    array = value.detach().cpu().numpy() if hasattr(value, "detach") else value
    return np.asarray(array, dtype=node.dtype.numpy)


class _Runner:
    """Runs graphs on the calibration inputs and measures their output error against the input
    graph's float outputs. It keeps the values of the input graph, and `error(g, keep=True)`
    keeps g's instead; every run reuses the kept values of the nodes it shares with that graph (a
    rewrite rebuilds only what lies after a change), so measuring one layer's step re-runs only
    the graph after it."""

    def __init__(self, graph: Graph, calibration: Sequence[tuple]) -> None:
        self.inputs = [[_array(v, n) for n, v in zip(graph.inputs, sample, strict=True)]
                       for sample in calibration]
        self.kept: list[dict[Node, np.ndarray]] = [{} for _ in calibration]
        self.reference = []
        for k in range(len(calibration)):
            env = self._values(graph, k)
            self.kept[k] = {n: v for n, v in env.items() if not n.is_const}
            self.reference.append(self._outputs(graph, env))
        energy = sum(float(np.sum(y ** 2)) for ys in self.reference for y in ys)
        self.scale = 1.0 / energy if energy > 0 else 1.0

    def _values(self, graph: Graph, k: int) -> dict[Node, np.ndarray]:
        env = dict(zip(graph.inputs, self.inputs[k], strict=True))
        kept = self.kept[k]
        for node in graph.nodes:
            if node in env:
                continue
            if node in kept:
                env[node] = kept[node]
            elif node.is_const:
                env[node] = node.data
            else:
                env[node] = evaluate(node, *(env[i] for i in node.inputs))
        return env

    @staticmethod
    def _outputs(graph: Graph, env: dict[Node, np.ndarray]) -> list[np.ndarray]:
        return [np.asarray(env[o], np.float64) for o in graph.outputs if o.dtype.is_float]

    def error(self, graph: Graph, keep: bool = False) -> float:
        """sum ||y - y_ref||^2 / sum ||y_ref||^2 over every float output and calibration input."""
        total = 0.0
        for k, reference in enumerate(self.reference):
            env = self._values(graph, k)
            if keep:
                self.kept[k] = {n: v for n, v in env.items() if not n.is_const}
            total += sum(float(np.sum((y - r) ** 2))
                         for y, r in zip(self._outputs(graph, env), reference, strict=True))
        return total * self.scale

    def values(self, node: Node) -> list[np.ndarray]:
        """`node`'s value on every calibration input, in the graph last run with keep=True."""
        return [kept[node] for kept in self.kept]


# ------------------------------------------------------------------ the layers and their ranks


@dataclass(eq=False)
class _Slot:
    """A layer being factorised: its factorisation, the ranks it may take (descending), its rank
    now (None: the layer itself) and the node computing it in the current graph."""

    fact: Factorisation
    ranks: list[int]
    out: Node
    rank: int | None = None

    @property
    def x(self) -> Node:
        return self.out.inputs[0] if self.rank is None else self.out.inputs[0].inputs[0]

    def cost(self, rank: int | None, of: str) -> int:
        if rank is None:
            return macs(self.fact.layer) if of == "macs" else self.fact.dense_weights
        return self.fact.macs(rank) if of == "macs" else self.fact.weights(rank)


def _rewritten(graph: Graph, changes: dict[_Slot, int | None]) -> tuple[Graph, dict[Node, Node]]:
    """`graph` with each changed slot at its new rank, and where each node of `graph` went."""
    changed = {s.out: s for s in changes}
    moved: dict[Node, Node] = {}

    def rule(node: Node, orig: Node) -> Node | None:
        slot = changed.get(orig)
        new = None
        if slot is not None:
            x = node.inputs[0] if slot.rank is None else node.inputs[0].inputs[0]
            new = slot.fact.at(x, changes[slot])
        moved[orig] = new if new is not None else node
        return new

    return rewrite(graph, rule, origin=True), moved


def _commit(graph: Graph, slots: Sequence[_Slot], changes: dict[_Slot, int | None]) -> Graph:
    """`_rewritten`, with every slot's `out` (and a changed slot's `rank`) following it."""
    result, moved = _rewritten(graph, changes)
    for slot in slots:
        slot.out = moved[slot.out]
    for slot, rank in changes.items():
        slot.rank = rank
    return result


def _candidates(fact: Factorisation, allow_growth: bool) -> list[int]:
    """The ranks a slot may take, descending: all of them where the error of every rank comes
    from one run (linear, channel), an evenly spaced grid where each costs a run (spatial)."""
    top = fact.max_rank(allow_growth)
    if fact.mode != "spatial" or top <= SPATIAL_GRID:
        return list(range(top, 0, -1))
    return sorted({round(r) for r in np.linspace(1, top, SPATIAL_GRID)}, reverse=True)


def _next_step(slot: _Slot, rank: int | None, curve: dict[int | None, float], gap: float,
               of: str) -> tuple[int, float, int] | None:
    """The slot's best step down from `rank`: (new rank, local error increase, cost saved) for
    the lower rank with the least error increase per cost saved, saving at most `gap` (or the
    least a step can save); None when it has no lower rank."""
    now = slot.cost(rank, of)
    lower = [r for r in slot.ranks if slot.cost(r, of) < now]
    if not lower:
        return None
    reach = max(gap, now - slot.cost(lower[0], of))
    best = min((r for r in lower if now - slot.cost(r, of) <= reach),
               key=lambda r: (curve[r] - curve[rank]) / (now - slot.cost(r, of)))
    return best, curve[best] - curve[rank], now - slot.cost(best, of)


Step = tuple[_Slot, int | None, int]  # (slot, rank before, rank after)


@dataclass
class _Search:
    """The budget search over `slots` (see the module docstring)."""

    slots: list[_Slot]
    runner: _Runner
    of: str
    limit: float | None  # max_error squared, in the units of `_Runner.error`
    rounds: int = 0
    stopped: str = ""

    def cost(self, total: int) -> int:
        return total + sum(s.cost(s.rank, self.of) - s.cost(None, self.of) for s in self.slots)

    def run(self, graph: Graph, total: int, budget: float, steps: int, progress: bool) -> Graph:
        error = self.runner.error(graph, keep=True)
        bar = tqdm(range(1, steps + 1), desc="lowrank", leave=False,
                   disable=not (progress and sys.stderr.isatty()))
        for k in bar:
            goal = total * budget ** (k / steps)
            if self.cost(total) <= goal:
                continue  # a coarse step of an earlier round already went this far
            plan = self._plan(graph, error, self.cost(total), goal)
            if not plan:
                self.stopped = self.stopped or "no layer can step further"
                break
            self.rounds += 1
            graph = _commit(graph, self.slots, {slot: new for slot, _, new in plan})
            error = self.runner.error(graph, keep=True)
            while self.limit is not None and error > self.limit and plan:
                slot, old, _ = plan.pop()  # undo the round's steps, the last taken first
                graph = _commit(graph, self.slots, {slot: old})
                error = self.runner.error(graph, keep=True)
                self.stopped = "max_error reached"
            bar.set_postfix(kept=f"{self.cost(total) / total:.3f}",
                            error=f"{math.sqrt(error):.4f}")
            if self.stopped or self.cost(total) <= total * budget:
                break
        bar.close()
        return graph

    def _plan(self, graph: Graph, error: float, cost: int, goal: float) -> list[Step]:
        """One round's steps, in the order taken (see the module docstring)."""
        curves: dict[_Slot, dict[int | None, float]] = {}
        sigma: dict[_Slot, float] = {}  # measured output error per unit of the layer's own
        heap: list[tuple[float, int, _Slot, int, float, int]] = []
        order = itertools.count()
        for slot in self.slots:
            xs = self.runner.values(slot.x)
            curves[slot] = {None: 0.0, **slot.fact.sq_errors(xs, slot.ranks)}
            step = _next_step(slot, slot.rank, curves[slot], cost - goal, self.of)
            if step is None:
                continue
            rank, local, saved = step
            delta = self.runner.error(_rewritten(graph, {slot: rank})[0]) - error
            sigma[slot] = max(delta, 0.0) / local if local > 0 else 0.0
            heapq.heappush(heap, (delta / saved, next(order), slot, rank, delta, saved))
        plan: list[Step] = []
        ranks = {slot: slot.rank for slot in self.slots}
        predicted = error
        while cost > goal and heap:
            _, _, slot, rank, delta, saved = heapq.heappop(heap)
            if saved > cost - goal:  # chosen for a larger gap than is left: choose again
                step = _next_step(slot, ranks[slot], curves[slot], cost - goal, self.of)
                if step is not None and step[0] != rank:
                    rank, local, saved = step
                    heapq.heappush(heap, (sigma[slot] * local / saved, next(order), slot, rank,
                                          sigma[slot] * local, saved))
                    continue
            if self.limit is not None and predicted + delta > self.limit:
                self.stopped = "max_error reached"
                continue  # this layer rests for the round
            plan.append((slot, ranks[slot], rank))
            ranks[slot], predicted, cost = rank, predicted + delta, cost - saved
            step = _next_step(slot, rank, curves[slot], cost - goal, self.of)
            if step is not None:
                rank, local, saved = step
                heapq.heappush(heap, (sigma[slot] * local / saved, next(order), slot, rank,
                                      sigma[slot] * local, saved))
        if plan:
            self.stopped = ""
        return plan


# ------------------------------------------------------------------ the pass


def _select(graph: Graph, layers: Sequence[str] | None) -> tuple[list[Node], list[Node]]:
    """The layers `layers` matches that lowrank factorises, and those it leaves alone (grouped
    and depthwise convs, conv_transpose)."""
    chosen, alone = [], []
    for node in graph.nodes:
        if not (is_layer(node) and node.dtype.is_float):
            continue
        if layers is not None and not any(fnmatch.fnmatchcase(node.loc or "", glob)
                                          for glob in layers):
            continue
        if node.op == "conv_transpose" or node.attrs.get("groups", 1) != 1:
            alone.append(node)
        else:
            chosen.append(node)
    return chosen, alone


def _fixed(facts: list[Factorisation], want: int | float | None, energy: float | None,
           xs: Sequence[np.ndarray], allow_growth: bool) -> tuple[Factorisation, int] | str:
    """The (factorisation, rank) `rank`/`energy` give a layer, or why it is refused. Two modes
    are compared at the smaller of their MAC counts; the lower output error on `xs` wins."""
    def asked(f: Factorisation) -> int:
        if energy is not None:
            return f.energy_rank(energy)
        if isinstance(want, float):
            return max(1, round(want * f.full_rank))
        return min(int(want), f.full_rank)

    ranks = {f: asked(f) for f in facts}
    if len(facts) > 1:
        level = min(f.macs(r) for f, r in ranks.items())
        ranks = {f: min(r, level // f.unit_macs) for f, r in ranks.items()}
    ok = {f: r for f, r in ranks.items() if r >= 1 and (allow_growth or f.accepts(r))}
    if not ok:
        f = facts[0]
        r = asked(f)
        return (f"rank {r}/{f.full_rank} would not shrink it ({f.weights(r):,} weights, "
                f"{f.macs(r):,} MACs vs {f.dense_weights:,}, {macs(f.layer):,})")
    errors = {f: f.sq_errors(xs, [r])[r] for f, r in ok.items()} if len(ok) > 1 else {}
    best = min(ok, key=lambda f: errors.get(f, 0.0))
    return best, ok[best]


def _searched(facts: list[Factorisation], budget: float, of: str, xs: Sequence[np.ndarray],
              allow_growth: bool) -> Factorisation | None:
    """The mode the budget search uses for a layer: with two, the one with less output error
    on `xs` at the budget's share of the layer's cost; None if no rank shrinks it."""
    usable = [f for f in facts if f.max_rank(allow_growth) >= 1]
    if len(usable) < 2:
        return usable[0] if usable else None
    ranks = {}
    for f in usable:
        unit = f.unit_macs if of == "macs" else f.unit_weights
        dense = macs(f.layer) if of == "macs" else f.dense_weights
        ranks[f] = min(max(1, int(budget * dense // unit)), f.max_rank(allow_growth))
    return min(usable, key=lambda f: f.sq_errors(xs, [ranks[f]])[ranks[f]])


def _row(fact: Factorisation, rank: int, error: float) -> str:
    loc = fact.layer.loc or fact.layer.op
    ranks = f"{rank}/{fact.full_rank}"
    return (f"    {loc:<32} {fact.mode:<7} rank {ranks:<9} MACs {macs(fact.layer):,} -> "
            f"{fact.macs(rank):,}, weights {fact.dense_weights:,} -> {fact.weights(rank):,}, "
            f"error {error:.4f}")


def _check(rank: int | float | None, energy: float | None, budget: float | None,
           max_error: float | None, steps: int) -> None:
    given = [name for name, v in (("rank", rank), ("energy", energy), ("budget", budget))
             if v is not None]
    if len(given) != 1:
        raise ValueError("lowrank needs exactly one of rank= (an int, or a fraction of the full "
                         "rank), energy= (fraction of sum(s^2) kept) or budget= (fraction of "
                         f"MACs or params kept); got {', '.join(given) or 'none'}")
    if isinstance(rank, int) and rank < 1 or isinstance(rank, float) and not 0 < rank <= 1:
        raise ValueError(f"lowrank: rank must be an int >= 1 or a float in (0, 1], got {rank}")
    for name, v in (("energy", energy), ("budget", budget)):
        if v is not None and not 0 < v <= 1:
            raise ValueError(f"lowrank: {name} must be in (0, 1], got {v}")
    if max_error is not None and (budget is None or max_error < 0):
        raise ValueError("lowrank: max_error (>= 0) bounds the budget search; give budget= too")
    if steps < 1:
        raise ValueError(f"lowrank: steps must be >= 1, got {steps}")


def _by_rank(graph: Graph, chosen: list[Node], facts: dict[Node, list[Factorisation]],
             inputs: dict[Node, list[np.ndarray]], rank: int | float | None,
             energy: float | None, allow_growth: bool
             ) -> tuple[Graph, dict[Node, tuple[Factorisation, int]], dict[Node, str], str]:
    """`rank` or `energy` in every chosen layer: (graph, picks, refusals, how)."""
    picks, refused = {}, {}
    for layer in chosen:
        pick = _fixed(facts[layer], rank, energy, inputs[layer], allow_growth)
        if isinstance(pick, str):
            refused[layer] = pick
        else:
            picks[layer] = pick

    def rule(node: Node, orig: Node) -> Node | None:
        return picks[orig][0].pair(node.inputs[0], picks[orig][1]) if orig in picks else None

    how = f"rank {rank}" if rank is not None else f"energy {energy}"
    return rewrite(graph, rule, origin=True), picks, refused, how


def _by_budget(graph: Graph, chosen: list[Node], facts: dict[Node, list[Factorisation]],
               inputs: dict[Node, list[np.ndarray]], runner: _Runner, budget: float, of: str,
               max_error: float | None, steps: int, allow_growth: bool, progress: bool
               ) -> tuple[Graph, dict[Node, tuple[Factorisation, int]], dict[Node, str], str]:
    """The budget search: (graph, picks, refusals, how)."""
    slots, refused = [], {}
    for layer in chosen:
        fact = _searched(facts[layer], budget, of, inputs[layer], allow_growth)
        if fact is None:
            refused[layer] = "no rank shrinks it"
        else:
            slots.append(_Slot(fact, _candidates(fact, allow_growth), layer))
    total = getattr(summarize(graph), of)
    search = _Search(slots, runner, of, None if max_error is None else max_error ** 2)
    floor = total + sum(s.cost(s.ranks[-1], of) - s.cost(None, of) for s in slots)
    if floor > budget * total:
        raise ValueError(f"lowrank: a budget of {budget} of {of} is out of reach: rank 1 in "
                         f"every layer it may factorise keeps {floor / total:.3f}; allow more "
                         "layers (layers=) or give a larger budget")
    result = search.run(graph, total, budget, steps, progress)
    picks = {s.fact.layer: (s.fact, s.rank) for s in slots if s.rank is not None}
    kept = search.cost(total) / total
    how = (f"budget {budget} of {of}: {kept:.3f} kept after {plural(search.rounds, 'round')}"
           f"{f', {search.stopped}' if search.stopped else ''}"
           f"{', budget not met' if kept > budget else ''}")
    return result, picks, refused, how


@register_pass("lowrank", exact=False, calibration=True)
def lowrank(graph: Graph, ctx: PassContext, *, rank: int | float | None = None,
            energy: float | None = None, budget: float | None = None,
            budget_of: Literal["macs", "params"] = "macs",
            mode: Literal["channel", "spatial", "auto"] = "auto",
            layers: list[str] | tuple[str, ...] | None = None, max_error: float | None = None,
            fit: Literal["outputs", "weights"] = "outputs", steps: int = 8,
            allow_growth: bool = False, progress: bool = True) -> Graph:
    """Factorise linear/conv layers into two thinner ones by truncated SVD (rank/energy/budget)."""
    _check(rank, energy, budget, max_error, steps)
    calibration = require_calibration(ctx.calibration, "lowrank")
    chosen, alone = _select(graph, layers)
    if layers is not None and not chosen and not alone:
        paths = [n.loc for group in _select(graph, None) for n in group if n.loc]
        shown = ", ".join(paths[:8]) + (", ..." if len(paths) > 8 else "")
        raise ValueError(f"lowrank: option layers={list(layers)!r} matches no linear/conv layer "
                         f"with constant weights (fnmatch on module paths); the layers here: "
                         f"{shown or 'none with a module path'}")
    left = (f"; left alone: {len(alone)} grouped/depthwise conv or conv_transpose "
            f"({', '.join(n.loc or n.op for n in alone)})" if alone else "")
    if not chosen:
        ctx.note(f"lowrank: no linear/conv layer to factorise{left}; graph unchanged")
        return graph
    runner = _Runner(graph, calibration)
    inputs = {layer: runner.values(layer.inputs[0]) for layer in chosen}
    facts = {layer: [decompose(layer, m, inputs[layer] if fit == "outputs" else None)
                     for m in modes_of(layer, mode)] for layer in chosen}
    if budget is None:
        result, picks, refused, how = _by_rank(graph, chosen, facts, inputs, rank, energy,
                                               allow_growth)
    else:
        result, picks, refused, how = _by_budget(graph, chosen, facts, inputs, runner, budget,
                                                 budget_of, max_error, steps, allow_growth,
                                                 progress)
    before, after = summarize(graph), summarize(result)
    counts = {m: sum(f.mode == m for f, _ in picks.values()) for m in ("linear", "channel",
                                                                        "spatial")}
    modes = ", ".join(f"{n} {m}" for m, n in counts.items() if n)
    rows = []
    for layer in chosen:
        if layer in picks:
            fact, r = picks[layer]
            rows.append(_row(fact, r, fact.rel_error(inputs[layer], r)))
        elif layer in refused:
            rows.append(f"    {layer.loc or layer.op:<32} refused: {refused[layer]}")
    ctx.note(f"lowrank: factorised {len(picks)} of {plural(len(chosen), 'layer')}"
             f"{f' ({modes})' if modes else ''}, {how}; MACs {before.macs:,} -> {after.macs:,}, "
             f"params {before.params:,} -> {after.params:,}; relative output error on the "
             f"calibration data {math.sqrt(runner.error(result)):.4f}{left}\n" + "\n".join(rows))
    return result
