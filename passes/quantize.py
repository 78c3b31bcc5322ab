"""quantize: calibrate the float graph and lower it to integer-only ops.

Contract. Requires a float graph and calibration data (`ctx.calibration`). Ensures a graph whose
only float ops are `quantize` on its float inputs and `dequantize` on its float outputs; every
other value is integer, with its quantization parameters in its type: activations int8 asymmetric
per tensor, or int16 symmetric where the target's `[quantize] int16` lists an op that reads them
(or everywhere with `activations="int16"`, a 16x8 DSP's mode: int16 activations times int8
weights, only the second operand of an activation-by-activation matmul narrowed to int8);
weights in the chosen format with per-output-channel scales; biases int32 at s_in * s_w. The
result approximates the float graph; `cm.compare` measures where it loses accuracy.

Three steps:
1. `prepare` folds constants and rewrites the float graph exactly into forms with integer
   kernels: division by a constant becomes multiplication, other division a reciprocal times,
   a power with a constant exponent a unary `power` (a table), GLU a sigmoid gate, global
   adaptive pooling a mean, a batch_norm no layer absorbed a per-channel multiply-add, and
   additive mask constants (-1e9, -3.4e38) become -inf.
2. Calibration runs the prepared graph on every calibration input with one observer per value
   (`npuc.quant.observers`); `plan` turns ranges into dtypes and parameters. Ops that only move
   data keep their input's parameters; a ReLU/ReLU6/clamp gives its range to a sole producer
   that requantizes, so the clamp is the producer's saturation.
3. `npuc.passes.integer_lowering` replaces each op by its integer form.

The lowered graph's meta holds "float_graph" (the prepared float graph) and "origins" (lowered
value -> the float value it represents), which `CompiledModel.compare` reads.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm import tqdm

from npuc.interpreter import interpret
from npuc.ir import DType, Graph, Node, QuantParams, const
from npuc.ops import OPS, lowered_by, make
from npuc.pipeline import PassContext, plural, register_pass
from npuc.quant import arith
from npuc.quant.observers import Observer, make_observer
from npuc.quant.weights import parse_weight_format
from npuc.rewrite import rewrite

from .calibration import require_calibration, value_keys

# From each op's integer form (its `integer` trait, npuc.ops.IntegerForm): ops whose result is
# requantized from an accumulator (a clamp right after one is free), ops whose result keeps the
# input's parameters (they move, pick or average values), and the clamps.
REQUANTIZING = lowered_by("requantize")
KEEPS_PARAMS = lowered_by("keep")
CLAMPS = lowered_by("clamp")
MASK_VALUE = -1e4  # additive mask constants at or below this stand for minus infinity


@dataclass(frozen=True)
class Spec:
    """How one float value is stored once quantized."""

    dtype: DType
    quant: QuantParams


@register_pass("quantize", exact=False, calibration=True, target=True)
def quantize(graph: Graph, ctx: PassContext, *, observer: str | None = None,
             percentile: float = 99.99, weights: str | None = None,
             layers: dict[str, str] | None = None,
             int16: tuple[str, ...] | list[str] | None = None,
             int16_mac: tuple[str, ...] | list[str] | None = None,
             observers: dict[str, str] | None = None,
             activations: str | None = None, bias_correction: bool | None = None,
             state_ranges: dict[str, tuple[float, float]] | None = None,
             progress: bool | None = None) -> Graph:
    """Calibrate and lower to integer-only ops (W8A8 by default; see the module docstring).

    observer: "minmax" (default), "moving_average", "percentile" or "mse".
    observers: {op: observer} for the values ops of that kind produce (e.g. {"gelu": "mse"}),
    overriding `observer` there.
    weights: the weight format of every layer ("int8", "int4".."int2", "sparse", "nm2:4",
    "auto-sparse", "ternary", "palette4", "palette4:g8", ...); layers: {module-path glob: format}
    overrides per layer. "auto-sparse" stores each layer's int8 values in the smallest of int8,
    sparse and nm, and in nm wherever they are N:M on a target whose NPU skips N:M natively.
    int16: ops whose operands are int16 (default from the target, e.g. softmax, layer_norm).
    int16_mac: ops whose results are int16 and stay int16 where a GEMM multiplies them (16x8
    MACs, at the NPU's int16_rate) instead of being narrowed to int8 first (default from the
    target: npu-int8 keeps GELU outputs, the inputs of an FFN's second linear).
    activations: "int8" (default: int8, int16 where `int16` says) or "int16" (every activation).
    bias_correction: fold each layer's mean weight-quantization error on the calibration inputs
    into its bias; None (default): measured, kept only if it lowers the output error on the
    first calibration batch (the means count every position, padded tokens a model ignores
    included, which can make it hurt: MiniLM with 4-bit weights).
    state_ranges: {state name: (lo, hi)}, the range a state slot is stored with instead of the
    one calibration sees: graphs that share a state (an LM's prefill and decode graphs, one KV
    cache) must store it alike.
    """
    defaults: Mapping[str, Any] = getattr(ctx.target, "quantize", None) or {}
    observer = observer or defaults.get("observer", "minmax")
    by_op = check_observers(observers if observers is not None else
                            defaults.get("observers", {}))
    weights = weights or defaults.get("weights", "int8")
    wide_ops = frozenset(check_wide_ops(int16 if int16 is not None else defaults.get("int16", ())))
    mac_ops = frozenset(check_wide_ops(int16_mac if int16_mac is not None
                                       else defaults.get("int16_mac", ()), "int16_mac"))
    activations = activations or defaults.get("activations", "int8")
    if activations not in ("int8", "int16"):
        raise ValueError(f"quantize: activations must be 'int8' or 'int16', got {activations!r}")
    npu = getattr(ctx.target, "npu", None)
    formats = FormatChooser(weights, layers or {},
                            nm_native=getattr(npu, "sparsity", None) == "nm")
    calibration = require_calibration(ctx.calibration, "quantize")

    from .integer_lowering import lower

    float_graph = prepare(graph)
    stats = calibrate(float_graph, calibration, observer, percentile=percentile,
                      progress=progress, by_op=by_op)
    if state_ranges:
        stats = _with_state_ranges(float_graph, stats, state_ranges)
    macs16 = frozenset(n for n in float_graph.nodes if n.op in mac_ops)
    specs = plan(float_graph, stats, wide_ops, everywhere=activations == "int16", also=macs16)
    wide_gemms = activations == "int16" or macs16
    without = dataclasses.replace(stats, channel_means={})
    lowered, origins = lower(float_graph, specs, formats, stats if bias_correction is not False
                             else without, wide_gemms=wide_gemms)
    corrected = bias_correction is not False and bool(stats.channel_means)
    measured = ""
    if bias_correction is None and corrected:
        plain = lower(float_graph, specs, formats, without, wide_gemms=wide_gemms)
        probe = calibration[:1]
        on, off = (output_error(float_graph, g, probe) for g in (lowered, plain[0]))
        corrected = on < off
        measured = (f", bias correction {'on' if corrected else 'off'} (measured: output "
                    f"rel. error {on:.4f} with, {off:.4f} without)")
        if not corrected:
            lowered, origins = plain
    lowered = lowered.remapped({}, {**graph.meta, "float_graph": float_graph,
                                    "origins": origins})
    wide = sum(s.dtype == DType.I16 for s in specs.values())
    learned = f", {stats.learned} learned ranges" if stats.learned else ""
    mixed = "".join(f", {op} {o}" for op, o in by_op.items())
    ctx.note(f"quantize: {plural(len(specs), 'value')} quantized ({wide} int16), weights "
             f"{formats}, observer {observer}{mixed}{learned}, "
             f"{plural(len(calibration), 'calibration batch', 'calibration batches')}"
             f"{measured or ('' if corrected else ', no bias correction')}")
    return lowered


def output_error(float_graph: Graph, lowered: Graph, probe: list[tuple]) -> float:
    """Relative error ||q - f|| / ||f|| of the lowered graph's float outputs on `probe`."""
    num = den = 0.0
    for inputs in probe:
        for f, q in zip(interpret(float_graph, *inputs), interpret(lowered, *inputs),
                        strict=True):
            f64, q64 = np.asarray(f, np.float64), np.asarray(q, np.float64)
            if f64.dtype.kind == "f" and np.isfinite(f64).all():
                num += float(np.sum((q64 - f64) ** 2))
                den += float(np.sum(f64 ** 2))
    return (num / den) ** 0.5 if den > 0 else 0.0


def check_observers(by_op: Mapping[str, str]) -> dict[str, str]:
    """The `observers` option: op names quantize lowers, each to a known observer."""
    from npuc.quant.observers import OBSERVERS

    if not isinstance(by_op, Mapping):
        raise TypeError(f"quantize: observers is a dict {{op: observer}}, got {by_op!r}")
    check_wide_ops([op for op in by_op if op != "output"], "observers")
    bad = {op: o for op, o in by_op.items() if o not in OBSERVERS}
    if bad:
        raise ValueError(f"quantize: observers {bad}: observers are {', '.join(OBSERVERS)}")
    return dict(by_op)


def check_wide_ops(ops: Iterable[str], option: str = "int16") -> list[str]:
    """The op names of an option (`int16`, `int16_mac`, `observers`), each an op quantize lowers
    or "output"; else a ValueError naming the unknown ones and the known ones (a str is refused:
    it is not a list of names)."""
    if isinstance(ops, str):
        raise TypeError(f"quantize: {option} is a list of op names, got the str {ops!r}: write "
                        f"[{ops!r}]")
    ops = list(ops)
    known = supported_ops() + ["output"]
    unknown = [op for op in ops if op not in known]
    if unknown:
        import difflib

        close = {op: difflib.get_close_matches(op, known, 1) for op in unknown}
        guess = "; ".join(f"{op!r}: did you mean {c[0]!r}?" for op, c in close.items() if c)
        raise ValueError(f"quantize: {option} names unknown op(s) {unknown}"
                         f"{f' ({guess})' if guess else ''}; known: {', '.join(known)}")
    return ops


class FormatChooser:
    """The weight format of a layer: the first `layers` glob matching its module path, else the
    default. `nm_native` (the target's NPU skips N:M weights natively) makes "auto-sparse"
    prefer the nm layout wherever a layer's values are N:M."""

    def __init__(self, default: str, layers: Mapping[str, str], nm_native: bool = False) -> None:
        def chosen(spec: str) -> Any:
            fmt = parse_weight_format(spec)
            return dataclasses.replace(fmt, prefer_nm=nm_native) if fmt.kind == "auto" else fmt

        self.default = chosen(default)
        self.layers = {glob: chosen(f) for glob, f in layers.items()}

    def __call__(self, loc: str | None) -> Any:
        for glob, fmt in self.layers.items():
            if fnmatch.fnmatchcase(loc or "", glob):
                return fmt
        return self.default

    def __str__(self) -> str:
        extra = f" ({len(self.layers)} overrides)" if self.layers else ""
        return f"{self.default}{extra}"


# -- 1. exact float rewrites into forms with integer kernels ---------------------------------------

def prepare(graph: Graph) -> Graph:
    """Rewrite division, GLU, global adaptive pooling and mask constants (exactly)."""

    def rule(node: Node) -> Node | None:
        if node.op == "div" and node.dtype.is_float:
            x, y = node.inputs
            if y.is_const:
                return make("mul", [x, const(np.float32(1) / y.data, loc=y.loc)], loc=node.loc)
            return make("mul", [x, make("reciprocal", [y], loc=node.loc)], loc=node.loc)
        if node.op == "pow" and node.dtype.is_float and node.inputs[1].splat is not None:
            return make("power", node.inputs[:1], {"exponent": node.inputs[1].splat},
                        loc=node.loc)
        if node.op == "glu":
            return _glu(node)
        if node.op == "batch_norm":  # one that no layer absorbed: a per-channel affine
            return _channel_affine(node)
        if node.op == "adaptive_avg_pool" and set(node.attrs["size"]) == {1}:
            axes = tuple(range(2, node.inputs[0].type.rank))
            return make("mean", node.inputs, {"axes": axes, "keepdim": True}, loc=node.loc)
        if node.op in ("where", "add") and node.dtype.is_float:
            args = [_infinite(i) for i in node.inputs]
            if any(a is not i for a, i in zip(args, node.inputs, strict=True)):
                return node.with_inputs(tuple(args))
        return None

    from npuc.pipeline import apply

    return rewrite(apply(graph, "fold_constants"), rule)  # constant operands need no kernel


def _glu(node: Node) -> Node:
    x, axis = node.inputs[0], node.attrs["axis"] % node.inputs[0].type.rank
    half = x.shape[axis] // 2

    def part(start: int) -> Node:
        return make("slice", [x], {"axis": axis, "start": start, "end": start + half, "step": 1},
                    loc=node.loc)

    gate = make("sigmoid", [part(half)], loc=node.loc)
    return make("mul", [part(0), gate], loc=node.loc)


def _channel_affine(node: Node) -> Node:
    x, gamma, beta, mean, var = node.inputs
    scale = gamma.data / np.sqrt(var.data + np.float32(node.attrs["eps"]))
    shape = (1, -1) + (1,) * (x.type.rank - 2)
    a = const(scale.reshape(shape).astype(np.float32), loc=node.loc)
    b = const((beta.data - mean.data * scale).reshape(shape).astype(np.float32), loc=node.loc)
    return make("add", [make("mul", [x, a], loc=node.loc), b], loc=node.loc)


def _infinite(node: Node) -> Node:
    """A mask constant (every value 0 or at most -1e4: -1e9, -3.4e38, ...) with -inf for its
    negatives. Softmax gives those entries probability exactly 0 either way in float32, and
    calibration then ignores them instead of stretching the scores' range to -1e9."""
    if node.is_const and node.dtype.is_float:
        data = node.data
        masked = data <= MASK_VALUE
        if masked.any() and np.isfinite(data[masked]).any() and np.all(masked | (data == 0)):
            return const(np.where(masked, np.float32(-np.inf), data).astype(np.float32),
                         loc=node.loc)
    return node


# -- 2. calibration and the quantization plan ------------------------------------------------------

@dataclass
class Stats:
    """What calibration learned: a range per float value, sample input rows of each linear
    layer (for weight formats fitted on data) and the mean input of each layer, per input
    channel (for bias correction)."""

    ranges: dict[Node, tuple[float, float]]
    layer_inputs: dict[Node, np.ndarray]
    channel_means: dict[Node, np.ndarray] = field(default_factory=dict)
    learned: int = 0  # ranges taken from MobileQuant instead of the observers
    peaks: dict[Node, float] = field(default_factory=dict)  # max finite |value| seen


def _channel_axis(layer: Node) -> int:
    return -1 if layer.op == "linear" else 1


def calibrate(graph: Graph, calibration: list[tuple], kind: str, *, percentile: float = 99.99,
              progress: bool | None = None, samples: int = 512,
              by_op: Mapping[str, str] | None = None) -> Stats:
    """Run `graph` on every calibration tuple, feeding each float value to its own observer:
    `kind`, or `by_op[op]` for the values an op of that kind produces."""
    by_op = by_op or {}

    def observer_for(node: Node) -> Observer:
        which = by_op.get(node.op, kind)
        return make_observer(which, **({"percentile": percentile} if which == "percentile"
                                       else {}))

    # a state read holds what its write held a call earlier: it shares the write's observer
    watched = [n for n in graph.nodes if n.dtype.is_float and not n.is_const and n.op != "state"]
    observers: dict[Node, Observer] = {n: observer_for(n) for n in watched}
    readers: dict[Node, list[Node]] = {}
    for layer in graph.nodes:
        if layer.op in ("conv", "linear") and layer.inputs[1].is_const:
            readers.setdefault(layer.inputs[0], []).append(layer)
    sampled: dict[Node, np.ndarray] = {}
    sums: dict[Node, np.ndarray] = {}
    counts: dict[Node, int] = {}

    peaks: dict[Node, float] = {}

    def observe(node: Node, value: np.ndarray) -> None:
        if node in observers:
            observers[node].update(value)
            a = np.asarray(value)
            peak = float(np.max(np.abs(a), initial=0.0, where=np.isfinite(a)))
            peaks[node] = max(peaks.get(node, 0.0), peak)
        for layer in readers.get(node, ()):
            channels = np.moveaxis(np.asarray(value, np.float64), _channel_axis(layer), -1)
            flat = channels.reshape(-1, channels.shape[-1])
            sums[layer] = sums.get(layer, 0) + flat.sum(axis=0)
            counts[layer] = counts.get(layer, 0) + len(flat)
            if layer.op == "linear" and layer not in sampled:
                sampled[layer] = flat[:: max(1, len(flat) // samples)][:samples]

    bar = tqdm(calibration, desc="calibrating", unit="batch", leave=False,
               disable=not progress if progress is not None else len(calibration) < 8)
    state: dict[str, np.ndarray] = {}  # the calibration inputs are one sequence of calls
    for inputs in bar:
        for node, value in zip(graph.inputs, inputs, strict=True):
            observe(node, np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach")
                                     else value))
        interpret(graph, *inputs, observe=observe, state=state)
    ranges = {}
    for node, obs in observers.items():
        if node.op == "reuse" and not _observed(obs):  # a cache store no call made: it
            ranges[node] = ranges[node.inputs[0]]  # would have held its fresh value
            continue
        lo, hi = obs.range()
        ranges[node] = (float(lo), float(hi))
    for slot in graph.state:
        if slot.write in ranges:
            ranges[slot.read] = ranges[slot.write]
    keys = value_keys(graph)
    learned = graph.meta.get("activation_ranges", {})  # MobileQuant's learned clipping ranges
    used = [n for n in watched if keys[n] in learned]
    for node in used:
        ranges[node] = tuple(map(float, learned[keys[node]]))
    means = {layer: sums[layer] / max(counts[layer], 1) for layer in sums}
    return Stats(ranges, sampled, means, len(used), peaks)


def _observed(observer: Observer) -> bool:
    try:
        observer.range()
    except ValueError:
        return False
    return True


def is_mask(node: Node) -> bool:
    """A float value that is 0 or -inf (an attention mask): a constant, or a `where` between
    the two, seen through data movement."""
    while node.op in KEEPS_PARAMS:
        node = node.inputs[0]
    if node.is_const and node.dtype.is_float:
        values = np.unique(node.data)
        return -np.inf in values and set(values.tolist()) <= {0.0, -np.inf}
    if node.op != "where":
        return False
    values = [float(v.data.reshape(-1)[0]) for v in node.inputs[1:]
              if v.is_const and v.type.size == 1]
    return len(values) == 2 and sorted(values) == [-np.inf, 0.0]


def _static(node: Node) -> bool:
    return node.is_const or is_mask(node)


def wide_values(graph: Graph, wide_ops: Iterable[str]) -> set[Node]:
    """Values stored as int16: every float operand of a `wide_ops` op ("output": the graph's
    outputs, so a classifier's logits are not rounded to 256 levels), and backwards from there
    through data movement, through elementwise ops whose other operands are constants or masks
    (so attention scores stay int16 from the matmul that makes them to the softmax), and into the
    operands of a residual add that only the add reads (a layer's output joining the residual
    stream is written as int16 at no cost to other readers)."""
    wide_ops = set(wide_ops)
    wide: set[Node] = set(graph.outputs) if "output" in wide_ops else set()
    for node in reversed(graph.nodes):
        operands = [i for i in node.inputs if i.dtype.is_float and not _static(i)]
        if node.op in wide_ops:
            wide.update(operands)
        elif node not in wide:
            continue
        elif node.op in KEEPS_PARAMS or node.op in CLAMPS or (
                node.op in ("add", "sub", "mul", "where") and len(operands) == 1):
            wide.update(operands[:1])
        elif node.op in ("add", "sub"):
            wide.update(i for i in operands
                        if i.op in REQUANTIZING and graph.sole_reader(i) is node)
    return wide


MIN_RANGE = 1e-3  # an all-zero activation still gets a scale a bias can live at
# Tiny but real ranges (a layer scaled by 1e-6) keep their own scale; only an all-zero value
# gets MIN_RANGE. The observers never return a range narrower than their MIN_WIDTH (1e-8): a
# value whose data spans less than 1/COARSE of its range (there, or after any widening) uses
# fewer than ~16 of int8's levels, and quantize warns.
COARSE = 16


def _params(lo: float, hi: float, dtype: DType) -> Spec:
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if not hi - lo > 0:  # all zero (or no finite data): any scale represents it exactly
        lo, hi = 0.0, MIN_RANGE
    return Spec(dtype, arith.qparams(lo, hi, dtype, symmetric=dtype == DType.I16))


def _with_state_ranges(graph: Graph, stats: Stats,
                       given: Mapping[str, tuple[float, float]]) -> Stats:
    slots = {s.name: s for s in graph.state}
    unknown = set(given) - set(slots)
    if unknown:
        raise ValueError(f"quantize: state_ranges names no state slot: "
                         f"{', '.join(sorted(unknown))}; slots: {', '.join(slots) or 'none'}")
    ranges = dict(stats.ranges)
    for name, (lo, hi) in given.items():
        ranges[slots[name].read] = ranges[slots[name].write] = (float(lo), float(hi))
    return dataclasses.replace(stats, ranges=ranges)


def _warn_tiny(node: Node, lo: float, hi: float, peak: float | None) -> None:
    span = max(hi, 0.0) - min(lo, 0.0)
    if peak is not None and 0 < peak * COARSE < span:
        warnings.warn(f"quantize: {node.op} at {node.loc or '<top level>'} reaches only "
                      f"{peak:.1e} on the calibration data, too small for its least range "
                      f"{span:.1e}: it is quantized to a few levels or flushed to zero; "
                      "rescale the model (e.g. its weights) to larger values", stacklevel=2)


SOFTMAX_OUT = {DType.I8: QuantParams((1 / 256,), (-128,)), DType.I16: QuantParams((1 / 32768,),
                                                                                  (0,))}


def plan(graph: Graph, stats: Stats, wide_ops: Iterable[str], everywhere: bool = False,
         also: Iterable[Node] = ()) -> dict[Node, Spec]:
    """The dtype and parameters of every float, non-constant, non-mask value (all int16 when
    `everywhere`; `also` these values)."""
    wide = set(graph.nodes) if everywhere else wide_values(graph, wide_ops) | set(also)
    ranges = dict(stats.ranges)
    for node in graph.nodes:  # a clamp lends its range to a producer that requantizes anyway
        if node.op in CLAMPS:
            src = node.inputs[0]
            if src.op in REQUANTIZING and graph.sole_reader(src) is node and src in ranges:
                ranges[src] = ranges[node]
    specs = _specs(graph, ranges, wide, stats, {})
    if graph.state:  # a state read is stored as its write is, which may come from elsewhere
        reads = {s.read: specs[s.write] for s in graph.state if s.write in specs}
        specs = _specs(graph, ranges, wide, stats, reads)
    return specs


def _specs(graph: Graph, ranges: dict[Node, tuple[float, float]], wide: set[Node],
           stats: Stats, preset: dict[Node, Spec]) -> dict[Node, Spec]:
    specs: dict[Node, Spec] = dict(preset)
    for node in graph.nodes:
        if not node.dtype.is_float or node.is_const or is_mask(node) or node in preset:
            continue
        dtype = DType.I16 if node in wide else DType.I8
        src = node.inputs[0] if node.inputs else None
        if node.op == "gather" and src.is_const:
            data = src.data
            specs[node] = _params(float(data.min()), float(data.max()), dtype)
        elif node.op in KEEPS_PARAMS and src in specs:
            specs[node] = specs[src]
        elif node.op == "softmax":
            specs[node] = Spec(dtype, SOFTMAX_OUT[dtype])
        else:
            _warn_tiny(node, *ranges[node], stats.peaks.get(node))
            specs[node] = _params(*ranges[node], dtype)
    return specs


def supported_ops() -> list[str]:
    """Float ops the quantize pass lowers (for error messages and docs)."""
    from .integer_lowering import RULES

    return sorted(set(RULES) | set(KEEPS_PARAMS) | {op for op, d in OPS.items()
                                                    if d.category == "elementwise"})
