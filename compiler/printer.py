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
"""

from __future__ import annotations

import json
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
    raise TypeError(f"cannot print attribute value {value!r}")


LEAVES = ("const", "input")


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
    for node in graph.nodes:
        if node.op != "input":
            lines.append("  " + format_node(node, names, constants=constants, locs=locs))
    lines.append("  return " + ", ".join(names[o] for o in graph.outputs))
    lines.append("}")
    return "\n".join(lines) + "\n"
