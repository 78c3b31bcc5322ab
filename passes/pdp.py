"""Training-time pruning for the pruning passes' `finetune=` option: PDP soft masks on a torch
mirror of the graph (Cho et al., "PDP: Parameter-free Differentiable Pruning is All You Need").

Not a pass, and not needed by one: prune_magnitude, prune_nm and prune_channels stand on their
own after training. A user who can train passes `finetune=fn`; the pass then

1. builds a `PruningMirror`: a torch.nn.Module running the graph (each op's `mirror` trait) whose
   parameters are the weights and biases of its conv/linear layers, and whose forward multiplies
   every weight the pass prunes by a PDP soft mask computed from the weights themselves, with no
   mask parameters: m = sigmoid((s - t) / (temperature * t)) for a weight's score s (w^2, or a
   channel's squared row norm) and the threshold t that the pass's target puts on the scores
   at this step (the k-th smallest for magnitude and channels, midway between the n-th and
   (n+1)-th largest of each group of m for N:M);
2. calls `fn(module)` once: the user's training loop (`module(*inputs)` returns the outputs as a
   tuple of tensors; `module.parameters()` are what to optimise). `module.progress` (0..1,
   default 1) scales the target sparsity for loops that ramp it up; `module.temperature`
   (default 0.05) is PDP's tau relative to t;
3. writes the trained weights back into the graph, each times its soft mask at the full
   target (what the network computed in training; raw weights the masks silenced would
   otherwise come back through bias correction), and prunes those as usual.

Weights the masks push below the threshold shrink during training, so the hard pruning that
follows removes what the network has learned to do without.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

from npuc.ir import Graph, Node, const
from npuc.ops import NO_MIRROR, OPS
from npuc.ops.elementwise import TORCH_DTYPES
from npuc.rewrite import rewrite

from .channels import Channels
from .prune import count, reduction_rows, weight_layers

Tensor = torch.Tensor
Masks = Callable[[dict[Node, Tensor], float, float], dict[Node, Tensor]]


@runtime_checkable
class Finetune(Protocol):
    """A training callback: trains the module it is given (see the module docstring)."""

    def __call__(self, model: torch.nn.Module) -> Any: ...


def _conv(attrs: Any, x: Tensor, w: Tensor, b: Tensor | None = None) -> Tensor:
    """conv's torch semantics (compiler/ops gives it no mirror yet): asymmetric padding as an
    explicit pad, then F.conv1d/2d/3d."""
    nsp = w.ndim - 2
    pads = attrs["padding"]
    pairs = [p for i in reversed(range(nsp)) for p in (pads[2 * i], pads[2 * i + 1])]
    conv = (F.conv1d, F.conv2d, F.conv3d)[nsp - 1]
    return conv(F.pad(x, pairs), w, b, tuple(attrs["stride"]), 0, tuple(attrs["dilation"]),
                attrs["groups"])


_MISSING = {"conv": _conv}  # ops whose `mirror` trait is NO_MIRROR but that CNNs need


def _mirror(op: str) -> Callable[..., Tensor]:
    fn = OPS[op].mirror
    if fn is NO_MIRROR:
        fn = _MISSING.get(op)
        if fn is None:
            raise TypeError(f"finetune: op {op} has no torch mirror; prune without finetune=")
    return fn


class PruningMirror(torch.nn.Module):
    """The graph in torch, its layer weights trainable and soft-masked (module docstring)."""

    def __init__(self, graph: Graph, layers: Sequence[Node], masks: Masks) -> None:
        super().__init__()
        for node in graph.nodes:
            if node.op not in ("input", "const"):
                _mirror(node.op)
        self.graph, self.layers, self.masks = graph, list(layers), masks
        self.progress, self.temperature = 1.0, 0.05
        trainable = [c for layer in weight_layers(graph) for c in layer.inputs[1:] if c.is_const]
        self._trainable = list(dict.fromkeys(trainable))
        self.weights = torch.nn.ParameterList(
            torch.nn.Parameter(torch.from_numpy(np.array(c.data, np.float32)))
            for c in self._trainable)
        self._index = {c: k for k, c in enumerate(self._trainable)}
        self._consts = {n: torch.from_numpy(np.array(n.data)).to(TORCH_DTYPES[n.dtype])
                        for n in graph.nodes if n.is_const and n not in self._index}

    def forward(self, *inputs: Any) -> tuple[Tensor, ...]:
        values: dict[Node, Tensor] = dict(self._consts)
        values.update((c, self.weights[k]) for c, k in self._index.items())
        for node, x in zip(self.graph.inputs, inputs, strict=True):
            values[node] = torch.as_tensor(x, dtype=TORCH_DTYPES[node.dtype])
        masked = self.masks({n: values[n.inputs[1]] for n in self.layers},
                            float(self.progress), float(self.temperature))
        for node in self.graph.nodes:
            if node in values:
                continue
            args = [values[i] for i in node.inputs]
            if node in masked:
                args[1] = masked[node]
            values[node] = _mirror(node.op)(node.attrs, *args)
        return tuple(values[o] for o in self.graph.outputs)

    def trained_graph(self) -> Graph:
        """The graph with the trained weights as the network last saw them: each masked
        layer's weight times its soft mask at the full target (progress 1), so the hard
        pruning that follows (and its bias correction) starts from the function trained, not
        from raw weights the masks had silenced; biases as trained."""
        with torch.no_grad():
            raw = {c: self.weights[k] for c, k in self._index.items()}
            masked = self.masks({n: raw[n.inputs[1]] for n in self.layers}, 1.0,
                                float(self.temperature))
            final = dict(raw)
            for layer, w in masked.items():
                final[layer.inputs[1]] = w
            arrays = {c: w.detach().numpy() for c, w in final.items()}

        def update(node: Node) -> Node | None:
            data = arrays.get(node)
            return None if data is None else const(data.astype(node.dtype.numpy), node.dtype,
                                                   node.loc)

        return rewrite(self.graph, update)


def train(graph: Graph, layers: Sequence[Node], masks: Masks, finetune: Finetune) -> Graph:
    """Run the user's training callback on a soft-masked mirror; the trained graph."""
    mirror = PruningMirror(graph, layers, masks)
    finetune(mirror)
    return mirror.trained_graph()


def _soft(score: Tensor, threshold: Tensor, temperature: float) -> Tensor:
    """PDP's mask: sigmoid((s - t) / (tau t)); scores far above t pass, far below vanish."""
    scale = temperature * threshold.detach().clamp_min(1e-12)
    return torch.sigmoid((score - threshold.detach()) / scale)


def soft_magnitude(sparsity: float, scope: str) -> Masks:
    """Soft masks for prune_magnitude: t is the k-th smallest w^2 of the layer (or of all)."""
    def masks(weights: dict[Node, Tensor], progress: float, temperature: float
              ) -> dict[Node, Tensor]:
        squares = {n: w * w for n, w in weights.items()}
        pools = ([torch.cat([s.reshape(-1) for s in squares.values()])] if scope == "global"
                 and squares else [s.reshape(-1) for s in squares.values()])
        thresholds = [_kth(p, count(sparsity * progress, p.numel())) for p in pools]
        out = {}
        for k, (n, w) in enumerate(weights.items()):
            t = thresholds[0 if scope == "global" else k]
            out[n] = w if t is None else w * _soft(squares[n], t, temperature)
        return out

    return masks


def _kth(values: Tensor, k: int) -> Tensor | None:
    """The k-th smallest value (None for k == 0: nothing to prune)."""
    return None if k == 0 else torch.kthvalue(values.detach(), k).values


def soft_nm(n: int, m: int) -> Masks:
    """Soft masks for prune_nm: per group of m input channels, t midway between the n-th and
    (n+1)-th largest w^2 (the same groups as the pass: `prune.reduction_rows`); `progress`
    fades the mask in (1 - progress * (1 - m): none at 0, PDP's at 1)."""
    def masks(weights: dict[Node, Tensor], progress: float, temperature: float
              ) -> dict[Node, Tensor]:
        out = {}
        for layer, w in weights.items():
            rows, back = reduction_rows(layer, w)
            length = rows.shape[-1]
            if n >= min(m, length):
                out[layer] = w
                continue
            pad = -length % m
            sq = F.pad(rows * rows, (0, pad)).reshape(rows.shape[:-1] + (-1, m))
            top = sq.detach().sort(dim=-1, descending=True).values
            t = (top[..., n - 1:n] + top[..., n:n + 1]) / 2
            soft = 1 - progress * (1 - _soft(sq, t, temperature))  # N:M has no count to ramp
            mask = soft.reshape(rows.shape[:-1] + (-1,))[..., :length]
            out[layer] = back(rows * mask)
        return out

    return masks


def soft_channels(channels: Channels, sparsity: float) -> Masks:
    """Soft masks for prune_channels: per prunable group of `channels`, t the
    k-th smallest squared unit norm (a unit's rows in every producer); each producer's output
    rows are scaled by their unit's mask."""
    groups = [g for g in channels.groups if g.prunable]

    def masks(weights: dict[Node, Tensor], progress: float, temperature: float
              ) -> dict[Node, Tensor]:
        scale: dict[Node, list[Tensor | None]] = {
            p: [None] * _out_count(p) for p in weights}
        for group in groups:
            norms = torch.stack([sum((_row(weights[p], p, c) ** 2).sum() for p, c in unit)
                                 for unit in group.units])
            t = _kth(norms, count(sparsity * progress, len(group.units)))
            if t is None:
                continue
            mask = _soft(norms, t, temperature)
            for k, unit in enumerate(group.units):
                for p, c in unit:
                    scale[p][c] = mask[k]
        out = {}
        for p, w in weights.items():
            if all(s is None for s in scale[p]):
                out[p] = w
                continue
            vector = torch.stack([s if s is not None else torch.ones(()) for s in scale[p]])
            out[p] = _scale_rows(p, w, vector)
        return out

    return masks


def _out_count(layer: Node) -> int:
    return layer.shape[-1] if layer.op in ("linear", "matmul") else layer.shape[1]


def _row(w: Tensor, layer: Node, c: int) -> Tensor:
    """The weights of output channel c."""
    if layer.op == "matmul":
        return w[..., c]
    if layer.op == "conv_transpose":
        groups, og = layer.attrs["groups"], w.shape[1]
        g, m = divmod(c, og)
        rows = w.shape[0] // groups
        return w[g * rows:(g + 1) * rows, m]
    return w[c]


def _scale_rows(layer: Node, w: Tensor, vector: Tensor) -> Tensor:
    """w with output channel c's weights times vector[c]."""
    if layer.op == "matmul":
        return w * vector
    if layer.op == "conv_transpose":
        groups, og = layer.attrs["groups"], w.shape[1]
        view = w.reshape((groups, w.shape[0] // groups) + tuple(w.shape[1:]))
        per = vector.reshape((groups, 1, og) + (1,) * (w.ndim - 2))
        return (view * per).reshape(w.shape)
    return w * vector.reshape((-1,) + (1,) * (w.ndim - 1))
