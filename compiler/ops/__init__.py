"""The op-definition table: every IR op's arity, attributes, type inference and numpy semantics.

One `OpDef` per op, registered by the `@defop` decorator in the family modules below. The
interpreter, the verifier, the printer/parser and the random-graph strategies all read this table
and nothing else, so adding an op is one decorated function plus its `infer`.

Every op also states, as required arguments of `defop`, the facts the passes and the simulator
need, so that none of them keeps a table of its own that a new op could be missing from:
- `integer` (`IntegerForm`): the integer op the quantize pass lowers it to and where that
  result's parameters come from, or explicitly none (`INTEGER`, `LEAF`, `REWRITTEN`,
  `NOT_QUANTIZABLE`);
- `cost` (`Cost`): a matrix product (`GEMM`), a view (`VIEW`) or `vector(n)`: n DSP/CPU
  operations per element;
- `mirror`: its torch semantics `(attrs, *tensors) -> tensor`, which mobilequant's
  differentiable mirror runs, or explicitly `NO_MIRROR`.
tests/test_op_traits.py checks every registered op against them.
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
Mirror = Callable[..., Any]  # (attrs, *torch tensors) -> torch tensor


# -- traits ---------------------------------------------------------------------------------------

# Where the quantize pass takes a float op's integer result parameters from:
PARAMS = {
    "requantize": "requantized from an accumulator, so a clamp right after it is free",
    "keep": "its input's: it moves, picks or averages values",
    "clamp": "a saturation, which lends its range to a requantizing producer",
    "own": "its own: a calibrated range, or fixed by the op (softmax's 1/256)",
}
# Why an op has no integer form of its own:
NO_FORM = {
    "integer": "it computes on integers or bools already: quantize keeps it as it is",
    "leaf": "a graph leaf: a float input gets a quantize op, a constant is quantized by its reader",
    "rewritten": "quantize's prepare step rewrites it into ops that have one",
    "none": "no integer kernel: quantize refuses it",
}


@dataclass(frozen=True)
class IntegerForm:
    """How the quantize pass lowers a float op (passes/quantize.py, passes/integer_lowering.py):
    `op`, the integer op it becomes (itself for data movement, "lut" for a unary function
    evaluated as a table), with `params` one of PARAMS; or `op` None and `params` one of
    NO_FORM, saying why it has none."""

    op: str | None
    params: str

    def __post_init__(self) -> None:
        if self.params not in (NO_FORM if self.op is None else PARAMS):
            raise ValueError(f"integer form {self.op}: unknown params {self.params!r}")


def lowers(op: str, params: str = "own") -> IntegerForm:
    """A float op's integer form: it becomes `op`, its result's parameters from `params`."""
    return IntegerForm(op, params)


def moves(op: str) -> IntegerForm:
    """The integer form of data movement: `op` itself on integers, keeping its input's
    parameters."""
    return IntegerForm(op, "keep")


INTEGER = IntegerForm(None, "integer")
LEAF = IntegerForm(None, "leaf")
REWRITTEN = IntegerForm(None, "rewritten")
NOT_QUANTIZABLE = IntegerForm(None, "none")


@dataclass(frozen=True)
class Cost:
    """What an op costs the simulator (simulator/cost.py). `kind`:
    "gemm"    a matrix product: `macs` multiply-accumulates of its first two operands (activation
              and weight, or two activations; a third operand is a bias, added). Integer ones
              run on the NPU's array, any one on a DSP or CPU as MACs over its lanes;
    "vector"  `per_element` DSP/CPU operations per element it touches (a lookup, a
              requantization, a softmax step; a data movement is a copy, 1; a float op, which
              only the CPU runs, 1);
    "view"    free on every engine (a reshape, a graph leaf)."""

    kind: str
    per_element: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("gemm", "vector", "view") or (self.kind == "vector") != (
                self.per_element > 0):
            raise ValueError(f"bad cost {self}")


GEMM = Cost("gemm")
VIEW = Cost("view")


def vector(per_element: int) -> Cost:
    """`per_element` DSP/CPU operations per element touched."""
    return Cost("vector", per_element)


def _no_mirror(attrs: Attrs, *tensors: Any) -> Any:
    raise TypeError("this op has no torch mirror")


NO_MIRROR: Mirror = _no_mirror  # an op mobilequant cannot mirror (it refuses graphs with it)


@dataclass(frozen=True)
class OpDef:
    """What an op is: `impl(attrs, *arrays)` is its reference semantics; `infer` its result type."""

    name: str
    arity: tuple[int, int]  # (min, max) number of inputs
    attrs: Mapping[str, AttrSpec]
    infer: Infer
    impl: Impl
    doc: str
    integer: IntegerForm  # how the quantize pass lowers it
    cost: Cost  # what the simulator charges for it
    mirror: Mirror  # its torch semantics for mobilequant, or NO_MIRROR
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
          integer: IntegerForm, cost: Cost, mirror: Mirror,
          attrs: Mapping[str, AttrSpec] | None = None,
          macs: Callable[[Node], int] | None = None,
          typed: bool = False) -> Callable[[Impl], Impl]:
    """Register `impl` as the semantics of op `name`; its docstring documents the op. A `typed`
    op's impl takes the node instead of its attrs, to read operand and result types. `integer`,
    `cost` and `mirror` are its traits (see the module docstring)."""
    arity = (arity, arity) if isinstance(arity, int) else arity

    def register(impl: Impl) -> Impl:
        if name in OPS:
            raise ValueError(f"op {name} defined twice")
        OPS[name] = OpDef(name, arity, dict(attrs or {}), infer, impl, (impl.__doc__ or "").strip(),
                          integer, cost, mirror, macs, category, typed)
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


def lowered_by(params: str) -> frozenset[str]:
    """The float ops whose integer result takes its parameters by `params` (one of PARAMS)."""
    if params not in PARAMS:
        raise ValueError(f"params must be one of {sorted(PARAMS)}, got {params!r}")
    return frozenset(op for op, d in OPS.items() if d.integer.op and d.integer.params == params)


# Importing the family modules fills OPS.
from . import elementwise, nn, quantized, shape, state  # noqa: E402, F401
