"""Where does a quantized graph lose accuracy? Run the float graph and the integer graph on the same
inputs and measure, value by value, the dequantized integer result against the float one.

    report = cm.compare(x)     # or compare(float_graph, integer_graph, origins, x)
    print(report)              # worst SQNR first: op, module path, SQNR (dB), relative error

Errors are cumulative (each value carries the error of everything before it), so the first rows
of a report sorted by position show where the error is *born*: `report.rows` is in graph order,
`str(report)` lists the worst values and, for each, how much worse it is than its operands.

Where the float reference itself is not finite (NaN or Inf inputs, an overflow in float), there
is nothing to measure against: that value's SQNR and relative error are NaN, its row counts the
non-finite reference values, the worst list starts with it and the summary says so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .interpreter import interpret
from .ir import Graph, Node
from .quant import arith


@dataclass(frozen=True)
class Row:
    index: int  # position of the integer value in the lowered graph
    op: str  # the float op it computes
    loc: str
    dtype: str
    sqnr_db: float  # 10 log10(|f|^2 / |q - f|^2); inf when exact
    rel_error: float  # |q - f| / |f|
    lost_db: float  # SQNR lost at this op: its worst operand's SQNR minus its own
    nonfinite: int = 0  # float reference values that are NaN/Inf (then sqnr_db, rel_error: NaN)


@dataclass(frozen=True)
class Comparison:
    rows: tuple[Row, ...]

    def worst(self, n: int = 10) -> list[Row]:
        """Lowest SQNR first; values whose float reference is not finite come before all."""
        return sorted(self.rows, key=lambda r: (not r.nonfinite, r.sqnr_db))[:n]

    def born(self, n: int = 10) -> list[Row]:
        """The values where the most accuracy is lost by the op itself (NaN losses last)."""
        return sorted(self.rows, key=lambda r: (math.isnan(r.lost_db), -r.lost_db))[:n]

    def __str__(self) -> str:
        def table(title: str, rows: list[Row]) -> list[str]:
            lines = [title, f"  {'#':>4}  {'op':<14} {'dtype':<5} {'SQNR dB':>8} {'rel err':>8} "
                            f"{'lost dB':>8}  module"]
            for r in rows:
                note = f"  (float reference: {r.nonfinite} NaN/Inf)" if r.nonfinite else ""
                lines.append(f"  {r.index:>4}  {r.op:<14} {r.dtype:<5} {r.sqnr_db:8.1f} "
                             f"{r.rel_error:8.4f} {r.lost_db:8.1f}  {r.loc or '<top level>'}"
                             f"{note}")
            return lines

        out = self.rows[-1] if self.rows else None
        head = [f"{len(self.rows)} values compared"]
        if out is not None and out.nonfinite:
            head[0] += (f"; the output's float reference is not finite ({out.nonfinite} NaN/Inf "
                        "values): its SQNR and relative error are undefined (nan)")
        elif out is not None:
            head[0] += (f"; the output's SQNR is {out.sqnr_db:.1f} dB, relative error "
                        f"{out.rel_error:.4f}")
        bad = [r for r in self.rows if r.nonfinite]
        if bad:
            first = bad[0]
            head.append(f"the float reference is not finite at {len(bad)} of {len(self.rows)} "
                        f"values, first at #{first.index} {first.op} "
                        f"({first.loc or '<top level>'}): check the inputs for NaN/Inf")
        return "\n".join(head + table("worst values (cumulative error):", self.worst())
                         + table("largest loss at the op itself:", self.born()))


def _sqnr(f: np.ndarray, q: np.ndarray) -> tuple[float, float, int]:
    """(SQNR dB, relative error, non-finite reference values); NaN, NaN when there are any:
    dropping them would call a graph exact that was never compared."""
    nonfinite = int(f.size - np.count_nonzero(np.isfinite(f)))
    if nonfinite:
        return math.nan, math.nan, nonfinite
    f, q = f.astype(np.float64), q.astype(np.float64)
    signal, noise = float(np.sum(f * f)), float(np.sum((q - f) ** 2))
    if noise == 0:
        return math.inf, 0.0, 0
    return (10 * math.log10(max(signal, 1e-300) / noise),
            math.sqrt(noise / max(signal, 1e-300)), 0)


def compare(float_graph: Graph, integer_graph: Graph, origins: Mapping[Node, Node],
            inputs: Sequence[object]) -> Comparison:
    """Per-value SQNR of `integer_graph` against `float_graph` (see the module docstring)."""
    wanted = set(origins.values())
    reference: dict[Node, np.ndarray] = {}

    def keep(node: Node, value: np.ndarray) -> None:
        if node in wanted:
            reference[node] = value

    for node, value in zip(float_graph.inputs, inputs, strict=True):
        keep(node, np.asarray(value.detach().numpy() if hasattr(value, "detach") else value))
    interpret(float_graph, *inputs, observe=keep)
    position = {n: i for i, n in enumerate(integer_graph.nodes)}
    sqnr: dict[Node, float] = {}
    rows: list[Row] = []

    def measure(node: Node, value: np.ndarray) -> None:
        source = origins.get(node)
        if source is None or node.type.quant is None or source not in reference:
            known = [sqnr[i] for i in node.inputs if i in sqnr]  # a rescale or move: pass it on
            if known:
                sqnr[node] = min(known)
            return
        q = arith.dequantize(value, node.type.quant.scale[0], node.type.quant.zero_point[0])
        db, rel, nonfinite = _sqnr(reference[source], q)
        sqnr[node] = db
        before = [sqnr[i] for i in node.inputs if i in sqnr]
        lost = max(0.0, min(min(before), 200.0) - min(db, 200.0)) if before else 0.0
        rows.append(Row(position[node], source.op, node.loc or "", str(node.dtype), db, rel, lost,
                        nonfinite))

    interpret(integer_graph, *inputs, observe=measure)
    return Comparison(tuple(rows))
