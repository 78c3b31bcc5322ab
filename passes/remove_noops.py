"""remove_noops: drop ops that return their operand unchanged, and merge chains of data movement.

Removed: reshape/expand to the same shape, identity permute, full-range slice, cast to the same
dtype, zero pad, single-operand concat, x + 0 / x - 0 / x * 1 / x / 1 with a constant that does
not broadcast x to a larger shape, clamp(-inf, inf), max(x, x), min(x, x), and(x, x), or(x, x).
Merged: reshape(reshape(x)) -> reshape(x); permute(permute(x)) -> one permute.
Ensures: the same outputs, bit for bit (up to the sign of zero for x + 0).
"""

from __future__ import annotations

import numpy as np

from npuc.ir import Graph, Node
from npuc.ops import make
from npuc.pipeline import PassContext, plural, register_pass
from npuc.rewrite import rewrite

_IDENTITY_CONST = {"add": 0, "sub": 0, "mul": 1, "div": 1}
_IDEMPOTENT = {"maximum", "minimum", "logical_and", "logical_or"}


def _all_equal(node: Node, value: float) -> bool:
    data = node.attrs.get("data") if node.is_const else None
    return data is not None and bool(np.all(data == value))


def _is_noop(node: Node) -> bool:
    if not node.inputs:
        return False
    x = node.inputs[0]
    op, a = node.op, node.attrs
    if op in ("reshape", "expand", "cast", "concat", "slice", "pad", "permute"):
        same = (x.shape, x.dtype) == (node.shape, node.dtype)
        if op == "permute":
            return a["perm"] == tuple(range(len(x.shape)))
        if op == "pad":
            return same and a["pads"] == (0,) * len(a["pads"])
        return same and (op != "concat" or len(node.inputs) == 1)
    if op in _IDENTITY_CONST:
        return x.shape == node.shape and _all_equal(node.inputs[1], _IDENTITY_CONST[op])
    if op in _IDEMPOTENT:
        return node.inputs[0] is node.inputs[1]
    if op == "clamp":
        return a["min"] == -np.inf and a["max"] == np.inf
    return False


def _simplify(node: Node) -> Node | None:
    if _is_noop(node):
        return node.inputs[0]
    x = node.inputs[0] if node.inputs else None
    if node.op == "reshape" and x is not None and x.op == "reshape":
        return make("reshape", [x.inputs[0]], {"shape": node.attrs["shape"]}, node.loc)
    if node.op == "permute" and x is not None and x.op == "permute":
        inner, outer = x.attrs["perm"], node.attrs["perm"]
        return make("permute", [x.inputs[0]], {"perm": [inner[p] for p in outer]}, node.loc)
    return None


@register_pass("remove_noops")
def remove_noops(graph: Graph, ctx: PassContext) -> Graph:
    """Drop identity ops and merge reshape and permute chains."""
    result = rewrite(graph, _simplify, fixpoint=True)
    removed = len(graph.nodes) - len(result.nodes)
    ctx.note(f"remove_noops: {plural(removed, 'fewer node')}")
    return result
