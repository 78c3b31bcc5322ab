"""prune_magnitude: unstructured magnitude pruning of the weights of conv/linear layers.

Before: %y = conv(%x, %w, %b)             (any conv, conv_transpose, linear, matmul by a constant)
After:  %y = conv(%x, %w', %b)            w' = w with its k smallest |w| set to 0

Options: `sparsity` (fraction of weights zeroed, 0..1), `scope` ("layer": each layer loses
round(sparsity * its weights); "global": one magnitude threshold over all chosen layers, so
round(sparsity * all their weights) go and layers with small weights lose more), `layers`
(module-path globs, fnmatch on node.loc; default every such layer), `bias_correction` (with
calibration data, each layer's bias takes what its removed weights added on average, so its
mean output stays; None, the default, keeps that only where it lowers the output error on the
calibration data, True always, False never; `passes/prune.py`), `finetune` (a training callback: see
`passes/pdp.py`; the pass stands on its own without it).
Requires: a float graph with constant weights. Ensures: exactly round(sparsity * n) weights of
every layer (scope "layer") or of all chosen layers (scope "global") are zero where the weights
held fewer zeros before (ties broken by position, so it is deterministic), more only where they
already held more; shapes and every other op unchanged (biases too, but for bias correction); a
second run changes nothing.
Approximate: the note gives the sparsity reached and the output error on the calibration data.
Zeros alone do not make a layer faster: the weights become smaller as `sparse` int8 (quantize
`weights="sparse"`) and faster only on an engine that skips zero weights.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from npuc.ir import Graph
from npuc.pipeline import PassContext, plural, register_pass

from .pdp import Finetune, soft_magnitude, train
from .prune import (
    Layers,
    check_fraction,
    check_layers,
    corrected_text,
    count,
    note_error,
    prune_weights,
    sparsity_of,
    weight_layers,
)


def magnitude_masks(weights: list[np.ndarray], sparsity: float, scope: str) -> list[np.ndarray]:
    """Keep-masks zeroing round(sparsity * n) smallest |w| per array, or over all of them."""
    if scope == "layer":
        return [_smallest_out(np.abs(w).ravel(), count(sparsity, w.size)).reshape(w.shape)
                for w in weights]
    flat = np.concatenate([np.abs(w).ravel() for w in weights]) if weights else np.zeros(0)
    keep = _smallest_out(flat, count(sparsity, flat.size))
    bounds = np.cumsum([0] + [w.size for w in weights])
    return [keep[a:b].reshape(w.shape) for a, b, w in zip(bounds[:-1], bounds[1:], weights,
                                                         strict=True)]


def _smallest_out(magnitudes: np.ndarray, k: int) -> np.ndarray:
    keep = np.ones(magnitudes.size, dtype=bool)
    keep[np.argsort(magnitudes, kind="stable")[:k]] = False
    return keep


@register_pass("prune_magnitude", exact=False)
def prune_magnitude(graph: Graph, ctx: PassContext, *, sparsity: float = 0.5,
                    scope: Literal["layer", "global"] = "layer", layers: Layers = None,
                    bias_correction: bool | None = None, finetune: Finetune | None = None) -> Graph:
    """Unstructured magnitude pruning: zero the smallest weights per layer or globally."""
    check_fraction("prune_magnitude", "sparsity", sparsity)
    check_layers(graph, layers, "prune_magnitude")
    original, chosen = graph, weight_layers(graph, layers)
    if finetune is not None:
        graph = train(graph, chosen, soft_magnitude(sparsity, scope), finetune)
        chosen = weight_layers(graph, layers)
    weights = [n.inputs[1].data for n in chosen]
    masks = magnitude_masks(weights, sparsity, scope)
    new = {n: w * m for n, w, m in zip(chosen, weights, masks, strict=True)}
    pruned, corrected = prune_weights(graph, ctx, new, bias_correction)
    zeros, total = sparsity_of(list(new.values()))
    note_error(ctx, f"prune_magnitude ({scope}): {zeros / max(total, 1):.1%} of {total:,} "
               f"weights zero in {plural(len(chosen), 'layer')}{corrected_text(corrected)}",
               original, pruned)
    return pruned
