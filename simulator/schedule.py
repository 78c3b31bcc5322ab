"""List scheduling of placed ops over a target's engines (MobiSR-style heterogeneous execution).

Each engine runs one op at a time; an op starts once its operands are ready and its engine is
free. An operand made on another engine is first written to and read back from the shared
on-chip SRAM (2 * bytes / SRAM bandwidth), or DRAM when it does not fit. Ready ops are taken by
upward rank, the longest remaining path to an output (HEFT's priority), so branches on different
engines overlap. networkx holds the DAG.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import networkx as nx

from npuc.ir import Graph, Node


@dataclass(frozen=True)
class Slot:
    start: float
    finish: float
    transfer_s: float  # time spent moving operands from other engines
    transfer_bytes: int


def list_schedule(graph: Graph, engine: Mapping[Node, str], seconds: Mapping[Node, float],
                  memory, sram_bytes_per_s: float) -> dict[Node, Slot]:  # noqa: ANN001
    """Start and finish time of every op in `engine` (its placement) and `seconds` (its cost)."""
    dag = nx.DiGraph()
    for node in engine:
        dag.add_node(node)
        for i in node.inputs:
            if i in engine:
                dag.add_edge(i, node)
    rank: dict[Node, float] = {}
    for node in reversed(list(nx.topological_sort(dag))):
        rank[node] = seconds[node] + max((rank[s] for s in dag.successors(node)), default=0.0)
    free: dict[str, float] = {}
    slots: dict[Node, Slot] = {}
    waiting = {n: dag.in_degree(n) for n in dag}
    ready = [n for n, d in waiting.items() if d == 0]
    while ready:
        ready.sort(key=lambda n: -rank[n])
        node = ready.pop(0)
        moved = [i for i in dag.predecessors(node) if engine[i] != engine[node]]
        moved_bytes = sum(i.type.nbytes for i in moved)
        fits = moved_bytes <= memory.sram_bytes
        transfer = 2 * moved_bytes / (sram_bytes_per_s if fits else memory.dram_bytes_per_s)
        operands_ready = max((slots[i].finish for i in dag.predecessors(node)), default=0.0)
        start = max(operands_ready + transfer, free.get(engine[node], 0.0))
        slots[node] = Slot(start, start + seconds[node], transfer, moved_bytes)
        free[engine[node]] = start + seconds[node]
        for succ in dag.successors(node):
            waiting[succ] -= 1
            if waiting[succ] == 0:
                ready.append(succ)
    return slots
