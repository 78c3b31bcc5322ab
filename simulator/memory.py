"""Memory planning: tensor lifetimes over an execution order, and arena offsets.

A tensor lives from the step that writes it to the last step that reads it (graph outputs and
state writes to the end, inputs from the start); constants live in their own read-only region,
state between calls in its own. Offsets are assigned greedily, largest tensor first, at the
lowest offset that overlaps no tensor alive at the same time. The arena is compared with its
lower bound, the largest total size of tensors alive at once; two tensors alive together never
overlap (tests check both).
"""

from __future__ import annotations

from dataclasses import dataclass

from npuc.ir import Graph, Node


@dataclass(frozen=True)
class Buffer:
    node: Node
    size: int
    start: int  # first step it is alive
    end: int  # last step it is alive (inclusive)
    offset: int


@dataclass(frozen=True)
class MemoryPlan:
    buffers: tuple[Buffer, ...]
    arena_bytes: int
    lower_bound: int  # the most bytes alive at one step


def plan_memory(graph: Graph, order: list[Node], align: int = 1) -> MemoryPlan:
    """Lifetimes over `order` (the non-constant nodes in execution order) and arena offsets, each
    a multiple of `align` bytes (the generated C aligns every tensor for its widest type)."""
    step = {n: i for i, n in enumerate(order)}
    last = len(order) - 1
    spans: dict[Node, list[int]] = {}
    for node in order:
        spans[node] = [0 if node.op == "input" else step[node], step[node]]
    for node in order:
        for i in node.inputs:
            if i in spans:
                spans[i][1] = max(spans[i][1], step[node])
    for out in graph.roots:  # outputs, and the state writes stored back after the last op
        if out in spans:
            spans[out][1] = last
    placed: list[Buffer] = []
    by_size = sorted(spans.items(), key=lambda kv: (-kv[0].type.nbytes, step[kv[0]]))
    for node, (start, end) in by_size:
        size = -(-node.type.nbytes // align) * align
        offset = 0
        for other in sorted((b for b in placed if b.start <= end and start <= b.end),
                            key=lambda b: b.offset):
            if offset + size <= other.offset:
                break
            offset = max(offset, other.offset + other.size)
        placed.append(Buffer(node, size, start, end, offset))
    arena = max((b.offset + b.size for b in placed), default=0)
    alive = [sum(b.size for b in placed if b.start <= s <= b.end) for s in range(last + 1)]
    return MemoryPlan(tuple(sorted(placed, key=lambda b: step[b.node])), arena,
                      max(alive, default=0))
