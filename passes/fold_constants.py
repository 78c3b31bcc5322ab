"""fold_constants: evaluate every op whose operands are all constants.

Before: %2 = mul(%0, %1) with %0, %1 const   After: %2 = const (the product)
Requires: constants carry data. Ensures: no non-leaf node with only constant operands, unless its
result would exceed `max_bytes` (an `expand` of a scalar to a large shape stays an op, so
folding never inflates the weights). Exact: the folded value is the op's own numpy semantics.
"""

from __future__ import annotations

from npuc.ir import Graph, Node, const
from npuc.ops import evaluate
from npuc.pipeline import PassContext, plural, register_pass
from npuc.rewrite import rewrite


@register_pass("fold_constants")
def fold_constants(graph: Graph, ctx: PassContext, *, max_bytes: int = 1 << 24) -> Graph:
    """Evaluate ops whose operands are all constants."""
    folded = 0

    def fold(node: Node) -> Node | None:
        nonlocal folded
        if node.op in ("input", "const") or not node.inputs:
            return None
        if not all(i.is_const and i.attrs.get("data") is not None for i in node.inputs):
            return None
        if node.type.nbytes > max_bytes and node.type.nbytes > max(
                i.type.nbytes for i in node.inputs):
            return None
        value = evaluate(node, *(i.data for i in node.inputs))
        folded += 1
        return const(value, node.dtype, node.loc or node.inputs[0].loc, node.type.quant)

    result = rewrite(graph, fold)
    ctx.note(f"fold_constants: folded {plural(folded, 'op')}")
    return result
