"""Per-channel affine maps folded into the weights of linear layers (conv, conv_transpose, linear).

The algebra every exact re-parameterisation shares. With s, t per channel:
    fold_output_affine(L, s, t)(x) == L(x) * s + t          (s, t over L's output channels)
    fold_input_affine(L, s, t)(x)  == L(x * s + t)          (s, t over L's input channels)
`channel_vector` (from passes/channels.py, the channel-dependency analysis) reads a constant
operand as such a per-channel vector, where it is one.
The input form is exact only where every output sees every input tap: a padded conv pads the
*transformed* input with zeros, so a shift t != 0 there is refused (returns None).
Weights are recomputed in float64 and stored in the layer's dtype.
"""

from __future__ import annotations

import numpy as np

from npuc.ir import Node, const
from npuc.ops import make

# The channel facts live with the channel-dependency analysis; the passes that fold affine maps
# import them from here too.
from .channels import LAYERS, channel_axis, channel_vector, is_layer, out_channels

__all__ = ["LAYERS", "channel_axis", "channel_vector", "fold_input_affine", "fold_output_affine",
           "is_layer", "out_channels"]


def _weights(node: Node) -> tuple[np.ndarray, np.ndarray]:
    w = node.inputs[1].data.astype(np.float64)
    b = (node.inputs[2].data.astype(np.float64) if len(node.inputs) > 2
         else np.zeros(out_channels(node)))
    return w, b


def _rebuild(node: Node, x: Node, w: np.ndarray, b: np.ndarray) -> Node:
    dtype = node.inputs[1].dtype
    weight = const(w.astype(dtype.numpy), dtype, node.inputs[1].loc)
    if len(node.inputs) == 2 and not np.any(b):  # a bias-free layer stays bias-free
        return make(node.op, [x, weight], dict(node.attrs), node.loc)
    bias = const(b.astype(dtype.numpy), dtype,
                 node.inputs[2].loc if len(node.inputs) > 2 else node.loc)
    return make(node.op, [x, weight, bias], dict(node.attrs), node.loc)


def _grouped_transpose_view(w: np.ndarray, groups: int) -> np.ndarray:
    """conv_transpose weight (Cin, Og, *k) viewed as (G, Cin/G, Og, *k)."""
    return w.reshape((groups, w.shape[0] // groups) + w.shape[1:])


def fold_output_affine(node: Node, scale: np.ndarray, shift: np.ndarray) -> Node:
    """The layer computing node(x) * scale + shift per output channel."""
    w, b = _weights(node)
    scale, shift = np.asarray(scale, np.float64), np.asarray(shift, np.float64)
    tail = (1,) * (w.ndim - 1)
    if node.op == "conv_transpose":
        groups = node.attrs["groups"]
        view = _grouped_transpose_view(w, groups)
        per_group = scale.reshape((groups, 1, -1) + (1,) * (w.ndim - 2))
        w = (view * per_group).reshape(w.shape)
    else:
        w = w * scale.reshape((-1,) + tail)
    return _rebuild(node, node.inputs[0], w, b * scale + shift)


def fold_input_affine(node: Node, scale: np.ndarray, shift: np.ndarray,
                      x: Node | None = None) -> Node | None:
    """The layer computing node(x * scale + shift) per input channel, or None where not exact;
    it reads `x` (default: the layer's own input)."""
    x = node.inputs[0] if x is None else x
    w, b = _weights(node)
    scale, shift = np.asarray(scale, np.float64), np.asarray(shift, np.float64)
    has_shift = bool(np.any(shift != 0))
    if node.op == "linear":
        return _rebuild(node, x, w * scale, b + w @ shift)
    if has_shift and (node.op == "conv_transpose" or any(node.attrs["padding"])):
        return None
    groups = node.attrs["groups"]
    if node.op == "conv_transpose":  # weight (Cin, Og, *k): input channels lead
        w = w * scale.reshape((-1,) + (1,) * (w.ndim - 1))
        return _rebuild(node, x, w, b)
    # conv weight (O, Cg, *k); output o reads input channels g(o) * Cg + [0, Cg)
    cg = w.shape[1]
    per_out = np.repeat(np.arange(groups), w.shape[0] // groups)[:, None] * cg + np.arange(cg)
    s = scale[per_out].reshape(w.shape[:2] + (1,) * (w.ndim - 2))
    spatial = tuple(range(2, w.ndim))
    b = b + (w.sum(axis=spatial) * shift[per_out]).sum(axis=1)
    return _rebuild(node, x, w * s, b)
