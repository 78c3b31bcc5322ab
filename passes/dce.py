"""dce: dead-code elimination.

A Graph holds only what reaches its outputs, so a node nothing reads vanishes as soon as a pass
rebuilds the graph. What remains dead is *part of* a live op: a concat whose result is only ever
sliced back into some of its operands keeps the others alive. This pass forwards such slices to
the operand they read, so the unread operands (and everything only they need) disappear.

Before: %c = concat(%a, %b) {axis = 1}   %s = slice(%c) {axis = 1, start = 4, end = 8}  (a has 4)
After:  %s is %b
Ensures: the same outputs; no slice reads exactly one operand of a concat.
"""

from __future__ import annotations

from npuc.ir import Graph, Node
from npuc.pipeline import PassContext, plural, register_pass
from npuc.rewrite import rewrite


def _forward_slice(node: Node) -> Node | None:
    if node.op != "slice" or node.attrs["step"] != 1 or node.inputs[0].op != "concat":
        return None
    cat = node.inputs[0]
    axis = node.attrs["axis"] % len(cat.shape)
    if axis != cat.attrs["axis"] % len(cat.shape):
        return None
    start, end, _ = slice(node.attrs["start"], node.attrs["end"]).indices(cat.shape[axis])
    offset = 0
    for part in cat.inputs:
        if (start, end) == (offset, offset + part.shape[axis]):
            return part
        offset += part.shape[axis]
    return None


@register_pass("dce")
def dce(graph: Graph, ctx: PassContext) -> Graph:
    """Remove dead nodes and dead operands of concats that are only sliced apart again."""
    result = rewrite(graph, _forward_slice, fixpoint=True)
    removed = len(graph.nodes) - len(result.nodes)
    ctx.note(f"dce: removed {plural(removed, 'dead node')}")
    return result
