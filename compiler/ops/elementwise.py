"""Elementwise ops: unary activations and math, broadcasting binary ops, comparisons, `where`.

Float semantics are IEEE float32, computed in the input dtype. Binary ops take operands of one
dtype (the frontend materialises Python scalars as 0-d constants of the tensor's dtype) and
broadcast like numpy.
"""

from __future__ import annotations

import numpy as np
from scipy.special import erf

from ..ir import Attrs, DType, TensorType
from . import AttrSpec, defop


class OpTypeError(TypeError):
    """Operand types an op cannot take."""


def same_type(types: list[TensorType], attrs: Attrs) -> TensorType:
    return TensorType(types[0].shape, types[0].dtype)


def float_type(types: list[TensorType], attrs: Attrs) -> TensorType:
    if not types[0].dtype.is_float:
        raise OpTypeError(f"needs a float operand, got {types[0].dtype}")
    return same_type(types, attrs)


def broadcast_shapes(*shapes: tuple[int, ...]) -> tuple[int, ...]:
    try:
        return tuple(np.broadcast_shapes(*shapes))
    except ValueError:
        raise OpTypeError(f"shapes {' and '.join(map(str, shapes))} do not broadcast") from None


def _common_dtype(types: list[TensorType]) -> DType:
    dtypes = {t.dtype for t in types}
    if len(dtypes) != 1:
        raise OpTypeError(f"operand dtypes differ: {', '.join(sorted(map(str, dtypes)))}")
    return dtypes.pop()


def broadcast_type(types: list[TensorType], attrs: Attrs) -> TensorType:
    return TensorType(broadcast_shapes(*(t.shape for t in types)), _common_dtype(types))


def numeric_type(types: list[TensorType], attrs: Attrs) -> TensorType:
    """broadcast_type for arithmetic that has no meaning on bools (neg, sub, div, pow)."""
    if any(t.dtype == DType.BOOL for t in types):
        raise OpTypeError("arithmetic on bool operands; cast them first")
    return broadcast_type(types, attrs)


def compare_type(types: list[TensorType], attrs: Attrs) -> TensorType:
    return TensorType(broadcast_type(types, attrs).shape, DType.BOOL)


def where_type(types: list[TensorType], attrs: Attrs) -> TensorType:
    if types[0].dtype != DType.BOOL:
        raise OpTypeError(f"where: condition must be bool, got {types[0].dtype}")
    return TensorType(broadcast_shapes(*(t.shape for t in types)), _common_dtype(types[1:]))


def bool_type(types: list[TensorType], attrs: Attrs) -> TensorType:
    if any(t.dtype != DType.BOOL for t in types):
        raise OpTypeError(f"needs bool operands, got {', '.join(str(t.dtype) for t in types)}")
    return TensorType(broadcast_shapes(*(t.shape for t in types)), DType.BOOL)


def cast_type(types: list[TensorType], attrs: Attrs) -> TensorType:
    return TensorType(types[0].shape, DType(attrs["dtype"]))


def prelu_type(types: list[TensorType], attrs: Attrs) -> TensorType:
    x, slope = types
    channels = x.shape[1] if x.rank > 1 else 1
    if slope.size not in (1, channels):
        raise OpTypeError(f"prelu: {slope.size} slopes for {channels} channels")
    return float_type(types, attrs)


def _unary(name: str, fn, doc: str, infer=float_type, **attrs: AttrSpec) -> None:
    def impl(attrs_: Attrs, x: np.ndarray) -> np.ndarray:
        return np.asarray(fn(x, attrs_), dtype=x.dtype)

    impl.__doc__ = doc
    defop(name, 1, infer, category="elementwise", attrs=attrs)(impl)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # exp of a non-positive argument only, so neither branch overflows.
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


def _gelu(x: np.ndarray, attrs: Attrs) -> np.ndarray:
    if attrs["approximate"] == "tanh":
        inner = np.float32(np.sqrt(2 / np.pi)) * (x + np.float32(0.044715) * x * x * x)
        return np.float32(0.5) * x * (1 + np.tanh(inner))
    return x * np.float32(0.5) * (1 + erf(x * np.float32(1 / np.sqrt(2))).astype(x.dtype))


_unary("relu", lambda x, a: np.maximum(x, 0), "max(x, 0)", infer=same_type)
_unary("clamp", lambda x, a: np.clip(x, a["min"], a["max"]),
       "min(max(x, min), max); ReLU6 is clamp(0, 6). Bounds may be -inf/inf.", infer=same_type,
       min=AttrSpec("float"), max=AttrSpec("float"))
_unary("leaky_relu", lambda x, a: np.where(x >= 0, x, x * np.float32(a["alpha"])),
       "x if x >= 0 else alpha * x", alpha=AttrSpec("float", 0.01))
_unary("gelu", _gelu, "x * Phi(x) (exact erf), or the tanh approximation when approximate='tanh'",
       approximate=AttrSpec("str", "none", ("none", "tanh")))
_unary("sigmoid", lambda x, a: _sigmoid(x), "1 / (1 + exp(-x)), evaluated without overflow")
_unary("silu", lambda x, a: x * _sigmoid(x), "x * sigmoid(x)")
_unary("tanh", lambda x, a: np.tanh(x), "tanh(x)")
_unary("hardsigmoid", lambda x, a: np.clip(x / np.float32(6) + np.float32(0.5), 0, 1),
       "clamp(x / 6 + 1/2, 0, 1)")
_unary("hardswish", lambda x, a: x * np.clip(x + 3, 0, 6) / np.float32(6),
       "x * clamp(x + 3, 0, 6) / 6")
_unary("exp", lambda x, a: np.exp(x), "exp(x)")
_unary("expm1", lambda x, a: np.expm1(x), "exp(x) - 1, accurate near 0")
_unary("log", lambda x, a: np.log(x), "natural log")
_unary("log1p", lambda x, a: np.log1p(x), "log(1 + x), accurate near 0")
_unary("elu", lambda x, a: np.float32(a["scale"]) * np.where(
    x > 0, x, np.float32(a["alpha"]) * np.expm1(x * np.float32(a["input_scale"]))),
    "scale * (x if x > 0 else alpha * (exp(x * input_scale) - 1)): ELU, SELU and CELU",
    alpha=AttrSpec("float", 1.0), scale=AttrSpec("float", 1.0),
    input_scale=AttrSpec("float", 1.0))
_unary("sqrt", lambda x, a: np.sqrt(x), "square root")
_unary("rsqrt", lambda x, a: 1 / np.sqrt(x), "1 / sqrt(x)")
_unary("reciprocal", lambda x, a: 1 / x, "1 / x")
_unary("erf", lambda x, a: erf(x), "the error function")
_unary("neg", lambda x, a: -x, "-x", infer=numeric_type)
_unary("abs", lambda x, a: np.abs(x), "|x|", infer=numeric_type)
_unary("logical_not", lambda x, a: ~x, "not x (bool)", infer=bool_type)


@defop("cast", 1, cast_type, category="elementwise",
       attrs={"dtype": AttrSpec("dtype")})
def cast(attrs: Attrs, x: np.ndarray) -> np.ndarray:
    """Convert to `dtype`: float to int truncates toward zero (as torch's .to())."""
    return x.astype(DType(attrs["dtype"]).numpy)


def _binary(name: str, fn, doc: str, infer=broadcast_type) -> None:
    def impl(attrs_: Attrs, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        out = fn(a, b)
        return out if infer is compare_type else out.astype(a.dtype, copy=False)

    impl.__doc__ = doc
    defop(name, 2, infer, category="elementwise")(impl)


def _int_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if np.issubdtype(a.dtype, np.integer):
        return np.floor_divide(a, b)
    return a / b


_binary("add", np.add, "a + b")
_binary("sub", np.subtract, "a - b", numeric_type)
_binary("mul", np.multiply, "a * b")
_binary("div", _int_div, "a / b (floor division for integers)", numeric_type)
_binary("pow", np.power, "a ** b", numeric_type)
_binary("maximum", np.maximum, "elementwise max")
_binary("minimum", np.minimum, "elementwise min")
_binary("eq", np.equal, "a == b", compare_type)
_binary("ne", np.not_equal, "a != b", compare_type)
_binary("lt", np.less, "a < b", compare_type)
_binary("le", np.less_equal, "a <= b", compare_type)
_binary("gt", np.greater, "a > b", compare_type)
_binary("ge", np.greater_equal, "a >= b", compare_type)
_binary("logical_and", np.logical_and, "a and b (bool)", bool_type)
_binary("logical_or", np.logical_or, "a or b (bool)", bool_type)


@defop("where", 3, where_type, category="elementwise")
def where(attrs: Attrs, cond: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a where cond else b, broadcasting all three."""
    return np.where(cond, a, b)


@defop("prelu", 2, prelu_type, category="elementwise")
def prelu(attrs: Attrs, x: np.ndarray, slope: np.ndarray) -> np.ndarray:
    """x if x >= 0 else slope * x; slope has one entry or one per channel (axis 1)."""
    # one slope broadcasts as a scalar (whatever x's rank); else one per channel on axis 1
    slope = slope.reshape((1, -1) + (1,) * (x.ndim - 2)) if slope.size > 1 else slope.reshape(())
    return np.where(x >= 0, x, slope * x).astype(x.dtype)
