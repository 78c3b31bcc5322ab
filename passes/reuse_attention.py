"""reuse_attention: compute attention maps at the calls a policy says, reuse them at the others
(structured reuse of attention maps across diffusion sampling steps).

Before: %s = matmul(%q, %kt) [-> mul/div by a scale, add a mask, ...]
        %p = softmax(%s)                                   the map
        %o = matmul(%p, %v)                                the attention output
After:  %c = state {name = "<loc>.map"}
        %r = reuse(%p, %c, %step) {recompute = [...]}      mode "map": the map is cached (as the
                                                           product reads it, after views)
        %o = matmul(%r, %v)
        %w = reuse(%r, %c, %step) {recompute = [...]}      stored only by a call whose next
        state "<loc>.map" = %w                             call reuses: the others leave the
                                                           cache as it is (no DRAM write)
In mode "output" the attention output %o is cached instead (it holds far fewer bytes than the
heads x N x N map, and a reusing call also skips the product with V).

Attention is a softmax whose input comes, through at most a few elementwise ops (a scale, a
mask, a bias), from a matmul of two computed values, and whose result a matmul reads as its
first operand: sdpa as capture decomposes it, multi-head, hand-written, self or cross.

`step` names the model's integer input that tells the calls apart: the timestep a diffusion
model already takes, or a step index. `timesteps` lists its value at each call of one
sampling loop (default 0, 1, ..., calls - 1); the schedule of a layer is indexed by that value,
and a value outside the loop recomputes. Policies, per call i of n:
  "always"   recompute every call: the graph computes exactly what it did without the pass;
  "late"     recompute the first reuse_after * n calls, then every `every`-th (the seed's ODE-
             motivated schedule: the maps change least late in sampling);
  "every"    recompute every `every`-th call;
and `layers={glob: [1, 0, ...]}` gives chosen layers (fnmatch on the softmax's module path) a
schedule of their own, one 0/1 per call: how a searched policy is applied.

Requires: a float graph with an integer scalar input `step`. Ensures: every attention found reads
its map (or output) through a `reuse` whose schedule recomputes the first call; one state slot
per attention, named after its module path, written only by the recomputing calls whose next
call of the loop reuses (so "always" never touches its cache); with "always", outputs identical
to the input graph's at every call. Approximate otherwise: a reusing call reads what the last
recomputing call left, so it is only as good as the maps are stable across calls.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatch

import numpy as np
from tqdm import tqdm

from npuc.ir import Graph, Node, StateSlot, state_read
from npuc.ops import make
from npuc.ops.state import STEP_DTYPES
from npuc.pipeline import PassContext, plural, register_pass
from npuc.rewrite import rewrite

POLICIES = ("always", "late", "every")
SCORE_OPS = ("mul", "div", "add", "sub", "where", "reshape", "permute", "expand")
MAX_SCORE_OPS = 4  # elementwise ops allowed between QK^T and the softmax
VIEWS = ("reshape", "permute", "expand")


def attention_maps(graph: Graph) -> list[tuple[Node, Node]]:
    """(softmax, matmul reading it) of every attention in `graph`, in graph order."""
    found = []
    for node in graph.nodes:
        if node.op != "softmax" or not node.dtype.is_float or not _from_scores(node.inputs[0]):
            continue
        product = _product_reading(graph, node)
        if product is not None:
            found.append((node, product))
    return found


def _product_reading(graph: Graph, node: Node) -> Node | None:
    """The matmul that reads `node` (through views) as its first operand: P @ V."""
    for _ in range(MAX_SCORE_OPS + 1):
        readers = graph.users.get(node, [])
        product = [u for u in readers if u.op == "matmul" and u.inputs[0] is node]
        if product:
            return product[0]
        # views, and sdpa's guard of fully masked rows: where(all masked, 0, softmax)
        passing = [u for u in readers
                   if u.op in VIEWS or u.op == "where" and u.inputs[0] is not node]
        if len(readers) != 1 or not passing:
            return None
        node = passing[0]
    return None


def _from_scores(node: Node) -> bool:
    """Whether `node` is QK^T of two computed values, through a few elementwise ops."""
    for _ in range(MAX_SCORE_OPS + 1):
        if node.op == "matmul":
            return not any(i.is_const for i in node.inputs)
        if node.op not in SCORE_OPS:
            return False
        computed = [i for i in node.inputs if not i.is_const]
        if not computed:
            return False
        node = max(computed, key=lambda i: i.type.size)  # the scores, not a mask or a scale
    return False


def schedule_for(policy: str, calls: int, reuse_after: float, every: int) -> list[int]:
    """0/1 per call (1 = recompute) of a policy; the first call always recomputes."""
    if policy == "always":
        return [1] * calls
    if policy == "every":
        return [int(i % every == 0) for i in range(calls)]
    start = max(1, round(reuse_after * calls))
    return [int(i < start or (i - start) % every == 0) for i in range(calls)]


def _table(per_call: Sequence[int], timesteps: Sequence[int]) -> tuple[int, ...]:
    """The schedule indexed by the step input's value: each call's entry at its timestep,
    every value no call takes recomputes."""
    table = [1] * (max(timesteps) + 1)
    for value, recompute in zip(timesteps, per_call, strict=True):
        table[value] = int(recompute)
    return tuple(table)


@register_pass("reuse_attention", exact=False)
def reuse_attention(graph: Graph, ctx: PassContext, *, step: str = "t",
                    calls: int | None = None, timesteps: list[int] | None = None,
                    policy: str = "late", reuse_after: float = 0.5, every: int = 2,
                    mode: str = "map", layers: dict[str, list[int]] | None = None) -> Graph:
    """Cache attention maps (or outputs) in state and reuse them at the calls a policy says."""
    if policy not in POLICIES:
        raise ValueError(f"reuse_attention: policy must be one of {POLICIES}, got {policy!r}")
    if mode not in ("map", "output"):
        raise ValueError(f"reuse_attention: mode must be 'map' or 'output', got {mode!r}")
    if every < 1 or not 0.0 <= reuse_after <= 1.0:
        raise ValueError(f"reuse_attention: every >= 1 and 0 <= reuse_after <= 1, got every="
                         f"{every}, reuse_after={reuse_after}")
    found = attention_maps(graph)
    if not found:  # nothing to cache: the step input is not needed either
        ctx.note("reuse_attention: no attention found (softmax(QK^T) read by a matmul)")
        return graph
    step_node = _step_input(graph, step)
    if timesteps is None:
        if calls is None:
            raise ValueError("reuse_attention: say how many calls a sampling loop makes "
                             "(calls=50) or the step input's value at each (timesteps=[...])")
        timesteps = list(range(calls))
    if len(set(timesteps)) != len(timesteps) or min(timesteps, default=0) < 0:
        raise ValueError(f"reuse_attention: timesteps must be distinct and >= 0, got "
                         f"{timesteps}")
    n = len(timesteps)
    chosen = _per_layer(found, layers or {}, schedule_for(policy, n, reuse_after, every), n)
    # the map as P @ V reads it (after sdpa's masked-row guard), or the product itself
    cached = {(out.inputs[0] if mode == "map" else out):
              (chosen[soft], soft.loc or f"attention{i}") for i, (soft, out) in enumerate(found)}
    slots: list[StateSlot] = []

    def cache(node: Node, original: Node) -> Node | None:
        if original not in cached:
            return None
        per_call, where = cached[original]
        name = f"{where}.{'map' if mode == 'map' else 'out'}"
        if name in {s.name for s in slots}:  # two attentions at one module path
            name += f"#{len(slots)}"
        read = state_read(name, node.type, where)
        kept = make("reuse", [node, read, step_node],
                    {"recompute": _table(per_call, timesteps)}, loc=where)
        # a call stores its value only when the next call of the loop reuses it: the cache
        # keeps what it holds (no DRAM write) at every other call
        stores = [int(per_call[i] and i + 1 < n and not per_call[i + 1]) for i in range(n)]
        written = make("reuse", [kept, read, step_node],
                       {"recompute": _table(stores, timesteps)}, loc=where)
        slots.append(StateSlot(read, written))
        return kept

    result = rewrite(graph, cache, origin=True)
    out = Graph(result.inputs, result.outputs, result.name, result.meta,
                result.state + tuple(slots))
    recomputed = sum(sum(s) for s in chosen.values())
    nbytes = sum(s.type.nbytes for s in slots)
    ctx.note(f"reuse_attention: {plural(len(found), 'attention')} ({mode}), policy "
             f"{policy if not layers else policy + ' + per-layer'}: {recomputed} of "
             f"{len(found) * n} layer-calls recompute; {nbytes:,} B of float state")
    return out


def _step_input(graph: Graph, name: str) -> Node:
    for node in graph.inputs:
        if node.attrs["name"] == name:
            if node.dtype not in STEP_DTYPES or node.type.size != 1:
                raise ValueError(f"reuse_attention: input {name!r} is {node.shape} "
                                 f"{node.dtype}; the step must be one int32/int64 element "
                                 "(pass the timestep as an integer tensor, torch.tensor([t]))")
            return node
    names = [n.attrs["name"] for n in graph.inputs]
    raise ValueError(f"reuse_attention: no input {name!r} (the inputs: {names}); step= names "
                     "the integer input that tells the calls apart, e.g. the timestep")


def _per_layer(found: list[tuple[Node, Node]], layers: Mapping[str, list[int]],
               default: list[int], n: int) -> dict[Node, list[int]]:
    chosen = {}
    for pattern, schedule in layers.items():
        if len(schedule) != n or any(v not in (0, 1) for v in schedule) or not schedule[0]:
            raise ValueError(f"reuse_attention: layers[{pattern!r}] needs {n} entries of 0/1, "
                             f"the first 1 (nothing is cached before the first call)")
        if not any(fnmatch(soft.loc or "", pattern) for soft, _ in found):
            raise ValueError(f"reuse_attention: layers[{pattern!r}] matches no attention; "
                             f"they are: {[soft.loc for soft, _ in found]}")
    for soft, _ in found:
        own = [s for p, s in layers.items() if fnmatch(soft.loc or "", p)]
        chosen[soft] = list(own[-1] if own else default)
    return chosen



def probe_schedules(graph: Graph, calls: int) -> dict[str, list[int]]:
    """Per attention (by module path), a schedule that reuses only at call k + 1, k its index:
    compiled with `layers=` these, each call's simulated cost shows one layer's saving."""
    locs = _locs(graph)
    if calls < len(locs) + 1:
        raise ValueError(f"reuse_attention: probing {len(locs)} attentions needs at least "
                         f"{len(locs) + 1} calls, got {calls}")
    return {loc: [int(i != k + 1) for i in range(calls)] for k, loc in enumerate(locs)}


def layer_savings(cm, timesteps: Sequence[int]) -> dict[str, float]:  # noqa: ANN001
    """Simulated seconds a reusing call of each attention saves on `cm`'s target (the work it
    skips, less the cache read): `cm` compiled with `layers=probe_schedules(graph, n)`."""
    costs = [r.latency_s for r in cm.simulate_calls(timesteps).reports]
    saved = {}
    for slot in cm.ir.state:
        pickers = [n for n in cm.ir.nodes  # the reuse that picks the map, not the store's
                   if n.op == "reuse" and n is not slot.write and n.inputs[1] is slot.read]
        table = pickers[0].attrs["recompute"] if pickers else ()
        reusing = [i for i, t in enumerate(timesteps) if t < len(table) and not table[t]]
        if len(reusing) == 1:
            saved[slot.read.loc] = costs[0] - costs[reusing[0]]
    return saved


@dataclass(frozen=True)
class SearchedPolicy:
    """The result of `search_policy`: `layers` for reuse_attention, and what it measured."""

    layers: dict[str, list[int]]
    quality: float  # of the chosen policy
    baseline: float  # with every call recomputing
    saved_s: float  # simulated seconds saved over the loop
    trials: int  # sampling loops run

    def __str__(self) -> str:
        reused = sum(s.count(0) for s in self.layers.values())
        return (f"searched policy: {reused} layer-calls reuse, quality {self.quality:.4g} "
                f"(every call recomputing: {self.baseline:.4g}), {self.saved_s * 1e3:.3f} ms "
                f"simulated saved per loop, {self.trials} sampling loops")


def search_policy(graph: Graph, timesteps: Sequence[int],
                  sample: Callable[[Graph], np.ndarray],
                  quality: Callable[[np.ndarray], float], bound: float,
                  savings: Mapping[str, float], *, mode: str = "map", step: str = "t",
                  progress: bool | None = None) -> SearchedPolicy:
    """A per-layer, per-call reuse policy that saves the most simulated time with `quality` at
    least `bound`. `sample(g)` runs a whole sampling loop with graph `g` (state kept across its
    calls) and returns the samples; `quality(samples)` scores them (higher is better);
    `savings` is `layer_savings` of the target. Greedy with re-measurement: each (layer, call)
    reuse is scored alone (its saving over the quality it costs), then the longest prefix of
    that order whose combined policy still meets the bound is found by bisection, measuring each
    candidate policy on real samples. Attentions whose reuse saves nothing on the target (where
    reading the cache costs more than recomputing) are never reused."""
    n = len(timesteps)
    locs = _locs(graph)

    def measured(layers: dict[str, list[int]]) -> float:
        cached = reuse_attention_graph(graph, step, timesteps, layers, mode)
        return float(quality(sample(cached)))

    def policy(flips: Sequence[tuple[str, int]]) -> dict[str, list[int]]:
        layers = {loc: [1] * n for loc in locs}
        for loc, call in flips:
            layers[loc][call] = 0
        return layers

    baseline = measured(policy([]))
    candidates = [(loc, i) for loc in locs for i in range(1, n) if savings.get(loc, 0.0) > 0]
    scored = []
    for flip in tqdm(candidates, desc="reuse policy: scoring", unit="trial", leave=False,
                     disable=not progress if progress is not None else len(candidates) < 8):
        loss = max(baseline - measured(policy([flip])), 0.0)
        scored.append((savings[flip[0]] / (loss + 1e-12), flip))
    order = [flip for _, flip in sorted(scored, key=lambda x: -x[0])]
    lo, hi, best, trials = 0, len(order), baseline, 1 + len(candidates)
    while lo < hi:  # the longest prefix of `order` that meets the bound
        mid = (lo + hi + 1) // 2
        q = measured(policy(order[:mid]))
        trials += 1
        if q >= bound:
            lo, best = mid, q
        else:
            hi = mid - 1
    chosen = order[:lo]
    return SearchedPolicy(policy(chosen), best, baseline,
                          sum(savings[loc] for loc, _ in chosen), trials)


def reuse_attention_graph(graph: Graph, step: str, timesteps: Sequence[int],
                          layers: Mapping[str, list[int]], mode: str = "map") -> Graph:
    """The pass with per-layer schedules, as a plain function (for searches)."""
    return reuse_attention(graph, PassContext(), step=step, timesteps=list(timesteps),
                           policy="always", mode=mode, layers=dict(layers))


def _locs(graph: Graph) -> list[str]:
    locs = [soft.loc for soft, _ in attention_maps(graph)]
    if not locs or any(loc is None for loc in locs) or len(set(locs)) != len(locs):
        raise ValueError(f"reuse_attention: a per-layer policy needs every attention at a "
                         f"module path of its own; the attentions here are at {locs}")
    return locs
