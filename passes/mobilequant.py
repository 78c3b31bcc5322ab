"""mobilequant: learn the smoothing scales and activation ranges end to end (MobileQuant).

Before: the float graph.
After:  the float graph with learned per-channel scales folded in exactly as `smoothquant` folds
        its own (same groups: layer_norm -> linear(s), linear [-> relu] -> linear; option
        `shared_norms` as there), and graph.meta["activation_ranges"] = {value key: (min, max)}
        for the input of every linear and each non-constant operand of every matmul, keyed by
        `calibration.value_keys` of the result (loc/op, '#k' for repeats), plus
        graph.meta["mobilequant"] = {steps, lr, groups, rel_error}.

How: the smoothquant scales (`alpha`) are folded in first, so every group reads a value of its
own (shared norms get their copy) and the learned scales start at 1. A differentiable torch
mirror of the graph (`TorchMirror`: each op's `mirror` trait in compiler/ops, its numpy
semantics in torch, given for the ops transformer-style graphs use) runs with W8A8 fake
quantization inserted: the weight of every constant-weight linear, times its group's scale,
symmetric int8 per output channel; every activation a linear or matmul reads (divided by its
group's scale) asymmetric 8-bit per tensor over a learnable clipping range; rounding passes
gradients straight through. Adam (`lr`, `steps`, a tqdm bar when `progress` and stderr is a TTY)
minimises the MSE between those outputs and the float outputs over all calibration tuples.
Parameters are log-scales and range bounds in units of their initial (min/max) width, so one
`lr` suits every tensor. The iterate with the lowest loss is kept: never worse than the
smoothquant start on the calibration data.

Requires: calibration data in the PassContext; ops the mirror knows (others raise
UnsupportedError naming the op and module). Ensures: the same float function within rounding;
the ranges in meta; a note with the fake-quant W8A8 output MSE and relative error with no
transform, at the smoothquant start and learned. Idempotent: a graph whose meta says
mobilequant ran is returned as it is (a second optimisation would start elsewhere).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from npuc.errors import UnsupportedError
from npuc.interpreter import interpret
from npuc.ir import DType, Graph, Node
from npuc.ops import NO_MIRROR, OPS
from npuc.ops.elementwise import TORCH_DTYPES
from npuc.pipeline import PassContext, plural, register_pass

from .calibration import activation_absmax, require_calibration, value_keys
from .smoothquant import Group, apply_scales, find_groups, smooth_scales

Tensor = torch.Tensor
QMAX_W = 127  # symmetric int8 weights: q in [-127, 127]
QMAX_A = 255  # asymmetric 8-bit activations: q in [0, 255]


def _tensor(value: Any, dtype: DType) -> Tensor:
    array = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
    return torch.from_numpy(np.array(array, dtype=dtype.numpy)).to(TORCH_DTYPES[dtype])


Operands = Callable[[Node, list[Tensor]], list[Tensor]]


class TorchMirror:
    """Runs an IR graph in torch, differentiably; `operands(node, args)` may replace a node's
    operands before it runs (fake quantization). Raises UnsupportedError for an op it lacks."""

    def __init__(self, graph: Graph, who: str = "mobilequant") -> None:
        for node in graph.nodes:
            if node.op not in ("input", "const") and OPS[node.op].mirror is NO_MIRROR:
                raise UnsupportedError(
                    f"{who} has no torch mirror for op '{node.op}'", op=node.op, loc=node.loc,
                    stage=who, hint=f"run {who} on a graph without '{node.op}' (e.g. split the "
                    "model), or give the op a torch mirror (the `mirror` of its defop in "
                    "compiler/ops)")
        self.graph = graph
        self.consts = {n: _tensor(n.data, n.dtype) for n in graph.nodes if n.is_const}

    def run(self, inputs: Sequence[Any], operands: Operands | None = None) -> list[Tensor]:
        env: dict[Node, Tensor] = dict(self.consts)
        for node, value in zip(self.graph.inputs, inputs, strict=True):
            env[node] = _tensor(value, node.dtype)
        for node in self.graph.nodes:
            if node in env:
                continue
            args = [env[i] for i in node.inputs]
            if operands is not None:
                args = operands(node, args)
            env[node] = OPS[node.op].mirror(node.attrs, *args)
        return [env[o] for o in self.graph.outputs]


def round_ste(x: Tensor) -> Tensor:
    """round(x) forward, identity backward (straight-through estimator)."""
    return x + (torch.round(x) - x).detach()


def fake_quant_weight(w: Tensor) -> Tensor:
    """Symmetric int8 per output channel (rows of a linear's weight)."""
    scale = w.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / QMAX_W
    return round_ste(w / scale) * scale


def fake_quant_activation(x: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """Asymmetric 8-bit per tensor over [lo, hi] (widened to hold 0); values outside clip."""
    lo, hi = torch.clamp(lo, max=0.0), torch.clamp(hi, min=0.0)
    scale = (hi - lo).clamp_min(1e-8) / QMAX_A
    zero = torch.clamp(round_ste(-lo / scale), 0, QMAX_A)
    q = torch.clamp(round_ste(x / scale) + zero, 0, QMAX_A)
    return (q - zero) * scale


def quantized_inputs(graph: Graph) -> list[Node]:
    """The activations W8A8 quantizes: the input of every linear, every non-constant operand of
    a matmul (and of a linear whose weight is not constant)."""
    acts: dict[Node, None] = {}
    for node in graph.nodes:
        if node.op == "linear" and node.inputs[1].is_const:
            acts[node.inputs[0]] = None
        elif node.op in ("linear", "matmul"):
            acts.update((i, None) for i in node.inputs if not i.is_const)
    return [a for a in acts if a.dtype.is_float]


class FakeQuant:
    """W8A8 fake quantization of a mirrored graph, with learnable smoothing scales per group
    (consumers read act / s and weigh it with W * s; s starts at 1) and learnable activation
    ranges (set by `observe` or `set_ranges`)."""

    def __init__(self, graph: Graph, groups: Sequence[Group] = ()) -> None:
        if any(g.shared for g in groups):
            raise ValueError("FakeQuant: smooth shared layer_norms first (apply_scales copies)")
        self.mirror = TorchMirror(graph)
        self.acts = quantized_inputs(graph)
        self.log_s = {g.act: torch.zeros(g.act.shape[-1], requires_grad=True) for g in groups}
        self.group_of = {c: g.act for g in groups for c in g.consumers}
        self.lo0: dict[Node, float] = {}
        self.width: dict[Node, float] = {}
        self.delta = {a: torch.zeros(2, requires_grad=True) for a in self.acts}
        self._observed: dict[Node, list[float]] | None = None
        self._acts: dict[Node, Tensor] = {}  # per input tuple
        self._weights: dict[Node, Tensor] = {}  # per run_all (one optimiser step)
        self._fixed: dict[Node, Tensor] = {}  # quantized weights outside every group

    def parameters(self) -> list[Tensor]:
        return [*self.log_s.values(), *self.delta.values()]

    def scale(self, act: Node) -> np.ndarray:
        return np.exp(self.log_s[act].detach().double().numpy())

    def bounds(self, act: Node) -> tuple[Tensor, Tensor]:
        lo = self.lo0[act] + self.width[act] * self.delta[act][0]
        hi = self.lo0[act] + self.width[act] * (1 + self.delta[act][1])
        return lo, hi

    def ranges(self) -> dict[Node, tuple[float, float]]:
        """The current clipping range of each quantized activation, widened to hold 0."""
        out = {}
        for a in self.acts:
            lo, hi = (float(t.detach()) for t in self.bounds(a))
            out[a] = (min(lo, 0.0), max(hi, 0.0))
        return out

    def set_ranges(self, ranges: dict[Node, tuple[float, float]]) -> None:
        for a, (lo, hi) in ranges.items():
            self.lo0[a], self.width[a] = lo, max(hi - lo, 1e-8)
            with torch.no_grad():
                self.delta[a].zero_()

    def observe(self, calibration: Sequence[tuple]) -> None:
        """Set every range to the min/max its (smoothed) activation takes in float."""
        self._observed = {}
        with torch.no_grad():
            self.run_all(calibration)
        seen, self._observed = self._observed, None
        self.set_ranges({a: (min(lo, 0.0), max(hi, 0.0)) for a, (lo, hi) in seen.items()})

    def _activation(self, act: Node, x: Tensor) -> Tensor:
        if act in self._acts:
            return self._acts[act]
        if act in self.log_s:
            x = x / torch.exp(self.log_s[act])
        if self._observed is not None:
            lo, hi = float(x.min()), float(x.max())
            old = self._observed.get(act, [lo, hi])
            self._observed[act] = [min(old[0], lo), max(old[1], hi)]
        elif act in self.lo0:
            x = fake_quant_activation(x, *self.bounds(act))
        self._acts[act] = x
        return x

    def _weight(self, node: Node, w: Tensor) -> Tensor:
        if self._observed is not None:  # float: the transformed weight
            return w * torch.exp(self.log_s[self.group_of[node]]) if node in self.group_of else w
        if node not in self.group_of:
            if node not in self._fixed:
                with torch.no_grad():
                    self._fixed[node] = fake_quant_weight(w)
            return self._fixed[node]
        if node not in self._weights:
            self._weights[node] = fake_quant_weight(w * torch.exp(self.log_s[self.group_of[node]]))
        return self._weights[node]

    def _operands(self, node: Node, args: list[Tensor]) -> list[Tensor]:
        if node.op == "linear" and node.inputs[1].is_const:
            act = node.inputs[0]
            x = self._activation(act, args[0]) if act.dtype.is_float else args[0]
            return [x, self._weight(node, args[1]), *args[2:]]
        if node.op in ("linear", "matmul"):
            return [self._activation(i, a) if not i.is_const and i.dtype.is_float else a
                    for i, a in zip(node.inputs, args, strict=True)]
        return args

    def run_all(self, calibration: Sequence[tuple]) -> list[list[Tensor]]:
        """The outputs for every input tuple; the quantized weights are computed once."""
        self._weights = {}
        outs = []
        for inputs in calibration:
            self._acts = {}
            outs.append(self.mirror.run(inputs, self._operands))
        self._acts, self._weights = {}, {}
        return outs


def _float_outputs(graph: Graph) -> list[int]:
    return [i for i, o in enumerate(graph.outputs) if o.dtype.is_float]


def _errors(fq: FakeQuant, calibration: Sequence[tuple],
            reference: list[list[Tensor]]) -> tuple[float, float]:
    """(MSE, relative error ||q - f|| / ||f||) of the fake-quant outputs, over all of them."""
    keep = _float_outputs(fq.mirror.graph)
    sq = ref = count = 0.0
    with torch.no_grad():
        for got, want in zip(fq.run_all(calibration), reference, strict=True):
            for i in keep:
                d = got[i].double() - want[i].double()
                sq += float((d * d).sum())
                ref += float((want[i].double() ** 2).sum())
                count += want[i].numel()
    return sq / max(count, 1), math.sqrt(sq / max(ref, 1e-30))


def _reference(graph: Graph, mirror: TorchMirror,
               calibration: Sequence[tuple]) -> list[list[Tensor]]:
    """Float outputs from the mirror, checked once against the reference interpreter."""
    with torch.no_grad():
        outs = [mirror.run(inputs) for inputs in calibration]
    want = interpret(graph, *calibration[0])
    for i in _float_outputs(graph):
        got, ref = outs[0][i].double().numpy(), np.asarray(want[i], np.float64)
        err = np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-12)
        if err > 1e-4:
            raise RuntimeError(f"mobilequant: the torch mirror of @{graph.name} disagrees with "
                               f"the interpreter on output {i} (relative error {err:.1e})")
    return outs


def observed_ranges(graph: Graph, calibration: Sequence[tuple]) -> dict[str, tuple[float, float]]:
    """The min/max (widened to hold 0) of every activation W8A8 quantizes, over `calibration`,
    keyed by `value_keys`: the ranges a plain min/max calibration would pick."""
    fq = FakeQuant(graph)
    fq.observe(list(calibration))
    keys = value_keys(graph)
    return {keys[a]: r for a, r in fq.ranges().items()}


def fake_quant_error(graph: Graph, data: Sequence[tuple],
                     ranges: dict[str, tuple[float, float]] | None = None) -> tuple[float, float]:
    """(MSE, relative error) of `graph` under W8A8 fake quantization against its float outputs,
    on `data`: activation ranges from `ranges` (keyed by `value_keys`; e.g. from
    `observed_ranges` on calibration data, or graph.meta["activation_ranges"]), else the min/max
    observed on `data`. The measure the mobilequant note reports."""
    data = list(data)
    fq = FakeQuant(graph)
    fq.observe(data)
    if ranges:
        keys = value_keys(graph)
        fq.set_ranges({a: ranges[keys[a]] for a in fq.acts if keys[a] in ranges})
    return _errors(fq, data, _reference(graph, fq.mirror, data))


def _optimise(fq: FakeQuant, calibration: Sequence[tuple], reference: list[list[Tensor]],
              steps: int, lr: float, progress: bool) -> float:
    """Adam on the MSE; leaves fq at the best iterate seen; returns the best loss."""
    params = fq.parameters()
    keep = _float_outputs(fq.mirror.graph)
    optimiser = torch.optim.Adam(params, lr=lr)
    best, best_state = math.inf, [p.detach().clone() for p in params]
    bar = tqdm(range(steps + 1), desc="mobilequant", leave=False,
               disable=not (progress and sys.stderr.isatty()))
    for step in bar:
        optimiser.zero_grad()
        outs = fq.run_all(calibration)
        loss = sum(F.mse_loss(got[i], want[i]) for got, want in zip(outs, reference, strict=True)
                   for i in keep) / len(calibration)
        total = loss.item()
        if total < best:
            best, best_state = total, [p.detach().clone() for p in params]
        if step < steps:
            loss.backward()
            optimiser.step()
        bar.set_postfix(mse=f"{total:.3g}")
    with torch.no_grad():
        for p, v in zip(params, best_state, strict=True):
            p.copy_(v)
    return best


@register_pass("mobilequant", calibration=True)
def mobilequant(graph: Graph, ctx: PassContext, *, steps: int = 100, lr: float = 1e-3,
                alpha: float = 0.5, shared_norms: bool = False, progress: bool = True) -> Graph:
    """Jointly learn smoothing scales and activation ranges for W8A8 (MobileQuant)."""
    if "mobilequant" in graph.meta:
        ctx.note("mobilequant: already applied (graph.meta['mobilequant']); unchanged")
        return graph
    if steps < 0 or lr <= 0:
        raise ValueError(f"mobilequant: need steps >= 0 and lr > 0, got {steps}, {lr}")
    start = time.perf_counter()
    calibration = require_calibration(ctx.calibration, "mobilequant")
    plain = FakeQuant(graph)
    if not plain.acts or not _float_outputs(graph):
        ctx.note("mobilequant: no linear or matmul to quantize, or no float output to match")
        return graph
    reference = _reference(graph, plain.mirror, calibration)
    plain.observe(calibration)
    none = _errors(plain, calibration, reference)

    # start from the smoothquant transform, folded (shared norms get their copies here), so the
    # learned scales start at 1 on a graph whose every group reads a value of its own
    found = find_groups(graph, shared_norms=shared_norms)
    absmax = activation_absmax(graph, calibration, {g.act for g in found})
    init = smooth_scales(found, absmax, alpha)
    smoothed = apply_scales(graph, {g: init.get(g, np.ones(g.act.shape[-1])) for g in found})[0]
    groups = find_groups(smoothed)
    fq = FakeQuant(smoothed, groups)
    fq.observe(calibration)
    before = _errors(fq, calibration, reference)
    _optimise(fq, calibration, reference, steps, lr, progress)
    after = _errors(fq, calibration, reference)

    result, final = apply_scales(smoothed, {g: fq.scale(g.act) for g in groups})
    keys = value_keys(result)
    ranges = {keys[final.get(a, a)]: r for a, r in fq.ranges().items()}
    info = {"steps": steps, "lr": lr, "groups": len(groups), "rel_error": after[1]}
    meta = {**graph.meta, "activation_ranges": {**graph.meta.get("activation_ranges", {}),
                                                **ranges}, "mobilequant": info}
    ctx.note(f"mobilequant: {plural(len(groups), 'group')}, {len(ranges)} activation ranges, "
             f"{steps} steps "
             f"in {time.perf_counter() - start:.1f} s; fake-quant W8A8 output rel. error "
             f"{none[1]:.4f} (no transform) -> {before[1]:.4f} (smoothquant init) -> "
             f"{after[1]:.4f} (learned); MSE {none[0]:.3g} -> {before[0]:.3g} -> {after[0]:.3g}")
    return result.remapped({}, meta)
