"""prune_nm: N:M structured pruning along the reduction (input-channel) axis.

Before: %y = conv(%x, %w, %b)             (any conv, conv_transpose, linear, matmul by a constant)
After:  %y = conv(%x, %w', %b)            every group of m weights keeps its n largest |w|

The groups are m consecutive input channels of one output channel at one kernel tap: the
weight in OHWI order (input channels innermost) cut into runs of m, as NVIDIA's Ampere sparse
tensor cores read 2:4 weights (NHWC convs and GEMMs: 4 consecutive elements of the reduction
axis K = kh * kw * C with C innermost; NVIDIA's ASP pruning library groups conv weights the same
way) and as Arm's Ethos-U85 reads its 2:4 weights (along the input depth of the OHWI weight).
linear (O, I): runs along I; matmul by a constant (..., K, N): along K for each column; conv
(O, C/groups, kh, kw): along C/groups for each (o, kh, kw); conv_transpose: along the input
channels of one group. When that length is not a multiple of m, the last, partial group of
r < m weights keeps at most n of them (all of them when r <= n); a layer with fewer than n + 1
input channels per group (a depthwise conv, a first conv on one image channel) is left as it is.
Ties keep the earlier weight.

Options: `n`, `m` (2:4, 1:4, 4:8...; 0 <= n <= m), `layers` (module-path globs, fnmatch on
node.loc), `bias_correction` (with calibration data each bias keeps its layer's mean
output, as in prune_magnitude; by default only where that lowers the output error),
`finetune` (a training callback, `passes/pdp.py`; the pass stands on its own).
Requires: a float graph with constant weights. Ensures: every group of every chosen layer has at
most n nonzero weights; shapes and every other op unchanged (biases too, but for bias
correction); a second run changes nothing. Approximate: the note gives the sparsity reached
and the output error on the calibration data. The simulator and C store such weights compactly
only once they are encoded so (a `nm` encoding); until then they are plain zeros.
"""

from __future__ import annotations

import numpy as np

from npuc.ir import Graph
from npuc.pipeline import PassContext, plural, register_pass

from .pdp import Finetune, soft_nm, train
from .prune import (
    Layers,
    check_layers,
    corrected_text,
    note_error,
    prune_weights,
    reduction_rows,
    sparsity_of,
    weight_layers,
)


def nm_keep(rows: np.ndarray, n: int, m: int) -> np.ndarray:
    """Keep-mask of `rows` (any shape, groups along the last axis): in each run of m, the n
    largest |w| (earlier ones on ties); a partial last run keeps at most n."""
    length = rows.shape[-1]
    groups = -(-length // m)
    padded = np.full(rows.shape[:-1] + (groups * m,), -1.0)  # padding sorts last
    padded[..., :length] = np.abs(rows)
    runs = padded.reshape(rows.shape[:-1] + (groups, m))
    order = np.argsort(-runs, axis=-1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(m), axis=-1)
    keep = (rank < n) & (runs >= 0)
    return keep.reshape(rows.shape[:-1] + (groups * m,))[..., :length]


def check_nm(n: int, m: int) -> None:
    if m < 1 or not 0 <= n <= m:
        raise ValueError(f"prune_nm: options n and m need 0 <= n <= m and m >= 1 (2:4 is n=2, "
                         f"m=4), got n={n}, m={m}")


@register_pass("prune_nm", exact=False)
def prune_nm(graph: Graph, ctx: PassContext, *, n: int = 2, m: int = 4, layers: Layers = None,
             bias_correction: bool | None = None, finetune: Finetune | None = None) -> Graph:
    """N:M structured pruning: at most n nonzeros in every m consecutive input channels."""
    check_nm(n, m)
    check_layers(graph, layers, "prune_nm")
    original, chosen = graph, weight_layers(graph, layers)
    if finetune is not None:
        graph = train(graph, chosen, soft_nm(n, m), finetune)
        chosen = weight_layers(graph, layers)
    pruned_weights = {}
    for layer in chosen:
        rows, back = reduction_rows(layer, layer.inputs[1].data)
        pruned_weights[layer] = back(rows * nm_keep(rows, n, m))
    pruned, corrected = prune_weights(graph, ctx, pruned_weights, bias_correction)
    zeros, total = sparsity_of(list(pruned_weights.values()))
    note_error(ctx, f"prune_nm {n}:{m}: {zeros / max(total, 1):.1%} of {total:,} weights zero "
               f"in {plural(len(chosen), 'layer')}{corrected_text(corrected)}", original, pruned)
    return pruned
