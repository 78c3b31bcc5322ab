"""Read the text form of `compiler/printer.py` back into a Graph.

`parse(print_graph(g))` prints identically to `g`. Constants printed as digests come back without
data unless `weights` maps their digest to an array; inlined constants come back whole. Each op
line is rebuilt through the op table, and its declared type must equal the inferred one, so a
hand-edited dump is checked as it is read: SSA names are defined once, the header's result types
are the returned values' types, inline data fits its dtype, and the graph that comes back
verifies. Anything else is a ParseError naming the line; no other exception escapes (a fuzzer
over mutated dumps in tests/test_parser_fuzz.py holds the parser to that).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from .ir import (
    DType,
    Graph,
    GraphError,
    Node,
    QuantParams,
    StateSlot,
    TensorType,
    digest,
    graph_input,
    state_read,
)
from .ops import OPS, make

_NAME = r"[\w.\-]+"
_TYPE = r"tensor<[^<>]*(?:<[^<>]*>)?>"
_HEADER = re.compile(rf"^graph @({_NAME})\((.*)\) -> \((.*)\) \{{$")
_ARG = re.compile(rf"%({_NAME}): ({_TYPE})")
_OP = re.compile(
    rf"^%({_NAME}) = (\w+)(?:\(([^()]*)\))?(?: \{{(.*)\}})? : ({_TYPE})(?:\s+loc\((\".*\")\))?$"
)
_META = re.compile(r"^meta\s+(.*)$", re.DOTALL)
_RETURN = re.compile(r"^return (.*)$")
_STRING = r'"(?:[^"\\]|\\.)*"'
_STATE = re.compile(rf"^state ({_STRING}) = (%\S+)$")
_NUMBER = r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?"
_TOKEN = re.compile(rf"\s*({_STRING}|-?inf|nan|{_NUMBER}|[A-Za-z_]\w*|[\[\]{{}},=:<>])")
_INT = re.compile(r"[-+]?\d+")
_IDENT = re.compile(r"[A-Za-z_]\w*")
_DTYPES = {d.value for d in DType}

# Nesting deeper than this is not a dump npuc printed (attribute lists are flat, meta two deep);
# the limit keeps a hostile text from exhausting the recursion of `_value`.
MAX_DEPTH = 16


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


def _at(tokens: list[str], i: int, wanted: str) -> str:
    """tokens[i], or a ParseError saying what was expected where the text ends."""
    if i >= len(tokens):
        raise ParseError(f"text ends where {wanted} was expected")
    return tokens[i]


def _value(tokens: list[str], i: int, depth: int = 0) -> tuple[Any, int]:
    """One value at tokens[i]: a number, string, bool, [list] or {dict}; returns (value, next)."""
    if depth > MAX_DEPTH:
        raise ParseError(f"values nested deeper than {MAX_DEPTH}")
    tok = _at(tokens, i, "a value")
    if tok in ("[", "{"):
        close = "]" if tok == "[" else "}"
        items: list[Any] = []
        entries: dict[str, Any] = {}
        i += 1
        while _at(tokens, i, f"a value or '{close}'") != close:
            if tok == "{":
                key = _key(tokens, i)
                if _at(tokens, i + 1, "'='") != "=":
                    raise ParseError(f"expected '=' after {key!r} in a dict")
                if key in entries:
                    raise ParseError(f"key {key!r} repeats in a dict")
                entries[key], i = _value(tokens, i + 2, depth + 1)
            else:
                item, i = _value(tokens, i, depth + 1)
                items.append(item)
            sep = _at(tokens, i, f"',' or '{close}'")
            if sep == ",":
                i += 1
            elif sep != close:
                raise ParseError(f"expected ',' or '{close}', got {sep!r}")
        return (entries if tok == "{" else tuple(items)), i + 1
    if tok.startswith('"'):
        return _string(tok), i + 1
    if tok in ("true", "false"):
        return tok == "true", i + 1
    if _INT.fullmatch(tok):
        return int(tok), i + 1
    if tok in ("inf", "-inf", "nan") or re.fullmatch(_NUMBER, tok):
        return float(tok), i + 1
    raise ParseError(f"bad value {tok!r}")


def _string(tok: str) -> str:
    try:
        return json.loads(tok)
    except ValueError as e:  # e.g. an unknown escape
        raise ParseError(f"bad string {tok}: {e}") from None


def _key(tokens: list[str], i: int) -> str:
    tok = tokens[i]
    if tok.startswith('"'):
        return _string(tok)
    if _IDENT.fullmatch(tok):
        return tok
    raise ParseError(f"expected a name or string as a dict key, got {tok!r}")


def parse_attrs(text: str) -> dict[str, Any]:
    """`a = 1, b = [2, 3], c = "s"` -> {"a": 1, "b": (2, 3), "c": "s"}."""
    tokens, attrs, i = _tokens(text), {}, 0
    while i < len(tokens):
        key = tokens[i]
        if not _IDENT.fullmatch(key) or i + 1 >= len(tokens) or tokens[i + 1] != "=":
            raise ParseError(f"expected 'name = value' at {key!r}")
        if key in attrs:
            raise ParseError(f"attribute {key} given twice")
        attrs[key], i = _value(tokens, i + 2)
        if i < len(tokens):
            if tokens[i] != ",":
                raise ParseError(f"expected ',' after attribute {key}")
            i += 1
            if i == len(tokens):
                raise ParseError(f"text ends after ',' following attribute {key}")
    return attrs


def parse_type(text: str) -> TensorType:
    """`tensor<2x3xi8, q<0.05:-3>>` -> TensorType; ParseError for anything malformed."""
    m = re.fullmatch(r"tensor<([^,<>]*)(?:, q<(.*)>)?>", text)
    if m is None:
        raise ParseError(f"bad type {text!r}")
    *dims, dtype = m.group(1).split("x")
    if not all(d.isdecimal() and d.isascii() for d in dims) or dtype not in _DTYPES:
        raise ParseError(f"bad type {text!r}: expected tensor<DxDx...xDTYPE> with dimensions "
                         f"as non-negative integers and a dtype among "
                         f"{', '.join(d.value for d in DType)}")
    quant = None if m.group(2) is None else _quant(m.group(2), text)
    if quant is not None and DType(dtype).is_float:
        raise ParseError(f"bad type {text!r}: a {dtype} value has quantization parameters (only "
                         "integer values do)")
    try:
        return TensorType(tuple(int(d) for d in dims), DType(dtype), quant)
    except ValueError as e:
        raise ParseError(f"bad type {text!r}: {e}") from None


def _quant(text: str, where: str) -> QuantParams:
    """`scale:zp` or `axis=N, [scales], [zero points]`."""
    try:
        if text.startswith("axis"):
            tokens = _tokens(text)
            if tokens[:2] != ["axis", "="]:
                raise ParseError("expected 'axis = N'")
            axis, i = _value(tokens, 2)
            if _at(tokens, i, "','") != ",":
                raise ParseError("expected ',' after the axis")
            scales, i = _value(tokens, i + 1)
            if _at(tokens, i, "','") != ",":
                raise ParseError("expected ',' after the scales")
            zps, i = _value(tokens, i + 1)
            if i != len(tokens):
                raise ParseError(f"unexpected {tokens[i]!r} after the zero points")
            if not (_ints((axis,)) and isinstance(scales, tuple) and isinstance(zps, tuple)
                    and _numbers(scales) and _ints(zps)):
                raise ParseError("expected q<axis=N, [scales], [zero points]>")
            return QuantParams(scales, zps, axis)
        scale, sep, zp = text.rpartition(":")
        if not sep or not _INT.fullmatch(zp.strip()):
            raise ParseError("expected q<scale:zero point>")
        return QuantParams((float(scale),), (int(zp),))
    except ValueError as e:  # QuantParams' own checks and float(); ParseError is one too
        raise ParseError(f"bad quantization parameters in {where!r}: {e}") from None


def _ints(values: tuple) -> bool:
    return all(isinstance(v, int) and not isinstance(v, bool) for v in values)


def _numbers(values: tuple) -> bool:
    return all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)


def _flat(data: Any) -> list[Any]:
    """The elements of a (possibly nested) data list; a scalar is one element."""
    if not isinstance(data, tuple):
        return [data]
    return [x for item in data for x in _flat(item)]


def _const_data(data: Any, type_: TensorType, encoded: bool) -> np.ndarray:
    """An inline data list as the constant's array, checked against its dtype's range (numpy
    would raise OverflowError or wrap silently)."""
    values = _flat(data)
    if encoded:  # a compressed payload: bytes
        if not _ints(tuple(values)) or not all(0 <= v <= 255 for v in values):
            raise ParseError("an encoded constant's data must be bytes (integers 0..255)")
        return np.array(values, dtype=np.uint8)
    dtype = type_.dtype
    if len(values) != type_.size:
        raise ParseError(f"inlined data has {len(values)} elements, {type_.shape} needs "
                         f"{type_.size}")
    if dtype is DType.BOOL:
        if not all(isinstance(v, bool) for v in values):
            raise ParseError("bool data must be true or false")
    elif dtype.is_float:
        if not _numbers(tuple(values)):
            raise ParseError(f"{dtype} data must be numbers")
        big = float(np.finfo(dtype.numpy).max)
        out = [v for v in values if math.isfinite(v) and abs(v) > big]
        if out:
            raise ParseError(f"{out[0]!r} is out of the range of {dtype}")
    else:
        lo, hi = dtype.int_range
        if not _ints(tuple(values)):
            raise ParseError(f"{dtype} data must be integers")
        out = [v for v in values if not lo <= v <= hi]
        if out:
            raise ParseError(f"{out[0]} is out of the range {lo}..{hi} of {dtype}")
    return np.array(values, dtype=dtype.numpy).reshape(type_.shape)


def _const(attrs: dict[str, Any], type_: TensorType, weights: Mapping[str, np.ndarray] | None,
           loc: str | None) -> Node:
    data = attrs.pop("data", None)
    encoded = attrs.get("encoding", "dense") != "dense"
    if data is not None:
        data = _const_data(data, type_, encoded)
        if digest(data) != attrs.get("digest"):
            raise ParseError(f"inlined constant does not match its digest {attrs.get('digest')}")
    elif weights is not None and attrs.get("digest") in weights:
        data = np.asarray(weights[attrs["digest"]],
                          dtype=np.uint8 if encoded else type_.dtype.numpy)
    if data is not None:
        attrs["data"] = data
    return Node("const", (), OPS["const"].check_attrs(attrs), type_, loc)


def _types(text: str, what: str) -> list[tuple[str | None, TensorType]]:
    """The header's `%a: T, %b: U` (args) or `T, U` (results), exactly: nothing left over."""
    out: list[tuple[str | None, TensorType]] = []
    pattern = _ARG if what == "argument" else re.compile(f"({_TYPE})")
    pos = 0
    while pos < len(text):
        if out:
            if not text.startswith(", ", pos):
                raise ParseError(f"expected ', ' between {what}s at {text[pos:pos + 20]!r}")
            pos += 2
        m = pattern.match(text, pos)
        if m is None:
            raise ParseError(f"bad {what} {text[pos:pos + 40]!r}")
        name, type_text = m.groups() if what == "argument" else (None, m.group(1))
        out.append((name, parse_type(type_text)))
        pos = m.end()
    return out


def _statements(text: str) -> list[tuple[int, str]]:
    """(line number, statement) for every non-blank, non-comment line; a `meta` statement whose
    brackets are still open continues on the following lines."""
    out: list[tuple[int, str]] = []
    open_meta: list[Any] | None = None  # [lineno, parts, depth]
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("//"):
            continue
        if open_meta is None and not line.startswith("meta "):
            out.append((lineno, line))
            continue
        try:
            depth = sum({"[": 1, "{": 1, "]": -1, "}": -1}.get(t, 0) for t in _tokens(line))
        except ParseError as e:
            raise ParseError(f"line {lineno}: {e}\n  {line}") from None
        if open_meta is None:
            open_meta = [lineno, [line], 0]
        else:
            open_meta[1].append(line)
        open_meta[2] += depth
        if open_meta[2] <= 0:
            out.append((open_meta[0], " ".join(open_meta[1])))
            open_meta = None
    if open_meta is not None:
        raise ParseError(f"line {open_meta[0]}: the meta statement is never closed")
    return out


class _Reader:
    """The state of one parse: named values, meta, inputs, outputs."""

    def __init__(self, weights: Mapping[str, np.ndarray] | None) -> None:
        self.weights = weights
        self.values: dict[str, Node] = {}
        self.defined_at: dict[str, int] = {}
        self.meta: dict[str, Any] = {}
        self.inputs: list[Node] = []
        self.outputs: tuple[Node, ...] | None = None
        self.state: list[StateSlot] = []

    def define(self, name: str, node: Node, lineno: int) -> None:
        if name in self.values:
            raise ParseError(f"%{name} is defined twice (first on line {self.defined_at[name]})")
        self.values[name] = node
        self.defined_at[name] = lineno

    def lookup(self, ref: str) -> Node:
        ref = ref.strip()
        if not ref.startswith("%") or ref[1:] not in self.values:
            raise ParseError(f"use of undefined value {ref or '(nothing)'}")
        return self.values[ref[1:]]

    def statement(self, line: str, lineno: int) -> None:
        if self.outputs is not None:
            raise ParseError("statement after 'return'")
        ret = _RETURN.match(line)
        if ret:
            self.outputs = tuple(self.lookup(v) for v in ret.group(1).split(","))
            return
        kept = _STATE.match(line)
        if kept:
            self.keep(_string(kept.group(1)), self.lookup(kept.group(2)))
            return
        meta = _META.match(line)
        if meta:
            self.meta_entry(meta.group(1))
            return
        m = _OP.match(line)
        if m is None:
            raise ParseError("expected '%name = op(args) {attrs} : type  loc(...)'")
        name, op, args, attrs_text, type_text, loc_text = m.groups()
        type_ = parse_type(type_text)
        attrs = parse_attrs(attrs_text) if attrs_text else {}
        loc = _string(loc_text) if loc_text else None
        if op == "input":
            raise ParseError("inputs are declared in the graph's header, not as op lines")
        if op == "const":
            if args is not None:
                raise ParseError("a const takes no operands")
            node = _const(attrs, type_, self.weights, loc)
        elif op == "state":
            if args is not None or set(attrs) != {"name"} or not isinstance(attrs["name"], str):
                raise ParseError("a state takes no operands and one attribute, its name")
            node = state_read(attrs["name"], type_, loc)
        else:
            operands = [self.lookup(a) for a in (args or "").split(",") if a.strip()]
            node = _checked(op, operands, attrs, loc, type_)
        self.define(name, node, lineno)

    def keep(self, name: str, write: Node) -> None:
        reads = [n for n in self.values.values() if n.op == "state" and n.attrs["name"] == name]
        if len(reads) != 1:
            raise ParseError(f"state {name!r} is kept but {len(reads)} state nodes read it "
                             "(one must)")
        if any(slot.name == name for slot in self.state):
            raise ParseError(f"state {name!r} is kept twice")
        self.state.append(StateSlot(reads[0], write))

    def meta_entry(self, text: str) -> None:
        tokens = _tokens(text)
        if not tokens:
            raise ParseError("expected 'meta name = value'")
        key = _key(tokens, 0)
        if _at(tokens, 1, "'='") != "=":
            raise ParseError(f"expected 'meta {key} = value'")
        value, i = _value(tokens, 2)
        if i != len(tokens):
            raise ParseError(f"unexpected {tokens[i]!r} after the value of meta {key}")
        if key in self.meta:
            raise ParseError(f"meta {key} given twice")
        _check_meta(key, value)
        self.meta[key] = value


def _check_meta(key: str, value: Any) -> None:
    """The meta entries a later pass reads must have the shape it reads them in."""
    if key != "activation_ranges":
        return
    ranges = value.values() if isinstance(value, dict) else [None]
    if not all(isinstance(r, tuple) and len(r) == 2 and _numbers(r) and r[0] <= r[1]
               for r in ranges):
        raise ParseError('meta activation_ranges must be {"value key" = [min, max], ...} with '
                         "min <= max")


def _checked(op: str, operands: list[Node], attrs: dict[str, Any], loc: str | None,
             declared: TensorType) -> Node:
    try:
        node = make(op, operands, attrs, loc, declared.quant)
    except Exception as e:  # as in verify: failing to type an op is the text's fault
        raise ParseError(f"{type(e).__name__}: {e}") from None
    if (node.type.shape, node.type.dtype) != (declared.shape, declared.dtype):
        raise ParseError(f"declared type {declared.shape} {declared.dtype} but {node.op} gives "
                         f"{node.type.shape} {node.type.dtype}")
    return Node(node.op, node.inputs, node.attrs, declared, node.loc)


def parse(text: str, weights: Mapping[str, np.ndarray] | None = None) -> Graph:
    """Parse the canonical text of a graph (see `compiler/printer.py`); the graph verifies."""
    statements = _statements(text)
    if not statements:
        raise ParseError("empty text")
    first, header_line = statements[0]
    header = _HEADER.match(header_line)
    if header is None:
        raise ParseError(f"line {first}: expected 'graph @name(...) -> (...) {{', got "
                         f"{header_line[:80]!r}")
    reader = _Reader(weights)
    try:
        for name, type_ in _types(header.group(2), "argument"):
            node = graph_input(name, type_)
            reader.define(name, node, first)
            reader.inputs.append(node)
        results = [t for _, t in _types(header.group(3), "result")]
    except ParseError as e:
        raise ParseError(f"line {first}: {e}") from None
    closed = False
    for lineno, line in statements[1:]:
        if closed:
            raise ParseError(f"line {lineno}: text after the graph's closing '}}'")
        if line == "}":
            closed = True
            continue
        try:
            reader.statement(line, lineno)
        except (ParseError, TypeError, KeyError, ValueError) as e:
            raise ParseError(f"line {lineno}: {e}\n  {line[:200]}") from None
    if reader.outputs is None:
        raise ParseError("no 'return' line")
    if not closed:
        raise ParseError("the graph's closing '}' is missing")
    returned = [o.type for o in reader.outputs]
    if returned != results:
        raise ParseError(f"line {first}: the header declares results "
                         f"{[_show(t) for t in results]} but 'return' gives "
                         f"{[_show(t) for t in returned]}")
    kept = {slot.name for slot in reader.state}
    for node in reader.values.values():
        if node.op == "state" and node.attrs["name"] not in kept:
            raise ParseError(f"state {node.attrs['name']!r} is read but no 'state \"name\" = "
                             "%value' line says what it keeps")
    graph = Graph(tuple(reader.inputs), reader.outputs, header.group(1), reader.meta,
                  tuple(reader.state))
    try:
        return graph.verify()
    except GraphError as e:  # the checks above should leave nothing for verify to find
        raise ParseError(f"the parsed graph does not verify: {e}") from None


def _show(t: TensorType) -> str:
    from .printer import format_type

    return format_type(t)


__all__ = ["parse", "parse_type", "parse_attrs", "ParseError"]
