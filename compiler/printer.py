"""The one canonical text form of a graph: MLIR-like, deterministic, one op per line.

    graph @tiny(%x: tensor<1x3x8x8xf32>) -> (tensor<1x4x8x8xf32>) {
      %0 = const {digest = "3f2a9c1e07b2", encoding = "dense"} : tensor<4x3x3x3xf32>  loc("w")
      %1 = relu(%x) : tensor<1x3x8x8xf32>  loc("act")
      return %1
    }

Types carry quantization parameters inline: `tensor<1x8xi8, q<0.05:-3>>` (scale:zero point) or
`tensor<8x4xi8, q<axis=0, [0.1, 0.2, ...], [0, 0, ...]>>`. Floats print with repr, so they read
back exactly. Constants print as a digest unless `constants=True` inlines their data.
`compiler/parser.py` reads this form back.

A graph with state (kept across calls) reads it with `state` leaves and names, before `return`,
the value each state keeps for the next call:

      %2 = state {name = "attn.map"} : tensor<1x4x16x16xf32>
      ...
      state "attn.map" = %9
      return %11

What a pass learned and a later pass needs travels in `Graph.meta` and is part of the IR: it
prints as `meta` statements after the header, one per key (sorted), values in the attribute
syntax plus dicts `{key = value, ...}`; a dict too long for one line puts one entry per line:

    meta activation_ranges = {
      "fc1/linear" = [-2.5, 3.125],
      "act/relu" = [0.0, 4.0]
    }
    meta mobilequant = {groups = 1, lr = 0.001, rel_error = 0.0421, steps = 30}

The keys that are part of the IR: "output_structure" (set by capture when the model returns a
dict: its keys and nesting with output indices as leaves, `{logits = 0, hidden = 1}`, which
`cm.run` returns its outputs in), "activation_ranges" (mobilequant's learned clipping ranges,
{value key: (min, max)} by `passes.calibration.value_keys`, which quantize uses instead of its
observers) and "mobilequant" (its record, and the mark that keeps a second run from starting
over). Not part of it, and never printed (`TRANSIENT_META`): "float_graph" and "origins", which
quantize keeps so that `cm.compare` can run the float graph beside the integer one; they hold
in-memory graphs and nodes and mean nothing once the graph is written out. Any other key must
be plain data (str, int, float, bool, lists, dicts with str keys) or be listed there: printing
raises TypeError rather than silently dropping what a later pass may need.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from .ir import Graph, Node, QuantParams, TensorType


def format_type(t: TensorType) -> str:
    dims = "".join(f"{d}x" for d in t.shape)
    return f"tensor<{dims}{t.dtype.value}{', ' + format_quant(t.quant) if t.quant else ''}>"


def format_quant(q: QuantParams) -> str:
    scales = [str(np.float32(s)) for s in q.scale]  # float32's shortest round-tripping form
    if q.axis is None:
        return f"q<{scales[0]}:{q.zero_point[0]}>"
    return f"q<axis={q.axis}, [{', '.join(scales)}], {format_value(q.zero_point)}>"


def format_value(value: Any) -> str:
    if isinstance(value, np.generic):  # e.g. a float64 statistic: print it as the Python value
        value = value.item()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    if isinstance(value, np.ndarray):
        return format_value(value.reshape(-1).tolist())
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) for k in value):
            raise TypeError(f"dict keys must be str, got {[type(k).__name__ for k in value]}")
        return "{" + ", ".join(f"{format_key(k)} = {format_value(v)}"
                               for k, v in value.items()) + "}"
    raise TypeError(f"cannot print attribute value {value!r}")


LEAVES = ("const", "input", "state")

# Graph.meta keys that are in-memory links for cm.compare, not part of the IR (module docstring).
TRANSIENT_META = frozenset({"float_graph", "origins"})
META_WIDTH = 100  # a meta statement longer than this prints one dict entry per line

_IDENT = re.compile(r"[A-Za-z_]\w*")
_KEYWORDS = {"true", "false", "inf", "nan"}


def format_key(key: str) -> str:
    """A dict or meta key: bare when it is a name, else a string literal."""
    return key if _IDENT.fullmatch(key) and key not in _KEYWORDS else json.dumps(key)


def format_meta(key: str, value: Any) -> list[str]:
    """The `meta key = value` statement(s) of one Graph.meta entry (without indentation)."""
    try:
        text = format_value(value)
    except TypeError as e:
        raise TypeError(f"graph meta {key!r} cannot be printed ({e}): make it plain data (str, "
                        "int, float, bool, lists, dicts with str keys) or, if it is not part "
                        "of the IR, add it to npuc.printer.TRANSIENT_META") from None
    head = f"meta {format_key(key)} = "
    if len(head) + len(text) <= META_WIDTH or not isinstance(value, Mapping) or not value:
        return [head + text]
    entries = [f"  {format_key(k)} = {format_value(v)}" for k, v in value.items()]
    return [head + "{", *[e + "," for e in entries[:-1]], entries[-1], "}"]


def _names(graph: Graph) -> dict[Node, str]:
    names: dict[Node, str] = {}
    used: set[str] = set()
    for node in graph.inputs:
        name = node.attrs["name"]
        while name in used or name.isdigit():
            name += "_"
        used.add(name)
        names[node] = "%" + name
    counter = 0
    for node in graph.nodes:
        if node not in names:
            names[node] = f"%{counter}"
            counter += 1
    return names


# Constants this small print their data even in summarised dumps: scalars and tiny vectors are
# easier to read than a digest.
INLINE_ELEMENTS = 4


def format_node(node: Node, names: dict[Node, str], *, constants: bool = False,
                locs: bool = True) -> str:
    inline = constants or node.type.size <= INLINE_ELEMENTS
    shown = {k: v for k, v in node.attrs.items() if k != "data" or (inline and v is not None)}
    attrs = ", ".join(f"{k} = {format_value(v)}" for k, v in shown.items())
    args = f"({', '.join(names[i] for i in node.inputs)})" if node.op not in LEAVES else ""
    text = f"{names[node]} = {node.op}{args}"
    if attrs:
        text += f" {{{attrs}}}"
    text += f" : {format_type(node.type)}"
    if locs and node.loc:
        text += f"  loc({json.dumps(node.loc)})"
    return text


def print_graph(graph: Graph, *, constants: bool = False, locs: bool = True) -> str:
    """The canonical text of `graph`; `constants` inlines weight data, `locs=False` drops module
    paths (for golden files that should not churn on renames)."""
    names = _names(graph)
    ins = ", ".join(f"{names[n]}: {format_type(n.type)}" for n in graph.inputs)
    outs = ", ".join(format_type(n.type) for n in graph.outputs)
    lines = [f"graph @{graph.name}({ins}) -> ({outs}) {{"]
    for key in sorted(k for k in graph.meta if k not in TRANSIENT_META):
        lines.extend("  " + line for line in format_meta(key, graph.meta[key]))
    for node in graph.nodes:
        if node.op != "input":
            lines.append("  " + format_node(node, names, constants=constants, locs=locs))
    for slot in graph.state:
        lines.append(f"  state {json.dumps(slot.name)} = {names[slot.write]}")
    lines.append("  return " + ", ".join(names[o] for o in graph.outputs))
    lines.append("}")
    return "\n".join(lines) + "\n"
