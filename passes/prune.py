"""What the pruning passes share: which layers they prune, their weights, and their report.

Not a pass. `prune_magnitude`, `prune_nm` and `prune_channels` are approximate: each reports, in
one note (`cm.report()`), the sparsity it reached and the relative error of the graph's outputs
against the unpruned graph on the calibration data, when there is any (`output_error`); without
calibration data they still run and say the error was not measured.

    layers = weight_layers(graph, ["features.*"])   # conv, conv_transpose, linear, matmul
    rows, back = reduction_rows(layer, w)           # one row per output x tap, reduction last
    graph = with_weights(graph, {layer: w})         # the same graph with new weight constants
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from fnmatch import fnmatch
from typing import Any

import numpy as np

from npuc.interpreter import interpret
from npuc.ir import Graph, Node, const
from npuc.ops import evaluate, make
from npuc.pipeline import PassContext, plural
from npuc.rewrite import rewrite

from .channels import add_to_bias

WEIGHTED = ("conv", "conv_transpose", "linear", "matmul")
Layers = list[str] | tuple[str, ...] | None  # module-path globs (fnmatch on node.loc)


def check_fraction(pass_name: str, name: str, value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{pass_name}: option {name} must be a fraction in [0, 1] (0.5: half), "
                         f"got {value!r}")
    return float(value)


def check_layers(graph: Graph, layers: Layers, pass_name: str) -> None:
    """Refuse `layers` globs that match no conv/conv_transpose/linear/matmul layer (a typo would
    otherwise prune nothing), naming some module paths that would match."""
    if layers is not None and not weight_layers(graph, layers):
        paths = [n.loc for n in weight_layers(graph) if n.loc]
        shown = ", ".join(paths[:8]) + (", ..." if len(paths) > 8 else "")
        raise ValueError(f"{pass_name}: option layers={list(layers)!r} matches no layer with "
                         f"constant weights (fnmatch on module paths); the layers here: "
                         f"{shown or 'none with a module path'}")


def count(fraction: float, total: int) -> int:
    """round(fraction * total), halves up: how many of `total` a fraction asks for."""
    return min(total, int(np.floor(fraction * total + 0.5)))


def selected(node: Node, layers: Layers) -> bool:
    """Whether the node's module path matches one of the globs (all nodes when None)."""
    return layers is None or any(fnmatch(node.loc or "", pattern) for pattern in layers)


def weight_layers(graph: Graph, layers: Layers = None) -> list[Node]:
    """The float layers with a constant weight: conv, conv_transpose, linear, and matmul whose
    right operand is a constant matrix, chosen by `layers` globs, in graph order."""
    out = []
    for node in graph.nodes:
        if node.op not in WEIGHTED or len(node.inputs) < 2 or not node.dtype.is_float:
            continue
        w = node.inputs[1]
        if (w.is_const and w.attrs.get("data") is not None and w.dtype.is_float
                and len(w.shape) >= 2 and selected(node, layers)):
            out.append(node)
    return out


Restore = Callable[[Any], Any]


def _moveaxis(a: Any, source: int, dest: int) -> Any:
    """np.moveaxis for numpy arrays and torch tensors alike (pdp's soft masks use the same
    groups on tensors)."""
    return a.movedim(source, dest) if hasattr(a, "movedim") else np.moveaxis(a, source, dest)


def reduction_rows(layer: Node, w: Any) -> tuple[Any, Restore]:
    """The weight as rows along its reduction (input-channel) axis, one row per output channel
    and kernel tap, and the function that puts such rows back into the weight's layout:
    linear (O, I): rows of I; matmul (..., K, N): K per column; conv (O, Cg, *k): the Cg input
    channels of one output at one tap (OHWI order, input channels innermost); conv_transpose
    (Cin, Og, *k), grouped: the Cin / groups input channels of one group, output and tap.
    `w` is a numpy array or a torch tensor (the rows are of the same kind)."""
    if layer.op == "linear":
        return w, lambda rows: rows
    if layer.op == "matmul":
        moved = _moveaxis(w, -2, -1)
        return moved.reshape(-1, w.shape[-2]), \
            lambda rows: _moveaxis(rows.reshape(moved.shape), -1, -2)
    if layer.op == "conv":
        moved = _moveaxis(w, 1, -1)
        return moved.reshape(-1, w.shape[1]), \
            lambda rows: _moveaxis(rows.reshape(moved.shape), -1, 1)
    groups = layer.attrs["groups"]
    view = w.reshape((groups, w.shape[0] // groups) + tuple(w.shape[1:]))
    moved = _moveaxis(view, 1, -1)
    return moved.reshape(-1, view.shape[1]), \
        lambda rows: _moveaxis(rows.reshape(moved.shape), -1, 1).reshape(w.shape)


def with_weights(graph: Graph, weights: dict[Node, np.ndarray],
                 shifts: dict[Node, np.ndarray] | None = None) -> Graph:
    """`graph` with each layer in `weights` reading a new weight constant (same dtype, loc),
    and `shifts[layer]` added to its bias (see `bias_shift`)."""
    shifts = shifts or {}

    def swap(node: Node, orig: Node) -> Node | None:
        if orig not in weights:
            return None
        w = node.inputs[1]
        new = const(weights[orig].astype(w.dtype.numpy), w.dtype, w.loc)
        return shift_bias(node.with_inputs((node.inputs[0], new, *node.inputs[2:])),
                          shifts.get(orig))

    return rewrite(graph, swap, origin=True)


# -- bias correction: what the removed weights added on average goes into the bias -------------

BIASED = ("conv", "conv_transpose", "linear")  # layers with a bias operand (matmul has none)


def input_means(graph: Graph, layers: Sequence[Node], calibration: Sequence[tuple]
                ) -> dict[Node, np.ndarray]:
    """Each layer's input averaged over its batch axis and every calibration input (float64,
    batch axis kept as 1); layers reading the same value get the same mean. A layer whose
    input is a constant (never observed) is left out."""
    wanted = {layer.inputs[0] for layer in layers}  # layers may share an input
    sums: dict[Node, np.ndarray] = {}

    def observe(node: Node, value: np.ndarray) -> None:
        if node in wanted:
            mean = np.asarray(value, np.float64).mean(axis=0, keepdims=True)
            sums[node] = sums[node] + mean if node in sums else mean

    for inputs in calibration:
        for node, value in zip(graph.inputs, inputs, strict=True):
            observe(node, np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach")
                                     else value))
        interpret(graph, *inputs, observe=observe)
    return {layer: sums[layer.inputs[0]] / len(calibration) for layer in layers
            if layer.inputs[0] in sums}


def bias_shift(layer: Node, mean_input: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """Per output channel, the mean over positions of what weights `removed` (the layer's
    weight layout) contribute on the mean input: adding it to the bias keeps the layer's mean
    output (exactly for a linear, and for a conv on average over its output positions, zero
    padding included)."""
    out = evaluate(layer, mean_input.astype(layer.dtype.numpy), removed.astype(layer.dtype.numpy))
    axis = len(out.shape) - 1 if layer.op == "linear" else 1
    return np.asarray(out, np.float64).mean(axis=tuple(a for a in range(out.ndim) if a != axis))


def prune_weights(graph: Graph, ctx: PassContext, weights: dict[Node, np.ndarray],
                  bias_correction: bool | None) -> tuple[Graph, int]:
    """`graph` with the layers' pruned `weights`; with `bias_correction` and calibration data,
    each layer's bias also takes what its removed weights added on average (`bias_shift`);
    None measures both on the calibration data and keeps the one with the smaller output
    error (on all-MiniLM-L6-v2 at 2:4 the correction costs: 0.575 mean cosine with, 0.630
    without). Returns the graph and the number of biases corrected."""
    shifts: dict[Node, np.ndarray] = {}
    plain = with_weights(graph, weights, {})
    if bias_correction is not False and ctx.calibration:
        layers = [n for n in weights if n.op in BIASED and len(n.inputs[0].shape) >= 2]
        for layer, mean in input_means(graph, layers, ctx.calibration).items():
            shifts[layer] = bias_shift(layer, mean, layer.inputs[1].data - weights[layer])
    corrected = with_weights(graph, weights, shifts)
    if bias_correction is None and any(np.any(s) for s in shifts.values()):
        errors = [output_error(graph, g, ctx.calibration) for g in (corrected, plain)]
        if errors[1] <= errors[0]:
            return plain, 0
    return corrected, sum(bool(np.any(s)) for s in shifts.values())


def corrected_text(count: int) -> str:
    """', 3 biases corrected' for a note ('' for none)."""
    return f", {plural(count, 'bias', 'biases')} corrected" if count else ""


def shift_bias(layer: Node, shift: np.ndarray | None) -> Node:
    """The layer with `shift` added to its bias (a bias made where it had none)."""
    if shift is None or not np.any(shift):
        return layer
    return make(layer.op, add_to_bias(layer, list(layer.inputs), shift), dict(layer.attrs),
                layer.loc)


def output_error(before: Graph, after: Graph, calibration: Sequence[tuple] | None
                 ) -> float | None:
    """||after - before|| / ||before|| over every output and calibration input (float64), or
    None without calibration data."""
    if not calibration:
        return None
    diff = norm = 0.0
    for inputs in calibration:
        for a, b in zip(interpret(after, *inputs), interpret(before, *inputs), strict=True):
            a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
            diff += float(np.sum((a64 - b64) ** 2))
            norm += float(np.sum(b64 ** 2))
    return float(np.sqrt(diff) / max(np.sqrt(norm), 1e-30))


def note_error(ctx: PassContext, text: str, before: Graph, after: Graph) -> float | None:
    """Write the pass's note: `text`, then the output error it measured (or why not)."""
    error = output_error(before, after, ctx.calibration)
    if error is None:
        ctx.note(f"{text}; output error not measured (no calibration data)")
    else:
        samples = len(ctx.calibration)
        ctx.note(f"{text}; output rel. error {error:.4g} on {samples} calibration "
                 f"input{'s' if samples != 1 else ''}")
    return error


def sparsity_of(arrays: Sequence[np.ndarray]) -> tuple[int, int]:
    """(zeros, elements) over the arrays."""
    return (sum(int(np.count_nonzero(a == 0)) for a in arrays), sum(a.size for a in arrays))
