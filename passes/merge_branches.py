"""merge_branches: merge parallel conv branches that are summed into one conv (RepVGG, ACNet,
MobileOne, RepCNN re-parameterisation).

Before: %a = conv(%x, %w3, %b3) {padding = [1, 1, 1, 1]}      (3x3, optionally + batch_norm)
        %b = conv(%x, %w1) {padding = [0, 0, 0, 0]}            (1x1, optionally + batch_norm)
        %c = batch_norm(%x, %g, %beta, %mean, %var)            (identity, optionally + BN)
        %s = add(add(%a, %b), %c)
After:  %s = conv(%x, %w, %bias) {padding = [1, 1, 1, 1]}
        w = w3' + pad(w1') + pad(dirac'),  bias = b3' + b1' + beta'   (' = BN folded in)

An `add` tree (any nesting and order of adds, each inner add read only by the next) is split into
its leaves; each leaf is read as a branch of the value it starts from:
  conv(x) [-> batch_norm ...]          with constant weights
  avg_pool(x) [-> batch_norm ...]      a depthwise conv of 1/|window|, when that is exact:
                                       dilation 1, count_include_pad or no padding, and ceil_mode
                                       not changing the output size
  x [-> batch_norm ...]                identity: a Dirac kernel, respecting groups
Leaves are grouped by the value x their branch reads. A group of two or more branches with at
least one conv merges into one conv on x when all of them fit one kernel: same stride, same groups
(identity and avg-pool fit any groups), same channels in and out for identity and avg-pool, same
dilation among kernels wider than 1, and every branch's taps inside the widest branch's window
(the smaller kernels zero-pad into the largest: 3x3 pad 1 with 1x1 pad 0, or 1x3 pad (0, 1) and
3x1 pad (1, 0) into 3x3 pad 1). Leaves of other groups stay and are added to the merged conv.

Requires: constant conv weights and BN statistics; each branch's nodes read only by the branch
(the leaf only by the add tree), none a graph output.
Ensures: the same function within float rounding; no mergeable group left (idempotent). Not
merged: a branch with anything but batch_norm after its conv (a ReLU before the sum), branches
on different inputs, mismatched stride or groups, a branch read elsewhere, and paddings that would
need a kernel larger than the largest branch's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from npuc.driver import summarize
from npuc.ir import Graph, Node, const
from npuc.ops import make
from npuc.ops.elementwise import OpTypeError
from npuc.pipeline import PassContext, register_pass
from npuc.rewrite import rewrite

from .channel_affine import fold_output_affine, is_layer
from .fold_batchnorm import bn_affine


@dataclass(frozen=True)
class _Branch:
    """One summand as a conv on `x`: `core` is the conv, the avg_pool, or x itself (identity);
    `norms` the batch_norms after it, outermost first."""

    x: Node
    core: Node
    norms: tuple[Node, ...]

    @property
    def kind(self) -> str:
        return self.core.op if self.core is not self.x else "identity"


@dataclass(frozen=True)
class _Axis:
    """Where one branch's taps fall along one spatial axis: kernel k, padding lo/hi, dilation."""

    k: int
    lo: int
    hi: int
    dilation: int

    @property
    def start(self) -> int:  # input offset (from p * stride) of the first tap
        return -self.lo

    def end(self, dilation: int) -> int:
        return -self.lo + (self.k - 1) * dilation


def _absorbed(graph: Graph, add: Node) -> bool:
    """Whether `add` (of `graph`) is an inner node of a larger add tree."""
    reader = graph.sole_reader(add) if add.op == "add" else None
    return reader is not None and reader.op == "add" and reader.type == add.type


def _leaves(graph: Graph, node: Node, original: Node) -> list[tuple[Node, Node, bool]]:
    """The add tree's leaves as (node, original, owned): `owned` when the tree is its only reader.
    `node` and `original` are walked together: structure from the rewritten node, readers from
    the original graph."""
    leaves = []
    for cur, orig in zip(node.inputs, original.inputs, strict=True):
        if _absorbed(graph, orig):
            leaves += _leaves(graph, cur, orig)
        else:
            leaves.append((cur, orig, graph.sole_reader(orig) is original))
    return leaves


def _pool_is_conv(pool: Node) -> bool:
    """avg_pool equals a conv of 1/|window| only where every divisor is the full window."""
    a = pool.attrs
    if any(d != 1 for d in a["dilation"]) or min(a["padding"]) < 0:
        return False
    if not a["count_include_pad"] and any(a["padding"]):
        return False
    if a["ceil_mode"]:  # harmless only when it adds no (partial) last window
        try:
            floor = make("avg_pool", [pool.inputs[0]], {**a, "ceil_mode": False})
        except OpTypeError:
            return False
        return floor.shape == pool.shape
    return True


def _branch(graph: Graph, leaf: Node, original: Node, owned: bool) -> _Branch:
    """Read a leaf as a branch: peel the batch_norms the branch owns, then the conv/avg_pool;
    whatever is left is the input of an identity branch."""
    norms: list[Node] = []
    node, orig = leaf, original
    while owned and node.op == "batch_norm" and bn_affine(node) is not None:
        norms.append(node)
        owned = graph.sole_reader(orig.inputs[0]) is orig
        node, orig = node.inputs[0], orig.inputs[0]
    if owned and ((node.op == "conv" and is_layer(node))
                  or (node.op == "avg_pool" and _pool_is_conv(node))):
        return _Branch(node.inputs[0], node, tuple(norms))
    return _Branch(node, node, tuple(norms))


def _axes(b: _Branch) -> list[_Axis]:
    if b.kind == "identity":
        return [_Axis(1, 0, 0, 1)] * (len(b.x.shape) - 2)
    a = b.core.attrs
    kernel = a["kernel"] if b.kind == "avg_pool" else b.core.inputs[1].shape[2:]
    pad = a["padding"]
    return [_Axis(k, pad[2 * i], pad[2 * i + 1], a["dilation"][i]) for i, k in enumerate(kernel)]


def _stride(b: _Branch) -> tuple[int, ...]:
    return (1,) * (len(b.x.shape) - 2) if b.kind == "identity" else tuple(b.core.attrs["stride"])


@dataclass(frozen=True)
class _Layout:
    """The merged kernel along one axis, and where each branch's kernel sits in it."""

    k: int
    lo: int
    hi: int
    dilation: int
    offsets: tuple[int, ...]


def _layout(axes: Sequence[_Axis]) -> _Layout | None:
    """Fit every branch's taps (one axis) into the widest branch's window, or None."""
    if any(a.lo < 0 or a.hi < 0 for a in axes):
        return None
    wide = {a.dilation for a in axes if a.k > 1}
    if len(wide) > 1:
        return None
    d = wide.pop() if wide else 1
    first = min(a.start for a in axes)
    last = max(a.end(d) for a in axes)
    if last - first != max(a.end(d) - a.start for a in axes):
        return None  # misaligned: the union of taps is wider than the widest kernel
    if any((a.start - first) % d for a in axes):
        return None  # a tap between the dilated taps of the others
    # the fewest high-side zeros that still cover every branch's last window
    hi = last + min(a.hi - a.end(d) for a in axes)
    return _Layout((last - first) // d + 1, -first, hi, d,
                   tuple((a.start - first) // d for a in axes))


def _as_conv(b: _Branch, groups: int) -> Node:
    """The branch (batch_norms folded in) as one conv node on b.x."""
    if b.kind == "conv":
        conv = b.core
    else:
        c, cg, nsp = b.x.shape[1], b.x.shape[1] // groups, len(b.x.shape) - 2
        ax = _axes(b)
        kernel = tuple(a.k for a in ax)
        w = np.zeros((c, cg, *kernel))
        # output channel o reads input channel o, which is o % cg within its group
        w[np.arange(c), np.arange(c) % cg] = 1.0 / np.prod(kernel)
        weight = const(w.astype(b.x.dtype.numpy), b.x.dtype)
        attrs = {"stride": _stride(b), "dilation": (1,) * nsp, "groups": groups,
                 "padding": tuple(p for a in ax for p in (a.lo, a.hi))}
        conv = make("conv", [b.x, weight], attrs, b.core.loc if b.kind == "avg_pool" else None)
    for bn in reversed(b.norms):
        conv = fold_output_affine(conv, *bn_affine(bn))
    return conv


def _merge(branches: Sequence[_Branch], root: Node) -> Node | None:
    """One conv computing the sum of `branches`, or None when they do not fit one kernel."""
    convs = [b for b in branches if b.kind == "conv"]
    x = branches[0].x
    groups = {b.core.attrs["groups"] for b in convs}
    strides = {_stride(b) for b in branches}
    if len(groups) != 1 or len(strides) != 1 or x.type.quant is not None:
        return None
    if len(convs) < len(branches) and x.shape[1] != root.shape[1]:
        return None  # identity and avg-pool keep the channel count
    if any(n.type.quant is not None for b in convs for n in b.core.inputs[1:]):
        return None
    per_branch = [_axes(b) for b in branches]
    layouts = [_layout(axis) for axis in zip(*per_branch, strict=True)]
    if any(lay is None for lay in layouts):
        return None
    group_count = groups.pop()
    try:
        parts = [_as_conv(b, group_count) for b in branches]
    except OpTypeError:  # e.g. channels that the groups do not divide for a Dirac kernel
        return None
    if any(p.type != root.type for p in parts):
        return None
    widest = max(convs, key=lambda b: b.core.inputs[1].type.size).core
    w = np.zeros((root.shape[1], x.shape[1] // group_count, *(lay.k for lay in layouts)))
    bias = np.zeros(root.shape[1])
    for i, part in enumerate(parts):
        kernel = part.inputs[1].data
        at = tuple(slice(lay.offsets[i], lay.offsets[i] + k)
                   for lay, k in zip(layouts, kernel.shape[2:], strict=True))
        w[(slice(None), slice(None), *at)] += kernel
        if len(part.inputs) > 2:
            bias += part.inputs[2].data
    dtype = widest.inputs[1].dtype
    bias_loc = widest.inputs[2].loc if len(widest.inputs) > 2 else widest.loc
    attrs = {"stride": strides.pop(), "groups": group_count,
             "dilation": tuple(lay.dilation for lay in layouts),
             "padding": tuple(p for lay in layouts for p in (lay.lo, lay.hi))}
    merged = make("conv", [x, const(w.astype(dtype.numpy), dtype, widest.inputs[1].loc),
                           const(bias.astype(dtype.numpy), dtype, bias_loc)], attrs, widest.loc)
    return merged if merged.type == root.type else None


@register_pass("merge_branches")
def merge_branches(graph: Graph, ctx: PassContext) -> Graph:
    """Merge summed parallel conv/1x1/identity/avg-pool branches (+BN) into one conv."""
    merged = {"groups": 0, "branches": 0}

    def merge(node: Node, original: Node) -> Node | None:
        if node.op != "add" or _absorbed(graph, original):
            return None
        leaves = _leaves(graph, node, original)
        by_input: dict[Node, list[tuple[int, _Branch]]] = {}
        for i, (leaf, orig, owned) in enumerate(leaves):
            if leaf.type == node.type:  # a broadcast summand is no branch
                b = _branch(graph, leaf, orig, owned)
                by_input.setdefault(b.x, []).append((i, b))
        terms: list[Node] = []
        used: set[int] = set()
        for group in by_input.values():
            branches = [b for _, b in group]
            if len(branches) < 2 or not any(b.kind == "conv" for b in branches):
                continue  # a lone conv, or no conv to merge into
            conv = _merge(branches, node)
            if conv is not None:
                terms.append(conv)
                used.update(i for i, _ in group)
                merged["groups"] += 1
                merged["branches"] += len(branches)
        if not terms:
            return None
        # merged convs first (full shape), then the untouched summands in their order
        terms += [leaf for i, (leaf, _, _) in enumerate(leaves) if i not in used]
        total = terms[0]
        for term in terms[1:]:
            total = make("add", [total, term], loc=node.loc)
        return total

    result = rewrite(graph, merge, origin=True)
    ctx.note(f"merge_branches: merged {merged['groups']} branch groups ({merged['branches']} "
             f"branches), {summarize(graph).params} -> {summarize(result).params} params")
    return result
