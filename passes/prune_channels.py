"""prune_channels: remove output channels of conv/linear layers and shrink every consumer.

Before: %1 = conv(%x, %w1, %b1) : 1x64x56x56   %2 = batch_norm(%1, ...)   %3 = relu(%2)
        %4 = conv(%3, %w2, %b2) : 1x64x56x56   (w2: 64x64x3x3)
After:  %1 = conv(%x, %w1', %b1') : 1x32x56x56   %2 = batch_norm(%1, 32 params each)  %3 = relu
        %4 = conv(%3, %w2') : 1x64x56x56        (w2': 64x32x3x3)

The channel-dependency analysis (`passes/channels.py`) finds, for every producer layer, the
group of layers whose output channels are tied (residual adds, concats, depthwise and grouped
convs, reshapes that keep the channel axis whole) and every value, constant and consumer they
reach. Per prunable group, `sparsity` of its units (a channel of every tied producer; a whole
conv group where a grouped conv or group_norm ties them) with the lowest score go, the same
indices in every member, and the graph is rewritten: producer rows, biases, BN/per-channel
constants, depthwise groups, reshape sizes and the consumers' input columns all shrink, so
MACs, weight bytes and activation memory drop for real. A group is pruned only when all its
producers match `layers`; pinned groups (channels reaching a graph output, a layer_norm or
softmax over channels, a reshape splitting the axis, an add with a graph input...) are left
alone and counted in the note with the first reason.

Scores (`criterion`): "l1" / "l2", the norm of the unit's producer weight rows; "importance",
measured on the calibration data: sum over consumers of the RMS of the channel at the
consumer's input (about its mean, which bias correction puts back) times the norm of the
consumer weights it meets: the size of the change removing it makes downstream (a constant or
dead channel scores 0). "importance" needs calibration data (CalibrationError
without). Options: `sparsity` (fraction of each group's units, 0..1; at least one unit stays),
`criterion`, `layers` (globs on the producers' module paths), `multiple` (keep a multiple of
this many units per group, e.g. the NPU array's width, rounding the kept count to the nearest
multiple), `bias_correction` (with calibration data, each consumer's bias takes what the
removed channels added to it on average, so a constant channel goes without a trace; None, the
default, keeps that only where it lowers the output error, True always, False never),
`finetune` (a training callback, `passes/pdp.py`).
Requires: a float graph with constant weights. Ensures: a graph that verifies, with the same
outputs (within float rounding) when the removed channels carry zeros into their consumers; no
channel of a pinned group removed. Approximate otherwise: the note gives the channels removed,
MACs and weight bytes before and after, and the output error on the calibration data.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from npuc.driver import summarize
from npuc.interpreter import interpret
from npuc.ir import Graph, Node
from npuc.pipeline import CalibrationError, PassContext, plural, register_pass

from .calibration import require_calibration
from .channels import (
    ChannelGroup,
    Channels,
    Unit,
    channel_axis,
    contracted_axis,
    output_rows,
    weight_columns,
)
from .pdp import Finetune, soft_channels, train
from .prune import (
    BIASED,
    Layers,
    bias_shift,
    check_fraction,
    check_layers,
    corrected_text,
    count,
    input_means,
    note_error,
    output_error,
    selected,
)


def unit_scores(ch: Channels, criterion: str, calibration: list[tuple] | None,
                centred: bool = True) -> dict[Unit, float]:
    """Each unit's score under `criterion` (higher: more worth keeping). "importance": per
    consumer, the RMS of the channel at its input (about its mean when `centred`, as bias
    correction puts the mean back) times the norm of the weights it meets there: the size of
    the change its removal makes to that consumer's output; summed over consumers."""
    if criterion in ("l1", "l2"):
        def norm(rows: np.ndarray) -> np.ndarray:
            return (np.abs(rows).sum(axis=1) if criterion == "l1"
                    else np.sqrt((rows * rows).sum(axis=1)))

        return ch.unit_sums((p, channel_axis(p), norm(output_rows(p))) for p in ch.producers)
    data = require_calibration(calibration, "prune_channels")
    axes = {c.inputs[0]: contracted_axis(c) for c in ch.consumers}
    moments: dict[Node, np.ndarray] = {}

    def observe(node: Node, value: np.ndarray) -> None:
        if node in axes:
            v = np.moveaxis(np.asarray(value, np.float64), axes[node], 0)
            v = v.reshape(v.shape[0], -1)
            both = np.stack([v.mean(axis=1), (v * v).mean(axis=1)])
            moments[node] = moments[node] + both if node in moments else both

    for inputs in data:
        interpret(ch.graph, *inputs, observe=observe)
    spread = {}
    for value, (mean, square) in moments.items():
        mean, square = mean / len(data), square / len(data)
        spread[value] = np.sqrt(np.maximum(square - mean * mean if centred else square, 0))
    return ch.unit_sums((c.inputs[0], axes[c.inputs[0]], spread[c.inputs[0]] * weight_columns(c))
                        for c in ch.consumers if c.inputs[0] in spread)


def compensation(ch: Channels, removed: list[Unit], calibration: list[tuple] | None
                 ) -> dict[Node, np.ndarray]:
    """Per consumer that loses input channels, what those channels added to its output on
    average over the calibration data (`prune.bias_shift`): its bias keeps that."""
    if not calibration or not removed:
        return {}
    layers = [c for c in ch.consumers if c.op in BIASED and len(c.inputs[0].shape) >= 2]
    shifts = {}
    for layer, mean in input_means(ch.graph, layers, calibration).items():
        axis = contracted_axis(layer)
        gone = ch.removed_mask(layer.inputs[0], axis, removed)
        if gone.any():
            shape = [1] * mean.ndim
            shape[axis] = -1
            shifts[layer] = bias_shift(layer, mean * gone.reshape(shape), layer.inputs[1].data)
    return shifts


def choose(group: ChannelGroup, scores: dict[Unit, float], sparsity: float,
           multiple: int) -> list[Unit]:
    """The group's units to remove: the lowest-scored sparsity fraction (ties: earlier units
    first), at least one kept."""
    total = len(group.units)
    keep = total - count(sparsity, total)
    if multiple > 1:
        keep = min(total, max(multiple, multiple * int(np.floor(keep / multiple + 0.5))))
    keep = max(keep, 1)
    order = sorted(range(total), key=lambda k: (scores[group.units[k]], k))
    return [group.units[k] for k in order[:total - keep]]


@register_pass("prune_channels", exact=False)
def prune_channels(graph: Graph, ctx: PassContext, *, sparsity: float = 0.5,
                   criterion: Literal["l1", "l2", "importance"] = "l1", layers: Layers = None,
                   multiple: int = 1, bias_correction: bool | None = None,
                   finetune: Finetune | None = None) -> Graph:
    """Channel pruning: remove output channels (tied ones together) and shrink the consumers."""
    check_fraction("prune_channels", "sparsity", sparsity)
    check_layers(graph, layers, "prune_channels")
    if multiple < 1:
        raise ValueError(f"prune_channels: option multiple must be an int >= 1 (1: any count; "
                         f"e.g. 16 for a 16-wide MAC array), got {multiple}")
    if criterion == "importance" and not ctx.calibration:
        raise CalibrationError(
            "prune_channels with criterion='importance' needs calibration data: npuc.passes."
            "apply(g, 'prune_channels', criterion='importance', calibration=[(x1,), (x2,), "
            "...]) or npuc.compile(..., calibration=[...]); criterion='l1' or 'l2' needs none")
    original = graph
    if finetune is not None:
        ch = Channels(graph)
        graph = train(graph, list(ch.producers), soft_channels(ch, sparsity), finetune)
    ch = Channels(graph)
    groups = [g for g in ch.groups if g.prunable and all(selected(p, layers) for p in g.producers)]
    compensated = bias_correction is not False
    scores = unit_scores(ch, criterion, ctx.calibration, compensated) if groups else {}
    removed = [u for g in groups for u in choose(g, scores, sparsity, multiple)]
    while (emptied := ch.emptied(removed)):
        for present in emptied:  # keep the best unit of a value that would lose every channel
            back = max((u for u in removed if u in present), key=lambda u: scores[u], default=None)
            removed = [u for u in removed if u != back]
    shifts = compensation(ch, removed, ctx.calibration) if compensated else {}
    pruned = ch.prune(removed, shifts)
    if bias_correction is None and shifts:  # measured: kept only where it lowers the error
        plain = ch.prune(removed, {})
        if (output_error(graph, plain, ctx.calibration)
                <= output_error(graph, pruned, ctx.calibration)):
            pruned, shifts = plain, {}
    before, after = summarize(graph), summarize(pruned)
    total = sum(len(g.units) for g in groups)
    pinned = [g for g in ch.groups if g.reason is not None]
    why = f" ({plural(len(pinned), 'group')} pinned, e.g. {pinned[0].reason})" if pinned else ""
    note_error(ctx, f"prune_channels ({criterion}): removed {len(removed)} of {total} channels "
               f"in {plural(len(groups), 'group')}{why}; MACs {before.macs:,} -> "
               f"{after.macs:,}, weights {before.weight_bytes:,} -> {after.weight_bytes:,} B"
               f"{corrected_text(len(shifts))}",
               original, pruned)
    return pruned
