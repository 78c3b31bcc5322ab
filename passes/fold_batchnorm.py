"""fold_batchnorm: fold inference batch norms into a neighbouring conv, conv_transpose or linear.

Before: %1 = conv(%x, %w, %b) {...}   %2 = batch_norm(%1, %g, %beta, %mean, %var) {eps}
After:  %2 = conv(%x, %w', %b')
        w' = w * s,  b' = (b - mean) * s + beta,  s = g / sqrt(var + eps)

BN after a layer folds whenever the layer's output feeds only the BN (groups, depthwise, Conv1d,
ConvTranspose and Linear on (N, C) inputs alike). BN *before* a layer folds into the layer's
input channels when the BN feeds only that layer and the fold is exact: not through zero padding
(the padded zeros would not be shifted) and not into a conv_transpose with a shift.
Requires: constant weights and BN statistics. Ensures: the same function within float rounding;
no batch_norm whose producer or single consumer could take it.
"""

from __future__ import annotations

import numpy as np

from npuc.ir import Graph, Node
from npuc.pipeline import PassContext, register_pass
from npuc.rewrite import rewrite

from .channel_affine import channel_axis, fold_input_affine, fold_output_affine, is_layer


def bn_affine(bn: Node) -> tuple[np.ndarray, np.ndarray] | None:
    """(scale, shift) with batch_norm(x) == x * scale + shift per channel, if all are constant."""
    params = bn.inputs[1:]
    if not all(p.is_const and p.attrs.get("data") is not None for p in params):
        return None
    gamma, beta, mean, var = (p.data.astype(np.float64) for p in params)
    scale = gamma / np.sqrt(var + bn.attrs["eps"])
    return scale, beta - mean * scale


def _channels_match(layer: Node, bn: Node) -> bool:
    return channel_axis(layer) == 1 and len(bn.shape) >= 2


def _folds_after(graph: Graph, bn: Node) -> bool:
    """Whether `bn` (of `graph`) folds into the layer that produces its input."""
    layer = bn.inputs[0]
    return (is_layer(layer) and _channels_match(layer, bn) and graph.sole_reader(layer) is bn
            and bn_affine(bn) is not None)


def _fold_once(graph: Graph, before_layers: bool, folded: dict[str, int]) -> Graph:
    # BNs feeding exactly one layer, by that layer -- decided on the graph being rewritten
    into_next: dict[Node, tuple[np.ndarray, np.ndarray]] = {}
    if before_layers:
        for bn in graph.nodes:
            reader = graph.sole_reader(bn) if bn.op == "batch_norm" else None
            affine = bn_affine(bn) if reader is not None else None
            if affine and is_layer(reader) and reader.inputs[0] is bn and \
                    _channels_match(reader, bn) and not _folds_after(graph, bn):
                into_next[reader] = affine

    def fold(node: Node, original: Node) -> Node | None:
        if node.op == "batch_norm":
            if not _folds_after(graph, original):
                return None
            folded["after"] += 1
            return fold_output_affine(node.inputs[0], *bn_affine(node))
        if original in into_next:
            result = fold_input_affine(node, *into_next[original], x=node.inputs[0].inputs[0])
            folded["before"] += result is not None
            return result
        return None

    return rewrite(graph, fold, origin=True)


@register_pass("fold_batchnorm")
def fold_batchnorm(graph: Graph, ctx: PassContext, *, before_layers: bool = True) -> Graph:
    """Fold batch_norm into the conv/linear before it (or, exactly, after it)."""
    folded = {"after": 0, "before": 0}
    while True:  # a fold can bring the next BN of a chain next to the layer
        count = sum(folded.values())
        graph = _fold_once(graph, before_layers, folded)
        if sum(folded.values()) == count:
            break
    left = sum(n.op == "batch_norm" for n in graph.nodes)
    ctx.note(f"fold_batchnorm: folded {folded['after']} after and {folded['before']} before a "
             f"layer; {left} batch_norm left")
    return graph
