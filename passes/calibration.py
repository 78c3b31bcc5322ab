"""Activation statistics over calibration data, shared by the equivalent-transform passes.

Not a pass: helpers that run the reference interpreter on every calibration input tuple and reduce
the values of chosen nodes as they are computed (`interpret(..., observe=...)`), so only the
running statistics stay in memory, never the activations themselves.

    absmax = activation_absmax(graph, ctx.calibration, [ln, fc1])   # {node: (channels,) array}
    lo, hi = activation_minmax(graph, ctx.calibration, [x])[x]       # per-tensor floats
    value_keys(graph)[node]   # "encoder.layer.0.attention.self/matmul#1": names a value by its
                              # module path and op, independently of how the graph prints

Requires: `calibration` is a non-empty sequence of input tuples for `graph` (numpy arrays or torch
tensors). Ensures: statistics over all tuples; graph inputs and constants among `nodes` are
reduced from the bound input or the constant's data.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from npuc.interpreter import interpret
from npuc.ir import Graph, Node
from npuc.pipeline import CalibrationError

__all__ = ["CalibrationError", "Profile", "activation_absmax", "activation_minmax",
           "activation_profiles", "collect", "range_ratio", "require_calibration", "value_keys"]

Stat = Callable[[np.ndarray], np.ndarray]


def require_calibration(calibration: Sequence[tuple] | None, who: str) -> list[tuple]:
    """The calibration tuples, or a CalibrationError telling the user how to pass them (the pass
    manager refuses passes registered with `calibration=True` before they run; this covers
    direct calls)."""
    if not calibration:
        raise CalibrationError(
            f"{who} needs calibration data: npuc.passes.apply(g, {who!r}, calibration=[(x1,), "
            "(x2,), ...]) or npuc.compile(..., calibration=[...])")
    return list(calibration)


def collect(graph: Graph, calibration: Iterable[tuple], nodes: Iterable[Node], stat: Stat,
            combine: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> dict[Node, np.ndarray]:
    """`combine`-reduce `stat(value)` of each of `nodes` over every calibration input tuple."""
    wanted = set(nodes)
    result: dict[Node, np.ndarray] = {}

    def observe(node: Node, value: np.ndarray) -> None:
        if node in wanted:
            s = stat(value)
            result[node] = s if node not in result else combine(result[node], s)

    for inputs in calibration:
        for node, value in zip(graph.inputs, inputs, strict=True):
            observe(node, np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach")
                                     else value))
        for node in wanted:
            if node.is_const:
                observe(node, node.data)
        interpret(graph, *inputs, observe=observe)
    return result


def _channel_absmax(value: np.ndarray) -> np.ndarray:
    flat = np.abs(np.asarray(value, np.float64)).reshape(-1, value.shape[-1] if value.ndim else 1)
    return flat.max(axis=0) if flat.shape[0] else np.zeros(flat.shape[1])


def _minmax(value: np.ndarray) -> np.ndarray:
    v = np.asarray(value, np.float64)
    return np.array([v.min(), v.max()]) if v.size else np.zeros(2)


def activation_absmax(graph: Graph, calibration: Iterable[tuple],
                      nodes: Iterable[Node]) -> dict[Node, np.ndarray]:
    """Per-channel (last axis) max |value| of each node over all calibration inputs (float64)."""
    return collect(graph, calibration, nodes, _channel_absmax, np.maximum)


def activation_minmax(graph: Graph, calibration: Iterable[tuple],
                      nodes: Iterable[Node]) -> dict[Node, tuple[float, float]]:
    """Per-tensor (min, max) of each node over all calibration inputs."""
    both = collect(graph, calibration, nodes, _minmax,
                   lambda a, b: np.array([min(a[0], b[0]), max(a[1], b[1])]))
    return {n: (float(v[0]), float(v[1])) for n, v in both.items()}


@dataclass(frozen=True)
class Profile:
    """Per channel (last axis) of one value over the calibration data: max |x|, min and max,
    and up to `rows` sample rows (every k-th row of each batch), float64."""

    absmax: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    samples: np.ndarray  # (rows, channels)


def activation_profiles(graph: Graph, calibration: Iterable[tuple], nodes: Iterable[Node],
                        rows: int = 512) -> dict[Node, Profile]:
    """A `Profile` of each node over all calibration inputs (one interpreter run per tuple)."""
    calibration = list(calibration)
    per_batch = max(1, rows // max(len(calibration), 1))

    def stat(value: np.ndarray) -> Profile:
        v = np.asarray(value, np.float64)
        flat = v.reshape(-1, v.shape[-1] if v.ndim else 1)
        if not flat.shape[0]:
            zero = np.zeros(flat.shape[1])
            return Profile(zero, zero, zero, flat)
        pick = flat[:: max(1, len(flat) // per_batch)][:per_batch]
        return Profile(np.abs(flat).max(axis=0), flat.min(axis=0), flat.max(axis=0), pick)

    return collect(graph, calibration, nodes, stat, lambda a, b: merge_profiles(a, b, rows))


def merge_profiles(a: Profile, b: Profile, rows: int = 512) -> Profile:
    """The profile of a value over the data of `a` and of `b` (samples: `a`'s first)."""
    return Profile(np.maximum(a.absmax, b.absmax), np.minimum(a.lo, b.lo),
                   np.maximum(a.hi, b.hi), np.concatenate([a.samples, b.samples])[:rows])


def range_ratio(absmax: np.ndarray) -> float:
    """How unevenly a value's channels are scaled: max channel absmax / median channel absmax."""
    absmax = np.asarray(absmax, np.float64)
    return float(absmax.max() / max(float(np.median(absmax)), 1e-30)) if absmax.size else 1.0


def value_keys(graph: Graph) -> dict[Node, str]:
    """A key per value that survives printing and renumbering: `input:<name>` for graph inputs,
    else `<loc>/<op>`, with `#k` appended for the k-th (k >= 1) value of the same loc and op in
    the graph's node order. Rebuilt or merged nodes keep their keys as long as the order of values
    sharing a loc and op does not change."""
    keys: dict[Node, str] = {}
    seen: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "input":
            keys[node] = f"input:{node.attrs['name']}"
            continue
        base = f"{node.loc or ''}/{node.op}"
        k = seen.get(base, 0)
        seen[base] = k + 1
        keys[node] = base if k == 0 else f"{base}#{k}"
    return keys
