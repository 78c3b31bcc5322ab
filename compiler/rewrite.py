"""The one graph-rewriting driver every pass uses.

`rewrite(graph, fn)` visits nodes in topological order; each node is first rebuilt on its
rewritten inputs, then offered to `fn`, which returns a replacement (any node of the same type)
or None to keep it. Because inputs are rewritten first, chains collapse in one sweep; `fixpoint`
repeats sweeps until nothing changes. The input graph is never mutated.

Rules that need facts about the graph being rewritten (who reads a value) take the original node
too: `rewrite(graph, fn, origin=True)` calls `fn(node, original)`, where `original` is the node of
`graph` that `node` was rebuilt from, so `graph.users[original]` answers such questions.
Graph meta entries that are dicts keyed by nodes are re-keyed to the rewritten nodes.
"""

from __future__ import annotations

from collections.abc import Callable

from .ir import Graph, Node

Rule = Callable[..., Node | None]


def rewrite(graph: Graph, fn: Rule, *, fixpoint: bool = False, max_sweeps: int = 32,
            origin: bool = False, seed: dict[Node, Node] | None = None) -> Graph:
    """Apply `fn` to every node (see module docstring); returns a new Graph. `seed`: nodes
    replaced before the sweep (an input by a state read), their readers rebuilt."""
    for _ in range(max_sweeps):
        new, changed = _sweep(graph, fn, origin, seed or {})
        seed = None
        if not (fixpoint and changed):
            return new
        graph = new
    return graph


def _sweep(graph: Graph, fn: Rule, origin: bool,
           seed: dict[Node, Node]) -> tuple[Graph, bool]:
    mapping: dict[Node, Node] = {n: n for n in graph.inputs} | seed
    changed = bool(seed)
    for node in graph.nodes:
        if node in mapping:
            continue
        inputs = tuple(mapping[i] for i in node.inputs)
        current = node if inputs == node.inputs else node.with_inputs(inputs)
        replacement = fn(current, node) if origin else fn(current)
        if replacement is not None and replacement is not current:
            if (replacement.shape, replacement.dtype) != (node.shape, node.dtype):
                raise TypeError(f"rewrite of {node!r} changed its type to "
                                f"{replacement.shape} {replacement.dtype}")
            changed = True
            current = replacement
        mapping[node] = current
    return graph.remapped(mapping, _remap(graph.meta, mapping)), changed


def _remap(meta: dict, mapping: dict[Node, Node]) -> dict:
    """Meta entries keyed by nodes (the quantizer's origins) follow their nodes' rewrites."""
    def follow(value: object) -> object:
        if isinstance(value, dict) and value and isinstance(next(iter(value)), Node):
            return {mapping.get(k, k): v for k, v in value.items()}
        return value

    return {k: follow(v) for k, v in meta.items()}
