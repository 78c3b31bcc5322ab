"""fold_norms: hand-written RMSNorm becomes one `layer_norm {rms}`, with its gain folded in.

Before: %s = pow(%x, 2)  %m = mean(%s) {axes = [-1], keepdim}  %e = add(%m, eps)
        %r = rsqrt(%e)   %n = mul(%x, %r)                       %y = mul(%g, %n)
After:  %y = layer_norm(%x, %g) {eps, ndim = 1, rms = true}

Matched: the square as pow(x, 2) or x * x; the scaling as x * rsqrt(v + eps) or x / sqrt(v + eps)
(either operand order); the gain, a constant over the last axis multiplied on either side, is
folded when the norm has no other reader (so nothing is computed twice). Llama's, Qwen2's,
Mistral's and T5's RMSNorm all read so. One op instead of six gives the quantizer one integer
kernel (`qlayer_norm` without centring) where each step alone would lose the small mean square
to 8-bit rounding, and smoothquant sees the norm -> linear groups it smooths.
Ensures: the same function within float rounding.
"""

from __future__ import annotations

from npuc.ir import Graph, Node, const
from npuc.ops import make
from npuc.pipeline import PassContext, plural, register_pass
from npuc.rewrite import rewrite


def _squared(node: Node) -> Node | None:
    """x when `node` is x ** 2 or x * x."""
    if node.op == "pow" and node.inputs[1].splat == 2.0:
        return node.inputs[0]
    if node.op == "mul" and node.inputs[0] is node.inputs[1]:
        return node.inputs[0]
    return None


def _mean_square(node: Node) -> tuple[Node, float] | None:
    """(x, eps) when `node` is mean(x ** 2 over the last axis, keepdim) + eps."""
    if node.op != "add":
        return None
    for mean, eps in (node.inputs, node.inputs[::-1]):
        value = eps.splat
        if value is None or mean.op != "mean" or not mean.attrs["keepdim"]:
            continue
        x = _squared(mean.inputs[0])
        rank = mean.inputs[0].type.rank
        if x is not None and tuple(a % rank for a in mean.attrs["axes"]) == (rank - 1,):
            return x, value
    return None


def _rms_norm(node: Node) -> Node | None:
    pairs = {"mul": ((0, 1, "rsqrt"), (1, 0, "rsqrt")), "div": ((0, 1, "sqrt"),)}
    for i, j, root in pairs.get(node.op, ()):
        x, scale = node.inputs[i], node.inputs[j]
        found = _mean_square(scale.inputs[0]) if scale.op == root else None
        if found is not None and found[0] is x and x.shape == node.shape and x.dtype.is_float:
            return make("layer_norm", [x], {"ndim": 1, "eps": found[1], "rms": True},
                        loc=scale.loc or node.loc)
    return None


def _gain(graph: Graph, node: Node, original: Node) -> Node | None:
    """layer_norm(x, g) for g * layer_norm(x) without a gain, g constant over the last axis
    (`original`: the node of `graph` that `node` rewrites, to count the norm's readers)."""
    if node.op != "mul":
        return None
    for k in (0, 1):
        norm, gain = node.inputs[k], node.inputs[1 - k]
        if norm.op != "layer_norm" or len(norm.inputs) != 1 or norm.attrs["ndim"] != 1 \
                or not gain.is_const or gain.attrs.get("data") is None \
                or graph.sole_reader(original.inputs[k]) is not original \
                or norm.shape != node.shape:
            continue
        last = norm.shape[-1]
        if gain.shape[-1:] == (last,) and all(d == 1 for d in gain.shape[:-1]):
            weight = const(gain.data.reshape(last), gain.dtype, gain.loc)
            return make("layer_norm", [norm.inputs[0], weight], dict(norm.attrs), loc=norm.loc)
    return None


def _rms_norms(graph: Graph) -> int:
    return sum(n.op == "layer_norm" and bool(n.attrs.get("rms")) for n in graph.nodes)


@register_pass("fold_norms")
def fold_norms(graph: Graph, ctx: PassContext) -> Graph:
    """Fold hand-written RMSNorms into `layer_norm {rms}` with their gains."""
    normed = rewrite(graph, _rms_norm)
    result = rewrite(normed, lambda n, o: _gain(normed, n, o), origin=True)
    count = _rms_norms(result) - _rms_norms(graph)
    ctx.note(f"fold_norms: {plural(count, 'RMSNorm')} folded")
    return result
