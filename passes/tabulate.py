"""tabulate: values computed from a small integer input alone become rows of a constant table.

Before: %f = mul(cast(%t), %freqs); %e = concat(sin(%f), cos(%f)); %h = silu(linear(%e, ...))
        %y = add(%x_features, %h)                          (%t: the timestep, 0 <= t < 1000)
After:  %h = reshape(gather(%table, %t))                   %table[v] = %h at t = v

A diffusion model's timestep embedding (sinusoids of the timestep, then an MLP, then each
block's adaptive-norm modulation) depends on the timestep alone: evaluated once for each of its
values, it is exact and costs a row read per call instead of transcendentals on a quantized
timestep (which an integer-only graph cannot get right: t = 10 and t = 12 share an int8 code).

Options: `inputs` ({input name: number of values n}: the input holds 0 .. n-1, each call; a
value outside is an error at run time, in the interpreter and the C, as any gather index),
`max_bytes` (the most the tables may add; where a value's table would pass it, the values it is
computed from are tabulated instead, down to the sinusoids). Requires: each named input an
integer tensor of one element. Ensures: the same outputs for every value of the inputs (the
tables hold exactly what the graph computed); every value whose inputs are only tabulated
inputs and constants, and that something else reads, is now read from a table (or its inputs
are, when it would not fit); a second run changes nothing.
"""

from __future__ import annotations

import numpy as np

from npuc.interpreter import interpret
from npuc.ir import Graph, Node, const
from npuc.ops import make
from npuc.ops.state import STEP_DTYPES
from npuc.pipeline import PassContext, plural, register_pass
from npuc.rewrite import rewrite


@register_pass("tabulate")
def tabulate(graph: Graph, ctx: PassContext, *, inputs: dict[str, int] | None = None,
             max_bytes: int = 8 << 20) -> Graph:
    """Replace what a small integer input alone determines by a constant table lookup."""
    if not inputs:
        return graph
    by_name = {n.attrs["name"]: n for n in graph.inputs}
    tables: dict[Node, Node] = {}
    budget = max_bytes
    for name, count in inputs.items():
        source = by_name.get(name)
        if source is None:
            raise ValueError(f"tabulate: no input {name!r}; the inputs: {sorted(by_name)}")
        if source.dtype not in STEP_DTYPES or source.type.size != 1 or count < 1:
            raise ValueError(f"tabulate: input {name!r} must be one int32/int64 element with a "
                             f"count >= 1, got {source.shape} {source.dtype}, {count}")
        alone = _determined(graph, source)
        cut: list[Node] = []
        for node in graph.nodes:
            if node in alone and node is not source and not node.is_const and (
                    node in graph.roots or any(u not in alone for u in graph.users[node])):
                budget = _cut(node, count, alone, source, budget, cut)
        for node, table in _tables(graph, source, cut, count).items():
            tables[node] = table
    if not tables:
        return graph
    added = sum(t.inputs[0].inputs[0].stored_nbytes for t in tables.values())
    result = rewrite(graph, lambda node, original: tables.get(original), origin=True)
    ctx.note(f"tabulate: {plural(len(tables), 'value')} read from tables ({added:,} B) instead "
             f"of computed from {', '.join(inputs)}")
    return result


def _determined(graph: Graph, source: Node) -> set[Node]:
    """The nodes computed from `source` and constants alone (and `source`, the constants)."""
    alone: set[Node] = set()
    for node in graph.nodes:
        if node is source or node.is_const or (
                node.inputs and all(i in alone for i in node.inputs)):
            alone.add(node)
    return alone


def _cut(node: Node, count: int, alone: set[Node], source: Node, budget: int,
         cut: list[Node]) -> int:
    """Tabulate `node` if its table fits in `budget`, else the values it is computed from."""
    if node is source or node.is_const or node in cut:
        return budget
    size = count * node.type.nbytes
    if size <= budget or node.op in ("sin", "cos"):
        cut.append(node)
        return budget - size
    for i in node.inputs:
        if i in alone:
            budget = _cut(i, count, alone, source, budget, cut)
    return budget


def _tables(graph: Graph, source: Node, cut: list[Node], count: int) -> dict[Node, Node]:
    """For each cut node, gather(table, source) reshaped to its shape."""
    if not cut:
        return {}
    probe = Graph((source,), tuple(cut), "tabulate")
    rows = [interpret(probe, np.full(source.shape, v, source.dtype.numpy)) for v in range(count)]
    out = {}
    for k, node in enumerate(cut):
        table = const(np.stack([r[k] for r in rows]), loc=node.loc)
        index = make("reshape", [source], {"shape": ()})
        row = make("gather", [table, index], {"axis": 0}, loc=node.loc)
        out[node] = make("reshape", [row], {"shape": node.shape}, loc=node.loc)
    return out
