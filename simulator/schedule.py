"""Placement and list scheduling of ops over a target's engines: HEFT (Topcuoglu, Hariri and Wu,
"Performance-effective and low-complexity task scheduling for heterogeneous computing", IEEE TPDS
2002), the schedule-aware mapping that MobiSR-style heterogeneous execution needs.

Each engine runs one op at a time; an op starts once its operands are ready and its engine is
free. An operand made on another engine is first written to and read back from the shared
on-chip SRAM (2 * bytes / SRAM bandwidth), or DRAM when it does not fit.

Priority: ready ops are taken by upward rank, the longest remaining path to an output where each
op counts its *fastest* supported cost (an optimistic critical path; HEFT's original takes the
mean over engines, which on an NPU + CPU target lets the CPU's 10-50x slower GEMMs dominate every
rank). Transfers are left out of the rank: they depend on the placement being decided.

Placement: each op goes to the engine, among those that support it (the caller only offers
those), that gives it the earliest finish time given when each engine becomes free and the
transfers its operands would need there; ties go to the engine listed first (the NPU). Non-
insertion: an op never fills an idle gap before an engine's last scheduled op. A view (no cost
anywhere) occupies no engine and so stays with its operands. A `state` read is a DMA from DRAM
into the shared SRAM: it takes its time but no engine, and its value (and a view of nothing
else) belongs to no engine: any engine reads it without a move. With one engine
per op (`list_schedule`) this is the plain list schedule. networkx holds the DAG.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import networkx as nx

from npuc.ir import Graph, Node


class Option(NamedTuple):
    """When an op could run on one engine: operands there (transfers included), start, finish."""

    ready: float
    start: float
    finish: float


@dataclass(frozen=True)
class Slot:
    start: float
    finish: float
    transfer_s: float  # time spent moving operands from other engines
    transfer_bytes: int
    engine: str
    options: Mapping[str, Option]  # every engine it could have run on, as it was placed


def heft(graph: Graph, costs: Mapping[Node, Mapping[str, float]], memory,  # noqa: ANN001
         sram_bytes_per_s: float) -> dict[Node, Slot]:
    """Place and schedule the ops of `costs` (op -> seconds on each engine that supports it,
    engines in preference order): the engine and start and finish time of every op."""
    dag = nx.DiGraph()
    for node in costs:
        dag.add_node(node)
        for i in node.inputs:
            if i in costs:
                dag.add_edge(i, node)
    rank: dict[Node, float] = {}
    for node in reversed(list(nx.topological_sort(dag))):
        rank[node] = (min(costs[node].values())
                      + max((rank[s] for s in dag.successors(node)), default=0.0))
    index = {n: k for k, n in enumerate(costs)}  # graph order breaks rank ties
    free: dict[str, float] = {}
    slots: dict[Node, Slot] = {}
    shared: set[Node] = set()  # values in the shared SRAM that belong to no engine
    waiting = {n: dag.in_degree(n) for n in dag}
    ready = [(-rank[n], index[n], n) for n, d in waiting.items() if d == 0]
    heapq.heapify(ready)
    while ready:
        node = heapq.heappop(ready)[2]
        preds = list(dag.predecessors(node))
        slots[node] = _place(node, preds, costs[node], slots, free, memory, sram_bytes_per_s,
                             shared)
        if node.op == "state" or (preds and not any(costs[node].values())
                                  and all(p in shared for p in preds)):
            shared.add(node)
        engine = slots[node].engine
        free[engine] = max(free.get(engine, 0.0), slots[node].finish)
        for succ in dag.successors(node):
            waiting[succ] -= 1
            if waiting[succ] == 0:
                heapq.heappush(ready, (-rank[succ], index[succ], succ))
    return slots


def _place(node: Node, preds: list[Node], seconds: Mapping[str, float],
           slots: Mapping[Node, Slot], free: Mapping[str, float], memory,  # noqa: ANN001
           sram_bytes_per_s: float, shared: set[Node]) -> Slot:
    """The earliest-finishing slot for `node` over the engines of `seconds`. An op that costs
    nothing anywhere (a view) occupies no engine: it is done once its operands are there, so
    it lands where they already are and never moves bytes; one in `shared` (a state read, a
    view of only such values) is in the shared SRAM, read in place by every engine."""
    view = not any(seconds.values()) or node.op == "state"
    options: dict[str, Option] = {}
    moves: dict[str, tuple[float, int]] = {}
    for engine, cost in seconds.items():
        moved = sum(i.type.nbytes for i in preds
                    if slots[i].engine != engine and i not in shared)
        fits = moved <= memory.sram_bytes
        transfer = 2 * moved / (sram_bytes_per_s if fits else memory.dram_bytes_per_s)
        operands = max((slots[i].finish for i in preds), default=0.0) + transfer
        start = operands if view else max(operands, free.get(engine, 0.0))
        options[engine] = Option(operands, start, start + cost)
        moves[engine] = (transfer, moved)
    best = min(options, key=lambda e: options[e].finish)  # first listed wins ties
    chosen = options[best]
    return Slot(chosen.start, chosen.finish, *moves[best], best, options)


def list_schedule(graph: Graph, engine: Mapping[Node, str], seconds: Mapping[Node, float],
                  memory, sram_bytes_per_s: float) -> dict[Node, Slot]:  # noqa: ANN001
    """Start and finish time of every op in `engine` (a fixed placement) and `seconds` (its
    cost): `heft` with one engine offered per op."""
    return heft(graph, {n: {engine[n]: seconds[n]} for n in engine}, memory, sram_bytes_per_s)
