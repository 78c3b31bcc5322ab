"""cse: common-subexpression elimination.

Two nodes are the same expression when they have the same op, the same (already deduplicated)
operands, equal attributes and the same type; two constants are the same when their contents
are (same digest, dtype and shape). Each expression is kept once.

Before: %1 = relu(%x)  %2 = relu(%x)  %3 = add(%1, %2)     After: %1 = relu(%x)  %3 = add(%1, %1)
Ensures: the same outputs; no two nodes compute the same expression.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from npuc.ir import Graph, Node
from npuc.pipeline import PassContext, plural, register_pass
from npuc.rewrite import rewrite


def _key(node: Node) -> tuple[Any, ...]:
    attrs = tuple((k, ("array", v.tobytes()) if isinstance(v, np.ndarray) else v)
                  for k, v in node.attrs.items() if not (node.is_const and k == "data"))
    return (node.op, tuple(id(i) for i in node.inputs), attrs, node.type)


@register_pass("cse")
def cse(graph: Graph, ctx: PassContext) -> Graph:
    """Keep one copy of each repeated expression (and each repeated constant)."""
    seen: dict[tuple[Any, ...], Node] = {}

    def dedupe(node: Node) -> Node | None:
        if node.op == "input":
            return None
        if node.is_const and node.attrs.get("data") is None:
            return None  # contents unknown: cannot prove two constants equal
        return seen.setdefault(_key(node), node)

    result = rewrite(graph, dedupe)
    removed = len(graph.nodes) - len(result.nodes)
    ctx.note(f"cse: merged {plural(removed, 'duplicate node')}")
    return result
