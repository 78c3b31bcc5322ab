"""Which nodes a call computes: the one analysis all three executors share for graphs whose work
depends on the call (`reuse` nodes, picking a fresh or a cached operand by the step index).

A node is needed at step s when a root (an output or a state write) needs it at s, through its
readers: an ordinary reader needs all of its operands at the steps it is needed; a `reuse` node
needs its fresh operand only at the steps its schedule recomputes, its cached operand only at
the others, its step operand always. All `reuse` nodes of a graph must read the same step
value, which the executor knows at the start of a call (a graph input, typically). Steps past
the longest schedule behave like its end: everything recomputes there (index `horizon`).
A state write that is not an output is needed only at the steps it changes its slot: where it
picks the slot's own read (`unchanged_state`), the call leaves the slot as it is and stores
nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .ir import Graph, GraphError, Node, StateSlot, state_read
from .ops.state import recomputes


@dataclass(frozen=True, eq=False)
class Activity:
    """Per node, the steps (0 .. horizon; `horizon` standing for every later step) that compute
    it. A graph without `reuse` nodes has horizon 0 and computes every node at every call."""

    graph: Graph

    @cached_property
    def step(self) -> Node | None:
        """The value every `reuse` node reads as its step index (None without reuse)."""
        steps = {n.inputs[2] for n in self.graph.nodes if n.op == "reuse"}
        if len(steps) > 1:
            raise GraphError(f"reuse nodes read {len(steps)} different step values: a call has "
                             "one step index, so they must all read the same one")
        return next(iter(steps), None)

    @cached_property
    def horizon(self) -> int:
        return max((len(n.attrs["recompute"]) for n in self.graph.nodes if n.op == "reuse"),
                   default=0)

    @cached_property
    def masks(self) -> dict[Node, np.ndarray]:
        """node -> bool array of horizon + 1 entries: computed at that step or not."""
        width = self.horizon + 1
        need: dict[Node, np.ndarray] = {n: np.zeros(width, bool) for n in self.graph.nodes}
        outputs = set(self.graph.outputs)
        for root in self.graph.roots:
            need[root][:] = True
        for slot in self.graph.state:  # a call that leaves a slot as it is stores nothing
            if slot.write not in outputs:
                need[slot.write] = np.array([not unchanged_state(slot, s)
                                             for s in range(width)])
        for node in reversed(self.graph.nodes):
            mask = need[node]
            if not mask.any():
                continue
            if node.op == "reuse":
                fresh = np.array([recomputes(node.attrs["recompute"], s) for s in range(width)])
                need[node.inputs[0]] |= mask & fresh
                need[node.inputs[1]] |= mask & ~fresh
                need[node.inputs[2]] |= mask
            else:
                for i in node.inputs:
                    need[i] |= mask
        return need

    def index(self, step: int) -> int:
        """The mask entry that stands for `step`."""
        return min(max(step, 0), self.horizon) if step >= 0 else self.horizon

    def computed(self, step: int) -> list[Node]:
        """The nodes a call at `step` computes, in graph order."""
        i = self.index(step)
        return [n for n in self.graph.nodes if self.masks[n][i]]

    @property
    def always(self) -> bool:
        """Whether every call computes every node (no reuse, or none that ever reuses)."""
        return all(m.all() for m in self.masks.values())


def unchanged_state(slot: StateSlot, step: int) -> bool:
    """Whether a call at `step` leaves `slot` as it found it: its write is its read, through
    `reuse` nodes that pick, at that step, an operand that is the read (nothing to store)."""
    node = slot.write
    while node.op == "reuse":
        node = node.inputs[0 if recomputes(node.attrs["recompute"], step) else 1]
    return node is slot.read


def step_value(array: np.ndarray) -> int:
    """The step index a call's step operand holds."""
    return int(np.asarray(array).reshape(-1)[0])


def carry(graph: Graph, slots: dict[str, int], names: dict[str, str] | None = None) -> Graph:
    """`graph` with state in place of explicit cache inputs and outputs: each input named in
    `slots` becomes a `state` read (named `names[input]`, default the input's name), and the
    output at `slots[input]` its write (no longer an output). How a model written with its
    cache as arguments (a KV cache: the previous keys in, the updated keys out) becomes a
    graph that keeps it between calls."""
    from .rewrite import rewrite

    by_name = {n.attrs["name"]: n for n in graph.inputs}
    unknown = set(slots) - set(by_name)
    if unknown:
        raise GraphError(f"carry: no input named {', '.join(sorted(unknown))}; inputs: "
                         f"{', '.join(by_name)}")
    names = names or {}
    reads = {by_name[name]: state_read(names.get(name, name), by_name[name].type)
             for name in slots}
    rebuilt = rewrite(graph, lambda n: None, seed=reads)
    for name, out in slots.items():
        if rebuilt.outputs[out].type != by_name[name].type:
            raise GraphError(f"carry: state {name!r} is read as {by_name[name].type} but "
                             f"written as {rebuilt.outputs[out].type}")
    kept = [o for i, o in enumerate(rebuilt.outputs) if i not in set(slots.values())]
    state = tuple(StateSlot(reads[by_name[name]], rebuilt.outputs[out])
                  for name, out in slots.items())
    meta = {k: v for k, v in rebuilt.meta.items() if k != "output_structure"}  # outputs went
    return Graph(tuple(n for n in graph.inputs if n not in reads), tuple(kept), graph.name,
                 meta, graph.state + state)
