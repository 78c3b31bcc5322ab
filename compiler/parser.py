"""Read the text form of `compiler/printer.py` back into a Graph.

`parse(print_graph(g))` prints identically to `g`. Constants printed as digests come back without
data unless `weights` maps their digest to an array; inlined constants come back whole. Each op
line is rebuilt through the op table, and its declared type must equal the inferred one, so a
hand-edited dump is checked as it is read.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from .ir import DType, Graph, Node, QuantParams, TensorType, digest, graph_input
from .ops import OPS, make

_TYPE = r"tensor<[^<>]*(?:<[^<>]*>)?>"
_HEADER = re.compile(r"^graph @([\w.\-]+)\((.*)\) -> \((.*)\) \{$")
_ARG = re.compile(rf"%([\w.\-]+): ({_TYPE})")
_OP = re.compile(
    rf"^\s*%([\w.\-]+) = (\w+)(?:\(([^()]*)\))?(?: \{{(.*)\}})? : ({_TYPE})(?:\s+loc\((\".*\")\))?$"
)
_RETURN = re.compile(r"^\s*return (.*)$")
_TOKEN = re.compile(
    r'\s*("(?:[^"\\]|\\.)*"|-?inf|nan|true|false|[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?'
    r"|[A-Za-z_]\w*|[\[\],=:<>])"
)


class ParseError(ValueError):
    """Text that is not a well-formed graph; the message gives the line."""


def _tokens(text: str) -> list[str]:
    out, pos = [], 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise ParseError(f"unexpected text {text[pos:pos + 20]!r}")
        out.append(m.group(1))
        pos = m.end()
    return out


def _value(tokens: list[str], i: int) -> tuple[Any, int]:
    tok = tokens[i]
    if tok == "[":
        items: list[Any] = []
        i += 1
        while tokens[i] != "]":
            item, i = _value(tokens, i)
            items.append(item)
            if tokens[i] == ",":
                i += 1
        return tuple(items), i + 1
    if tok.startswith('"'):
        return json.loads(tok), i + 1
    if tok in ("true", "false"):
        return tok == "true", i + 1
    if tok in ("inf", "-inf", "nan") or any(c in tok for c in ".eE"):
        return float(tok), i + 1
    if tok.lstrip("+-").isdigit():
        return int(tok), i + 1
    raise ParseError(f"bad value {tok!r}")


def parse_attrs(text: str) -> dict[str, Any]:
    tokens, attrs, i = _tokens(text), {}, 0
    while i < len(tokens):
        key = tokens[i]
        if i + 1 >= len(tokens) or tokens[i + 1] != "=":
            raise ParseError(f"expected 'name = value' at {key!r}")
        attrs[key], i = _value(tokens, i + 2)
        if i < len(tokens):
            if tokens[i] != ",":
                raise ParseError(f"expected ',' after attribute {key}")
            i += 1
    return attrs


def parse_type(text: str) -> TensorType:
    m = re.fullmatch(r"tensor<([^,<>]*)(?:, q<(.*)>)?>", text)
    if m is None:
        raise ParseError(f"bad type {text!r}")
    *dims, dtype = m.group(1).split("x")
    try:
        type_ = TensorType(tuple(int(d) for d in dims), DType(dtype))
    except ValueError as e:
        raise ParseError(f"bad type {text!r}: {e}") from None
    quant = m.group(2)
    if quant is None:
        return type_
    if quant.startswith("axis="):
        attrs = _tokens(quant)  # axis = N , [..] , [..]
        axis, i = _value(attrs, 2)
        scales, i = _value(attrs, i + 1)
        zps, _ = _value(attrs, i + 1)
        q = QuantParams(tuple(float(s) for s in scales), tuple(zps), axis)
    else:
        scale, zp = quant.rsplit(":", 1)
        q = QuantParams((float(scale),), (int(zp),))
    return TensorType(type_.shape, type_.dtype, q)


def _const(attrs: dict[str, Any], type_: TensorType, weights: Mapping[str, np.ndarray] | None,
           loc: str | None) -> Node:
    data = attrs.pop("data", None)
    encoded = attrs.get("encoding", "dense") != "dense"  # a compressed payload: uint8 bytes
    if data is not None:
        data = (np.array(data, dtype=np.uint8) if encoded
                else np.array(data, dtype=type_.dtype.numpy).reshape(type_.shape))
        if digest(data) != attrs.get("digest"):
            raise ParseError(f"inlined constant does not match its digest {attrs.get('digest')}")
    elif weights is not None and attrs.get("digest") in weights:
        data = np.asarray(weights[attrs["digest"]],
                          dtype=np.uint8 if encoded else type_.dtype.numpy)
    if data is not None:
        attrs["data"] = data
    return Node("const", (), OPS["const"].check_attrs(attrs), type_, loc)


def parse(text: str, weights: Mapping[str, np.ndarray] | None = None) -> Graph:
    """Parse the canonical text of a graph (see `compiler/printer.py`)."""
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("//")]
    if not lines:
        raise ParseError("empty text")
    header = _HEADER.match(lines[0].strip())
    if header is None:
        raise ParseError(f"line 1: expected 'graph @name(...) -> (...) {{', got {lines[0]!r}")
    values: dict[str, Node] = {}
    inputs = []
    for name, type_text in _ARG.findall(header.group(2)):
        node = graph_input(name, parse_type(type_text))
        values[name] = node
        inputs.append(node)
    outputs: tuple[Node, ...] | None = None
    for lineno, line in enumerate(lines[1:], start=2):
        if line.strip() == "}":
            break
        try:
            ret = _RETURN.match(line)
            if ret:
                outputs = tuple(_lookup(values, v) for v in ret.group(1).split(","))
                continue
            m = _OP.match(line)
            if m is None:
                raise ParseError("expected '%name = op(args) {attrs} : type  loc(...)'")
            name, op, args, attrs_text, type_text, loc_text = m.groups()
            type_ = parse_type(type_text)
            attrs = parse_attrs(attrs_text) if attrs_text else {}
            loc = json.loads(loc_text) if loc_text else None
            if op == "const":
                node = _const(attrs, type_, weights, loc)
            else:
                operands = [_lookup(values, a) for a in (args or "").split(",") if a.strip()]
                node = _checked(make(op, operands, attrs, loc, type_.quant), type_)
            values[name] = node
        except (ParseError, TypeError, KeyError, ValueError) as e:
            raise ParseError(f"line {lineno}: {e}\n  {line.strip()}") from None
    if outputs is None:
        raise ParseError("no 'return' line")
    return Graph(tuple(inputs), outputs, header.group(1))


def _lookup(values: dict[str, Node], ref: str) -> Node:
    ref = ref.strip()
    if not ref.startswith("%") or ref[1:] not in values:
        raise ParseError(f"use of undefined value {ref}")
    return values[ref[1:]]


def _checked(node: Node, declared: TensorType) -> Node:
    if (node.type.shape, node.type.dtype) != (declared.shape, declared.dtype):
        raise ParseError(f"declared type {declared.shape} {declared.dtype} but {node.op} gives "
                         f"{node.type.shape} {node.type.dtype}")
    return Node(node.op, node.inputs, node.attrs, declared, node.loc)


__all__ = ["parse", "parse_type", "parse_attrs", "ParseError"]
