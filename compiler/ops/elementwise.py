"""Elementwise ops: unary activations and math, broadcasting binary ops, comparisons, `where`.

Float semantics are IEEE float32, computed in the input dtype. Binary ops take operands of one
dtype (the frontend materialises Python scalars as 0-d constants of the tensor's dtype) and
broadcast like numpy. Each op's torch mirror (for mobilequant) is the torch function it stands
for.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy.special import erf

from ..ir import Attrs, DType, TensorType
from . import (
    INTEGER,
    NO_MIRROR,
    REWRITTEN,
    AttrSpec,
    IntegerForm,
    Mirror,
    defop,
    lowers,
    vector,
)

# torch's dtype for each IR dtype (f16 and the 4-bit types computed wider)
TORCH_DTYPES = {DType.F32: torch.float32, DType.F16: torch.float32, DType.I64: torch.int64,
                DType.I32: torch.int32, DType.I16: torch.int16, DType.I8: torch.int8,
                DType.U8: torch.uint8, DType.I4: torch.int8, DType.U4: torch.uint8,
                DType.BOOL: torch.bool}
TABLE = lowers("lut")  # a unary function on 8- or 16-bit integers is a lookup table


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


def _unary(name: str, fn, doc: str, mirror: Mirror, infer=float_type,  # noqa: ANN001
           integer: IntegerForm = TABLE, **attrs: AttrSpec) -> None:
    def impl(attrs_: Attrs, x: np.ndarray) -> np.ndarray:
        return np.asarray(fn(x, attrs_), dtype=x.dtype)

    impl.__doc__ = doc
    defop(name, 1, infer, category="elementwise", attrs=attrs, integer=integer, cost=vector(1),
          mirror=mirror)(impl)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # exp of a non-positive argument only, so neither branch overflows.
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


def _gelu(x: np.ndarray, attrs: Attrs) -> np.ndarray:
    if attrs["approximate"] == "tanh":
        inner = np.float32(np.sqrt(2 / np.pi)) * (x + np.float32(0.044715) * x * x * x)
        return np.float32(0.5) * x * (1 + np.tanh(inner))
    return x * np.float32(0.5) * (1 + erf(x * np.float32(1 / np.sqrt(2))).astype(x.dtype))


def _bound(v: float) -> float | None:
    return v if math.isfinite(v) else None


CLAMP = lowers("rescale", "clamp")  # saturation at the result's bounds
_unary("relu", lambda x, a: np.maximum(x, 0), "max(x, 0)", lambda a, x: torch.relu(x),
       infer=same_type, integer=CLAMP)
_unary("clamp", lambda x, a: np.clip(x, a["min"], a["max"]),
       "min(max(x, min), max); ReLU6 is clamp(0, 6). Bounds may be -inf/inf.",
       lambda a, x: torch.clamp(x, _bound(a["min"]), _bound(a["max"])), infer=same_type,
       integer=CLAMP, min=AttrSpec("float"), max=AttrSpec("float"))
_unary("leaky_relu", lambda x, a: np.where(x >= 0, x, x * np.float32(a["alpha"])),
       "x if x >= 0 else alpha * x", lambda a, x: F.leaky_relu(x, a["alpha"]),
       alpha=AttrSpec("float", 0.01))
_unary("gelu", _gelu, "x * Phi(x) (exact erf), or the tanh approximation when approximate='tanh'",
       lambda a, x: F.gelu(x, approximate=a["approximate"]),
       approximate=AttrSpec("str", "none", ("none", "tanh")))
_unary("sigmoid", lambda x, a: _sigmoid(x), "1 / (1 + exp(-x)), evaluated without overflow",
       lambda a, x: torch.sigmoid(x))
_unary("silu", lambda x, a: x * _sigmoid(x), "x * sigmoid(x)", lambda a, x: F.silu(x))
_unary("tanh", lambda x, a: np.tanh(x), "tanh(x)", lambda a, x: torch.tanh(x))
_unary("hardsigmoid", lambda x, a: np.clip(x / np.float32(6) + np.float32(0.5), 0, 1),
       "clamp(x / 6 + 1/2, 0, 1)", lambda a, x: F.hardsigmoid(x))
_unary("hardswish", lambda x, a: x * np.clip(x + 3, 0, 6) / np.float32(6),
       "x * clamp(x + 3, 0, 6) / 6", lambda a, x: F.hardswish(x))
_unary("exp", lambda x, a: np.exp(x), "exp(x)", lambda a, x: torch.exp(x))
_unary("sin", lambda x, a: np.sin(x), "sin(x) (a diffusion model's timestep embedding)",
       lambda a, x: torch.sin(x))
_unary("cos", lambda x, a: np.cos(x), "cos(x)", lambda a, x: torch.cos(x))
_unary("expm1", lambda x, a: np.expm1(x), "exp(x) - 1, accurate near 0", NO_MIRROR)
_unary("log", lambda x, a: np.log(x), "natural log", lambda a, x: torch.log(x))
_unary("log1p", lambda x, a: np.log1p(x), "log(1 + x), accurate near 0", NO_MIRROR)
_unary("elu", lambda x, a: np.float32(a["scale"]) * np.where(
    x > 0, x, np.float32(a["alpha"]) * np.expm1(x * np.float32(a["input_scale"]))),
    "scale * (x if x > 0 else alpha * (exp(x * input_scale) - 1)): ELU, SELU and CELU",
    NO_MIRROR, alpha=AttrSpec("float", 1.0), scale=AttrSpec("float", 1.0),
    input_scale=AttrSpec("float", 1.0))
_unary("sqrt", lambda x, a: np.sqrt(x), "square root", lambda a, x: torch.sqrt(x))
_unary("rsqrt", lambda x, a: 1 / np.sqrt(x), "1 / sqrt(x)", lambda a, x: torch.rsqrt(x))
_unary("reciprocal", lambda x, a: 1 / x, "1 / x", lambda a, x: torch.reciprocal(x))
_unary("power", lambda x, a: np.power(x, np.float32(a["exponent"])), "x ** exponent",
       lambda a, x: torch.pow(x, a["exponent"]), exponent=AttrSpec("float"))
_unary("erf", lambda x, a: erf(x), "the error function", lambda a, x: torch.erf(x))
_unary("neg", lambda x, a: -x, "-x", lambda a, x: -x, infer=numeric_type)
_unary("abs", lambda x, a: np.abs(x), "|x|", lambda a, x: torch.abs(x), infer=numeric_type)
_unary("logical_not", lambda x, a: ~x, "not x (bool)", lambda a, x: torch.logical_not(x),
       infer=bool_type, integer=INTEGER)


@defop("cast", 1, cast_type, category="elementwise", attrs={"dtype": AttrSpec("dtype")},
       integer=lowers("rescale"), cost=vector(1),
       mirror=lambda a, x: x.to(TORCH_DTYPES[DType(a["dtype"])]))
def cast(attrs: Attrs, x: np.ndarray) -> np.ndarray:
    """Convert to `dtype`: float to int truncates toward zero (as torch's .to())."""
    return x.astype(DType(attrs["dtype"]).numpy)


def _binary(name: str, fn, doc: str, mirror: Mirror, infer=broadcast_type,  # noqa: ANN001
            integer: IntegerForm | None = None) -> None:
    def impl(attrs_: Attrs, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        out = fn(a, b)
        return out if infer is compare_type else out.astype(a.dtype, copy=False)

    impl.__doc__ = doc
    defop(name, 2, infer, category="elementwise", integer=integer or lowers(name),
          cost=vector(1), mirror=mirror)(impl)


def _int_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if np.issubdtype(a.dtype, np.integer):
        return np.floor_divide(a, b)
    return a / b


def _div_mirror(a: Attrs, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.div(x, y, rounding_mode="floor") if not x.is_floating_point() else x / y


_binary("add", np.add, "a + b", lambda a, x, y: x + y, integer=lowers("qadd", "requantize"))
_binary("sub", np.subtract, "a - b", lambda a, x, y: x - y, numeric_type,
        lowers("qsub", "requantize"))
_binary("mul", np.multiply, "a * b", lambda a, x, y: x * y, integer=lowers("qmul", "requantize"))
_binary("div", _int_div, "a / b (floor division for integers)", _div_mirror, numeric_type,
        REWRITTEN)  # a multiplication by a constant's reciprocal, or by a reciprocal table
_binary("pow", np.power, "a ** b", lambda a, x, y: torch.pow(x, y), numeric_type,
        REWRITTEN)  # a constant exponent: `power`, a table
_binary("maximum", np.maximum, "elementwise max", lambda a, x, y: torch.maximum(x, y))
_binary("minimum", np.minimum, "elementwise min", lambda a, x, y: torch.minimum(x, y))
_binary("eq", np.equal, "a == b", lambda a, x, y: x == y, compare_type)
_binary("ne", np.not_equal, "a != b", lambda a, x, y: x != y, compare_type)
_binary("lt", np.less, "a < b", lambda a, x, y: x < y, compare_type)
_binary("le", np.less_equal, "a <= b", lambda a, x, y: x <= y, compare_type)
_binary("gt", np.greater, "a > b", lambda a, x, y: x > y, compare_type)
_binary("ge", np.greater_equal, "a >= b", lambda a, x, y: x >= y, compare_type)
_binary("logical_and", np.logical_and, "a and b (bool)",
        lambda a, x, y: torch.logical_and(x, y), bool_type, INTEGER)
_binary("logical_or", np.logical_or, "a or b (bool)", lambda a, x, y: torch.logical_or(x, y),
        bool_type, INTEGER)


@defop("where", 3, where_type, category="elementwise", integer=lowers("where"), cost=vector(1),
       mirror=lambda a, c, x, y: torch.where(c, x, y))
def where(attrs: Attrs, cond: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a where cond else b, broadcasting all three."""
    return np.where(cond, a, b)


def _prelu_mirror(a: Attrs, x: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
    shape = (1, -1) + (1,) * (x.ndim - 2) if slope.numel() > 1 else ()
    return torch.where(x >= 0, x, slope.reshape(shape) * x)


@defop("prelu", 2, prelu_type, category="elementwise", integer=lowers("qprelu", "requantize"),
       cost=vector(1), mirror=_prelu_mirror)
def prelu(attrs: Attrs, x: np.ndarray, slope: np.ndarray) -> np.ndarray:
    """x if x >= 0 else slope * x; slope has one entry or one per channel (axis 1)."""
    # one slope broadcasts as a scalar (whatever x's rank); else one per channel on axis 1
    slope = slope.reshape((1, -1) + (1,) * (x.ndim - 2)) if slope.size > 1 else slope.reshape(())
    return np.where(x >= 0, x, slope * x).astype(x.dtype)
