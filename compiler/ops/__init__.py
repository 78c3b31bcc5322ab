"""The op-definition table: every IR op's arity, attributes, type inference and numpy semantics.

One `OpDef` per op, registered by the `@defop` decorator in the family modules below. The
interpreter, the verifier, the printer/parser and the random-graph strategies all read this table
and nothing else, so adding an op is one decorated function plus its `infer`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..ir import Attrs, DType, Node, QuantParams, TensorType

REQUIRED = object()  # marks an attribute without a default

# Attribute kinds: how the parser reads a value and the verifier checks it.
ATTR_KINDS: dict[str, Callable[[Any], bool]] = {
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, float | int) and not isinstance(v, bool),
    "bool": lambda v: isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
    "ints": lambda v: isinstance(v, tuple) and all(ATTR_KINDS["int"](x) for x in v),
    "floats": lambda v: isinstance(v, tuple) and all(ATTR_KINDS["float"](x) for x in v),
    "dtype": lambda v: isinstance(v, str) and v in {d.value for d in DType},
    "array": lambda v: isinstance(v, np.ndarray),
}


@dataclass(frozen=True)
class AttrSpec:
    kind: str
    default: Any = REQUIRED
    choices: tuple[Any, ...] | None = None
    min: int | None = None  # for int and ints: the least legal value of each element


Infer = Callable[[list[TensorType], Attrs], TensorType]
Impl = Callable[..., np.ndarray]


@dataclass(frozen=True)
class OpDef:
    """What an op is: `impl(attrs, *arrays)` is its reference semantics; `infer` its result type."""

    name: str
    arity: tuple[int, int]  # (min, max) number of inputs
    attrs: Mapping[str, AttrSpec]
    infer: Infer
    impl: Impl
    doc: str
    macs: Callable[[Node], int] | None = None
    category: str = "misc"
    typed: bool = False  # impl(node, *arrays): integer ops read quantization from the types

    def check_attrs(self, attrs: Mapping[str, Any]) -> Attrs:
        """Fill defaults and check kinds and choices; raise TypeError naming the attribute."""
        unknown = set(attrs) - set(self.attrs)
        if unknown:
            raise TypeError(f"{self.name}: unknown attribute(s) {sorted(unknown)}")
        full: dict[str, Any] = {}
        for key, spec in self.attrs.items():
            if key in attrs and attrs[key] is not None:
                value = attrs[key]
            elif spec.default is REQUIRED:
                raise TypeError(f"{self.name}: missing attribute '{key}'")
            elif spec.default is None:
                continue
            else:
                value = spec.default
            value = tuple(value) if isinstance(value, list) else value
            if spec.kind == "float" and isinstance(value, int):
                value = float(value)
            if spec.kind == "floats":
                value = tuple(float(v) for v in value)
            if not ATTR_KINDS[spec.kind](value):
                raise TypeError(f"{self.name}: attribute '{key}' should be {spec.kind}, "
                                f"got {value!r}")
            if spec.choices is not None and value not in spec.choices:
                raise TypeError(f"{self.name}: attribute '{key}' must be one of {spec.choices}")
            if spec.min is not None and min(value if isinstance(value, tuple) else (value,),
                                            default=spec.min) < spec.min:
                raise TypeError(f"{self.name}: attribute '{key}' must be >= {spec.min}, "
                                f"got {value!r}")
            full[key] = value
        return Attrs(full)


OPS: dict[str, OpDef] = {}


def defop(name: str, arity: int | tuple[int, int], infer: Infer, *, category: str,
          attrs: Mapping[str, AttrSpec] | None = None,
          macs: Callable[[Node], int] | None = None,
          typed: bool = False) -> Callable[[Impl], Impl]:
    """Register `impl` as the semantics of op `name`; its docstring documents the op. A `typed`
    op's impl takes the node instead of its attrs, to read operand and result types."""
    arity = (arity, arity) if isinstance(arity, int) else arity

    def register(impl: Impl) -> Impl:
        if name in OPS:
            raise ValueError(f"op {name} defined twice")
        OPS[name] = OpDef(name, arity, dict(attrs or {}), infer, impl, (impl.__doc__ or "").strip(),
                          macs, category, typed)
        return impl

    return register


def make(op: str, inputs: tuple[Node, ...] | list[Node], attrs: Mapping[str, Any] | None = None,
         loc: str | None = None, quant: QuantParams | None = None) -> Node:
    """Build a node of `op`, checking arity and attributes and inferring its result type; `quant`
    annotates the result with the quantization parameters its op cannot infer."""
    opdef = OPS.get(op)
    if opdef is None:
        raise KeyError(f"unknown op '{op}'")
    inputs = tuple(inputs)
    lo, hi = opdef.arity
    if not lo <= len(inputs) <= hi:
        raise TypeError(f"{op}: takes {lo}..{hi} inputs, got {len(inputs)}")
    checked = opdef.check_attrs(attrs or {})
    try:
        type_ = opdef.infer([i.type for i in inputs], checked)
    except (IndexError, ValueError, ArithmeticError) as e:  # operands infer cannot make sense of
        raise TypeError(f"{op}: cannot type operands {[i.type for i in inputs]}: {e}") from None
    if opdef.typed and not type_.dtype.is_float and quant is None:
        raise TypeError(f"{op}: an integer result needs its quantization parameters (quant=)")
    return Node(op, inputs, checked, replace(type_, quant=quant) if quant else type_, loc)


def evaluate(node: Node, *arrays: np.ndarray) -> np.ndarray:
    """Run `node`'s op on `arrays` (the values of its inputs): the interpreter's one step."""
    opdef = OPS[node.op]
    return opdef.impl(node if opdef.typed else node.attrs, *arrays)


def macs(node: Node) -> int:
    """Multiply-accumulates that `node` performs (0 for ops that are not MAC-bound)."""
    opdef = OPS.get(node.op)
    return opdef.macs(node) if opdef is not None and opdef.macs is not None else 0


# Importing the family modules fills OPS.
from . import elementwise, nn, quantized, shape  # noqa: E402, F401
