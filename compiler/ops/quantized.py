"""Integer-only ops: what a quantized graph executes, TOSA/TFLite style.

An integer op reads its operands' and result's quantization parameters from their types (`typed`
impls): real = scale * (q - zero_point), activations per tensor, weights per output channel with
zero point 0. Every op computes exactly in integers by the rules of `npuc.quant.arith`; where an
impl uses float64 BLAS for an integer sum, the sum is exact because every partial sum stays below
2**53 (|operand| <= 2**16 and |weight| <= 2**15 give products <= 2**31, so any sum of fewer than
2**22 products is exact). Accumulators are then saturated to int32, as a C int32 accumulator with
an int64 fallback must do, and requantized to the result type, saturating to its dtype; fused
ReLU/ReLU6 are that saturation, since the result's range starts at 0.

Data movement (reshape, permute, slice, concat, pad, gather, max_pool, ...) uses the float ops
unchanged on integer tensors whose input and output parameters agree.
"""

from __future__ import annotations

import math

import numpy as np

from ..ir import Attrs, DType, Node, QuantParams, TensorType
from ..quant import arith
from . import GEMM, INTEGER, NO_MIRROR, AttrSpec, Cost, defop, nn, vector
from .elementwise import OpTypeError, broadcast_shapes

I32 = DType.I32


def intop(name: str, arity: int | tuple[int, int], infer, *, cost: Cost,  # noqa: ANN001
          **kwargs):  # noqa: ANN003, ANN201
    """`defop` for an integer op: the quantize pass keeps it as it is, and mobilequant, a pass on
    float graphs, never meets it (no torch mirror)."""
    return defop(name, arity, infer, integer=INTEGER, cost=cost, mirror=NO_MIRROR, **kwargs)


def per_tensor(t: TensorType) -> tuple[float, int]:
    """(scale, zero_point) of a per-tensor quantized type."""
    q = _quant(t)
    if q.axis is not None:
        raise OpTypeError(f"expected per-tensor quantization, got axis {q.axis}")
    return q.scale[0], q.zero_point[0]


def _quant(t: TensorType) -> QuantParams:
    if t.quant is None:
        raise OpTypeError(f"{t.dtype}{list(t.shape)} has no quantization parameters")
    return t.quant


def _int_type(types: list[TensorType], attrs: Attrs, shape: tuple[int, ...] | None = None
              ) -> TensorType:
    for t in types:
        if t.dtype.is_float:
            raise OpTypeError(f"integer op on a {t.dtype} operand")
    return TensorType(types[0].shape if shape is None else shape, DType(attrs["dtype"]))


def quantized(infer, *operands: int):  # noqa: ANN001, ANN201
    """`infer`, first checking that the given operands carry quantization parameters."""
    def checked(types: list[TensorType], attrs: Attrs) -> TensorType:
        for i in operands:
            if i < len(types) and types[i].quant is None:
                raise OpTypeError(f"operand {i} ({types[i].dtype}{list(types[i].shape)}) has no "
                                  "quantization parameters")
        return infer(types, attrs)

    return checked


def _dtype_attr(default: str = "i8") -> dict[str, AttrSpec]:
    return {"dtype": AttrSpec("dtype", default, choices=("i8", "u8", "i16", "i32"))}


def _centred(node: Node, i: int, x: np.ndarray) -> np.ndarray:
    """Input i minus its zero point, as int64."""
    return x.astype(np.int64) - per_tensor(node.inputs[i].type)[1]


def _out(node: Node, acc: np.ndarray, real_multiplier: float | np.ndarray,
         axis: int | None = None) -> np.ndarray:
    """Saturate an accumulator to int32, requantize by `real_multiplier` into the result type."""
    acc = np.clip(acc, arith.INT32_MIN, arith.INT32_MAX)
    return arith.requantize(acc, real_multiplier, per_tensor(node.type)[1], node.dtype, axis)


def _exact(y: np.ndarray) -> np.ndarray:
    return np.rint(y).astype(np.int64)  # the float64 sums are exact integers already


# -- the float boundary ---------------------------------------------------------------------------

def _quantize_type(types: list[TensorType], attrs: Attrs) -> TensorType:
    if not types[0].dtype.is_float:
        raise OpTypeError(f"quantize takes a float operand, got {types[0].dtype}")
    return TensorType(types[0].shape, DType(attrs["dtype"]))


@intop("quantize", 1, _quantize_type, category="quant", cost=vector(2), attrs=_dtype_attr(),
       typed=True)
def quantize(node: Node, x: np.ndarray) -> np.ndarray:
    """float32 -> integer: clamp(rint(x / scale) + zero_point), scale from the result type."""
    return arith.quantize(x, *per_tensor(node.type), node.dtype)


def _dequantize_type(types: list[TensorType], attrs: Attrs) -> TensorType:
    _int_type(types, Attrs({"dtype": "i32"}))
    return TensorType(types[0].shape, DType.F32)


@intop("dequantize", 1, quantized(_dequantize_type, 0), category="quant", cost=vector(2),
       typed=True)
def dequantize(node: Node, x: np.ndarray) -> np.ndarray:
    """integer -> float32: (x - zero_point) * scale, scale from the operand type."""
    return arith.dequantize(x, *per_tensor(node.inputs[0].type))


# -- requantization -------------------------------------------------------------------------------

@intop("rescale", 1, quantized(_int_type, 0), category="quant", cost=vector(2), typed=True,
       attrs={**_dtype_attr(), "min": AttrSpec("int", None), "max": AttrSpec("int", None)})
def rescale(node: Node, x: np.ndarray) -> np.ndarray:
    """Requantize to the result's parameters, then clamp to [min, max] when given (a ReLU or clamp
    that no producer absorbed)."""
    s_in = per_tensor(node.inputs[0].type)[0]
    y = _out(node, _centred(node, 0, x), s_in / per_tensor(node.type)[0])
    lo, hi = node.attrs.get("min"), node.attrs.get("max")
    return np.clip(y, lo, hi).astype(y.dtype) if lo is not None or hi is not None else y


def _gemm_scales(node: Node) -> np.ndarray:
    """The real multipliers s_x * s_w / s_out: one per output channel, or a 0-d array."""
    s_x = per_tensor(node.inputs[0].type)[0]
    w = _quant(node.inputs[1].type)
    real = s_x * np.asarray(w.scale, dtype=np.float64) / per_tensor(node.type)[0]
    return real if w.axis is not None else real.reshape(())


def _with_bias(acc: np.ndarray, bias: np.ndarray | None, axis: int) -> np.ndarray:
    if bias is None:
        return acc
    shape = [1] * acc.ndim
    shape[axis] = -1
    return acc + bias.astype(np.int64).reshape(shape)


def _conv_like(name: str, float_impl, infer, attrs: dict[str, AttrSpec], macs) -> None:  # noqa: ANN001
    def impl(node: Node, x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
        acc = _exact(float_impl(node.attrs, _centred(node, 0, x).astype(np.float64),
                                w.astype(np.float64)))
        real = _gemm_scales(node)
        return _out(node, _with_bias(acc, b, 1), real, 1 if real.ndim else None)

    impl.__doc__ = (f"Integer {float_impl.__name__}: int32 sum of (x - zp_x) * w (+ int32 bias at "
                    "s_x * s_w), requantized per output channel to the result type.")
    intop(name, (2, 3), quantized(infer, 0, 1), category="nn", cost=GEMM,
          attrs={**attrs, **_dtype_attr()},
          macs=macs, typed=True)(impl)


def _integer_infer(float_infer):  # noqa: ANN001, ANN202
    """A float op's shape inference, the dtype taken from the `dtype` attribute."""
    def infer(types: list[TensorType], attrs: Attrs) -> TensorType:
        _int_type(types, attrs)
        as_float = [TensorType(t.shape, DType.F32) for t in types]
        return TensorType(float_infer(as_float, attrs).shape, DType(attrs["dtype"]))

    return infer


_conv_like("qconv", nn.conv, _integer_infer(nn.conv_type), nn._conv_attrs(), nn._conv_macs)
_conv_like("qconv_transpose", nn.conv_transpose, _integer_infer(nn.conv_transpose_type),
           {**nn._conv_attrs(), "output_padding": AttrSpec("ints")}, nn._conv_transpose_macs)


_QLINEAR_INFER = quantized(_integer_infer(nn.linear_type), 0, 1)


@intop("qlinear", (2, 3), _QLINEAR_INFER, category="nn", cost=GEMM, attrs=_dtype_attr(),
       macs=nn._matmul_macs, typed=True)
def qlinear(node: Node, x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """Integer linear: int32 sum of (x - zp_x) * w[o] (+ int32 bias), requantized per output
    feature (the last axis) to the result type."""
    acc = _exact(nn.dense(_centred(node, 0, x).astype(np.float64), w.astype(np.float64)))
    real = _gemm_scales(node)
    acc = _with_bias(acc, b, acc.ndim - 1)
    return _out(node, acc, real, acc.ndim - 1 if real.ndim else None)


_QMATMUL_INFER = quantized(_integer_infer(nn.matmul_type), 0, 1)


@intop("qmatmul", 2, _QMATMUL_INFER, category="nn", cost=GEMM, attrs=_dtype_attr(),
       macs=nn._matmul_macs, typed=True)
def qmatmul(node: Node, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Integer batched matmul of two per-tensor quantized operands (attention's QK^T and PV):
    int32 sum of (a - zp_a) * (b - zp_b), requantized to the result type."""
    acc = _exact(np.matmul(_centred(node, 0, a).astype(np.float64),
                           _centred(node, 1, b).astype(np.float64)))
    s_a, s_b = per_tensor(node.inputs[0].type)[0], per_tensor(node.inputs[1].type)[0]
    return _out(node, acc, s_a * s_b / per_tensor(node.type)[0])


# -- elementwise arithmetic -----------------------------------------------------------------------

def _binary_type(types: list[TensorType], attrs: Attrs) -> TensorType:
    return _int_type(types, attrs, broadcast_shapes(*(t.shape for t in types)))


def _add_like(name: str, sign: int) -> None:
    def impl(node: Node, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        (s_a, _), (s_b, _) = (per_tensor(i.type) for i in node.inputs)
        left = 20 if max(i.dtype.bits for i in node.inputs) <= 8 else 15
        twice_max = 2 * max(s_a, s_b)
        ra = arith.requantize(_centred(node, 0, a) << left, s_a / twice_max, 0, I32)
        rb = arith.requantize(_centred(node, 1, b) << left, s_b / twice_max, 0, I32)
        total = ra.astype(np.int64) + sign * rb.astype(np.int64)
        return _out(node, total, twice_max / ((1 << left) * per_tensor(node.type)[0]))

    impl.__doc__ = (f"Integer a {'+-'[sign < 0]} b (TFLite's scheme): both operands shifted left "
                    "(20 bits for 8-bit operands, 15 for 16-bit) and rescaled to twice the larger "
                    "scale, combined, then requantized to the result type.")
    intop(name, 2, quantized(_binary_type, 0, 1), category="elementwise", cost=vector(4),
          attrs=_dtype_attr(),
          typed=True)(impl)


_add_like("qadd", 1)
_add_like("qsub", -1)


_QMUL_INFER = quantized(_binary_type, 0, 1)


@intop("qmul", 2, _QMUL_INFER, category="elementwise", cost=vector(3), attrs=_dtype_attr(),
       typed=True)
def qmul(node: Node, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Integer a * b: (a - zp_a) * (b - zp_b), saturated to int32, requantized by s_a s_b/s_out."""
    (s_a, _), (s_b, _) = (per_tensor(i.type) for i in node.inputs)
    return _out(node, _centred(node, 0, a) * _centred(node, 1, b),
                s_a * s_b / per_tensor(node.type)[0])


_QPRELU_INFER = quantized(_integer_infer(lambda types, attrs: types[0]), 0, 1)


@intop("qprelu", 2, _QPRELU_INFER, category="elementwise", cost=vector(3),
       attrs=_dtype_attr(), typed=True)
def qprelu(node: Node, x: np.ndarray, slope: np.ndarray) -> np.ndarray:
    """x >= zp ? requantize(x - zp) : requantize((x - zp) * slope); slope is int8, one per
    channel (axis 1) or one for all, with its own scale."""
    s_x, s_slope = per_tensor(node.inputs[0].type)[0], per_tensor(node.inputs[1].type)[0]
    xc = _centred(node, 0, x)
    slope = _centred(node, 1, slope)
    slope = slope.reshape((1, -1) + (1,) * (x.ndim - 2)) if slope.size > 1 else slope.reshape(())
    s_out = per_tensor(node.type)[0]
    return np.where(xc >= 0, _out(node, xc, s_x / s_out), _out(node, xc * slope,
                                                                 s_x * s_slope / s_out))


def _lut_type(types: list[TensorType], attrs: Attrs) -> TensorType:
    x, table = types
    if x.dtype.is_float or table.rank != 1 or table.size not in (256, 513):
        raise OpTypeError(f"lut: an integer operand and a 256/513-entry table, got {x.dtype} "
                          f"and {table.shape}")
    if table.size == 256 and x.dtype.bits != 8 or table.size == 513 and x.dtype != DType.I16:
        raise OpTypeError(f"lut: a {table.size}-entry table cannot index {x.dtype}")
    return TensorType(x.shape, table.dtype)


@intop("lut", 2, _lut_type, category="elementwise", cost=vector(1))
def lut(attrs: Attrs, x: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Any unary function as a table (sigmoid, tanh, GELU, SiLU, exp, ...): 256 entries index int8
    (x + 128) or uint8 directly; 513 entries interpolate int16 (see `arith.lookup`)."""
    return arith.lookup(x, table, DType.of(table))


# -- reductions and pooling -----------------------------------------------------------------------

def _reduce_infer(types: list[TensorType], attrs: Attrs) -> TensorType:
    from .shape import reduce_type

    return _integer_infer(reduce_type)(types, attrs)


def _reduce_sum(name: str, mean: bool) -> None:
    def impl(node: Node, x: np.ndarray) -> np.ndarray:
        axes = tuple(node.attrs["axes"])
        total = _centred(node, 0, x).sum(axis=axes, keepdims=node.attrs["keepdim"])
        n = math.prod(x.shape[a] for a in axes) if mean else 1
        real = per_tensor(node.inputs[0].type)[0] / (n * per_tensor(node.type)[0])
        return _out(node, total, real)

    impl.__doc__ = (f"Integer {name[1:]} over `axes`: the int32 sum of x - zp, requantized by "
                    f"s_in{' / n' if mean else ''} / s_out.")
    intop(name, 1, quantized(_reduce_infer, 0), category="reduce", cost=vector(1), typed=True,
          attrs={"axes": AttrSpec("ints"), "keepdim": AttrSpec("bool", False),
                 **_dtype_attr()})(impl)


_reduce_sum("qmean", mean=True)
_reduce_sum("qsum", mean=False)


@intop("qavg_pool", 1, quantized(nn.pool_type, 0), category="nn", cost=vector(1), typed=True,
       attrs=nn._pool_attrs(count_include_pad=AttrSpec("bool", True)))
def qavg_pool(node: Node, x: np.ndarray) -> np.ndarray:
    """Integer average pool with the operand's parameters: zp + round(sum(x - zp) / count), the
    division rounding to nearest, ties away from zero."""
    total, count = nn.pool_sum_and_count(node.attrs, _centred(node, 0, x))
    zp = per_tensor(node.type)[1]
    return arith.saturate(arith.divide_rounded(total, count) + zp, node.dtype)


RESIZE_BITS = 16  # interpolation weights in Q16: below 1/2 LSB of int16 over two axes


def _adaptive_type(types: list[TensorType], attrs: Attrs) -> TensorType:
    x = types[0]
    return TensorType(nn.adaptive_type([TensorType(x.shape, DType.F32)], attrs).shape, x.dtype)


@intop("qadaptive_avg_pool", 1, quantized(_adaptive_type, 0), category="nn", cost=vector(1),
       typed=True, attrs={"size": AttrSpec("ints", min=1)})
def qadaptive_avg_pool(node: Node, x: np.ndarray) -> np.ndarray:
    """Integer adaptive average pool with the operand's parameters: each output cell is zp +
    round(sum(x - zp) / count) over its window [floor(i*in/out), ceil((i+1)*in/out))."""
    total = _centred(node, 0, x).astype(np.float64)
    count = np.ones((1,) * x.ndim)
    for i, out in enumerate(node.attrs["size"]):
        member = nn.adaptive_windows(x.shape[2 + i], out)
        total = nn._along(total, 2 + i, member)
        count = nn._along(count, 2 + i, member.sum(axis=1, keepdims=True))
    zp = per_tensor(node.type)[1]
    return arith.saturate(arith.divide_rounded(_exact(total), _exact(count)) + zp, node.dtype)


def _resize_weights(attrs: Attrs, axis: int, size_in: int) -> np.ndarray:
    """One axis's interpolation matrix in Q16, each row rounded to sum to exactly 2**16."""
    m = nn._resize_matrix(attrs["mode"], size_in, attrs["size"][axis], attrs["scales"][axis],
                          attrs["align_corners"])
    one = 1 << RESIZE_BITS
    q = np.floor(m.astype(np.float64) * one + 0.5).astype(np.int64)
    q[np.arange(len(q)), m.argmax(axis=1)] += one - q.sum(axis=1)
    return q


@intop("qresize", 1, quantized(nn.resize_type, 0), category="nn", cost=vector(1), typed=True,
       attrs={"size": AttrSpec("ints", min=1),
              "mode": AttrSpec("str", choices=("nearest", "bilinear")),
              "scales": AttrSpec("floats"), "align_corners": AttrSpec("bool", False)})
def qresize(node: Node, x: np.ndarray) -> np.ndarray:
    """Integer resize with the operand's parameters: separable Q16 weights per axis, one rounding
    at the end (divide by 2**(16 * axes), nearest, ties away from zero; the float64 sums are
    exact below 2**53 for two axes of int16)."""
    y = _centred(node, 0, x).astype(np.float64)
    for i in range(len(node.attrs["size"])):
        y = nn._along(y, 2 + i, _resize_weights(node.attrs, i, x.shape[2 + i]).astype(np.float64))
    shift = RESIZE_BITS * len(node.attrs["size"])
    y = arith.divide_rounded(_exact(y), 1 << shift) + per_tensor(node.type)[1]
    return arith.saturate(y, node.dtype)


# -- softmax and normalisation --------------------------------------------------------------------

def _table_type(types: list[TensorType], attrs: Attrs) -> TensorType:
    x, *tables = types
    if any(t.rank != 1 or t.dtype != I32 for t in tables):
        raise OpTypeError("tables must be 1-d int32 constants")
    return _integer_infer(nn._axis_type)([x], attrs)


EXP_BITS = 16  # exp tables hold round(2**16 * exp(-k * step)): exp(0) is 65536


@intop("qsoftmax", 2, quantized(_table_type, 0), category="nn", cost=vector(8), typed=True,
       attrs={"axis": AttrSpec("int"), **_dtype_attr()})
def qsoftmax(node: Node, x: np.ndarray, exp_table: np.ndarray) -> np.ndarray:
    """Integer softmax along `axis`: d = max - x >= 0; e = exp(-d s) from the table (see
    `exp_lookup`), 0 where int16 x is -32768
    (masked); result zp + round(e / max(sum(e), 1) / s_out). The result scale is 1/256 (int8)
    or 1/32768 (int16)."""
    axis = node.attrs["axis"]
    d = x.max(axis=axis, keepdims=True).astype(np.int64) - x
    e = np.where(_masked(x), 0, exp_lookup(node, d, exp_table))
    total = np.maximum(e.sum(axis=axis, keepdims=True), 1)
    s_out, zp = per_tensor(node.type)
    return arith.saturate(arith.divide_rounded(e * round(1 / s_out), total) + zp, node.dtype)


def _masked(x: np.ndarray) -> np.ndarray | bool:
    """int16 -32768 is minus infinity: symmetric int16 values use [-32767, 32767], and lowering
    writes -32768 where an attention mask adds -inf."""
    return x == -32768 if x.dtype == np.int16 else False


EXP_RANGE = 16  # a 513-entry exp table spans real distances [0, 16] below the max, in 1/32 steps


def exp_lookup(node: Node, d: np.ndarray, table: np.ndarray) -> np.ndarray:
    """exp(-d * s_in) in Q16 (int64): table[d] for a 256-entry table (8-bit inputs, a table per
    scale); else d is requantized onto the 513-entry table's fixed real grid, u = d * s_in *
    (128 * 512 / EXP_RANGE) clamped to 65535, and the table interpolated at u (TOSA TABLE)."""
    t = table.astype(np.int64)
    if t.size == 256:
        return t[np.minimum(d, 255)]
    real = per_tensor(node.inputs[0].type)[0] * (128 * 512 / EXP_RANGE)
    u = np.minimum(arith.requantize(np.minimum(d, arith.INT32_MAX), real, 0, I32), 65535)
    return arith.lookup(u - 32768, t, I32).astype(np.int64)


@intop("qlog_softmax", 3, quantized(_table_type, 0), category="nn", cost=vector(10), typed=True,
       attrs={"axis": AttrSpec("int"), **_dtype_attr()})
def qlog_softmax(node: Node, x: np.ndarray, exp_table: np.ndarray,
                 log_table: np.ndarray) -> np.ndarray:
    """Integer log-softmax: requantize(x - max) - log(sum(e)) / s_out, with e as in qsoftmax and
    log(sum) = (k - 16) * ln 2 + log_table[mantissa]: k the top bit of sum, the 8 bits below it
    index the 256-entry table of round(2**16 * ln(1 + i/256))."""
    axis = node.attrs["axis"]
    d = x.max(axis=axis, keepdims=True).astype(np.int64) - x
    total = exp_lookup(node, d, exp_table).sum(axis=axis, keepdims=True)
    k = np.floor(np.log2(total)).astype(np.int64)  # exact: total is a positive int below 2**53
    k = np.where((np.int64(1) << k) > total, k - 1, k)
    mantissa = (total << 8 >> k) & 255
    log_q16 = (k - EXP_BITS) * LN2_Q16 + log_table.astype(np.int64)[mantissa]
    s_in, s_out = per_tensor(node.inputs[0].type)[0], per_tensor(node.type)[0]
    shifted = arith.requantize(-d, s_in / s_out, 0, I32).astype(np.int64)
    log_sum = arith.requantize(log_q16, 2.0 ** -EXP_BITS / s_out, 0, I32).astype(np.int64)
    return arith.saturate(shifted - log_sum + per_tensor(node.type)[1], node.dtype)


LN2_Q16 = round(math.log(2) * (1 << EXP_BITS))
NORM_BITS, STD_BITS = 16, 8  # normalised values in Q16; the standard deviation in Q8
MEAN_BITS = 6  # x, its mean and variance carry 6 (12) fraction bits: |d| <= 2**22, d^2 <= 2**44
EPS_MAX = 1 << 52  # eps (in squared steps, Q12) saturates 2**8 above any int16 variance


def _norm_type(types: list[TensorType], attrs: Attrs) -> TensorType:
    x, *params = types
    if len({t.shape for t in params}) > 1 or any(t.dtype != I32 for t in params):
        raise OpTypeError("norm parameters: int32 multiplier, shift and bias of one shape")
    return _int_type([x], attrs)


def normalise(node: Node, x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """Integer (x - mean) / sqrt(var + eps) over `axes`, in Q16 (int64): x in Q6 input steps, mean
    and variance divided with rounding, eps in Q12 squared steps (at most EPS_MAX), the standard
    deviation by integer sqrt in Q8. With the `rms` attribute, x itself over its root mean square
    (no centring)."""
    xc = _centred(node, 0, x) << MEAN_BITS
    n = math.prod(x.shape[a] for a in axes)
    d = xc if node.attrs.get("rms") else xc - arith.divide_rounded(xc.sum(axis=axes,
                                                                         keepdims=True), n)
    var = arith.divide_rounded((d * d).sum(axis=axes, keepdims=True), n)
    eps = round(node.attrs["eps"] * (1 << 2 * MEAN_BITS) / per_tensor(node.inputs[0].type)[0] ** 2)
    std = np.maximum(arith.isqrt((var + min(eps, EPS_MAX)) << (2 * (STD_BITS - MEAN_BITS))), 1)
    return arith.divide_rounded(d << (NORM_BITS + STD_BITS - MEAN_BITS), std)


def affine_out(node: Node, norm: np.ndarray, mult: np.ndarray, shift: np.ndarray,
               bias: np.ndarray) -> np.ndarray:
    """zp + sign * multiply_by_multiplier(norm, |mult|, shift) + bias: a norm's per-element gamma
    and beta as a requantization (gamma's sign in mult's sign) and an int32 offset."""
    norm = np.clip(norm, arith.INT32_MIN, arith.INT32_MAX)
    m = mult.astype(np.int64)
    scaled = arith.multiply_by_multiplier(norm, np.abs(m), shift.astype(np.int64))
    y = np.where(m < 0, -scaled, scaled) + bias.astype(np.int64) + per_tensor(node.type)[1]
    return arith.saturate(y, node.dtype)


@intop("qlayer_norm", 4, quantized(_norm_type, 0), category="nn", cost=vector(10), typed=True,
       attrs={"ndim": AttrSpec("int", 1, min=1), "eps": AttrSpec("float", 1e-5),
              "rms": AttrSpec("bool", None), **_dtype_attr()})
def qlayer_norm(node: Node, x: np.ndarray, mult: np.ndarray, shift: np.ndarray,
                bias: np.ndarray) -> np.ndarray:
    """Integer layer norm over the last `ndim` axes (see `normalise`), then per-element gamma and
    beta as int32 multiplier, shift and bias over those axes (see `affine_out`)."""
    norm = normalise(node, x, tuple(range(x.ndim - node.attrs["ndim"], x.ndim)))
    return affine_out(node, norm, mult, shift, bias)


@intop("qgroup_norm", 4, quantized(_norm_type, 0), category="nn", cost=vector(10), typed=True,
       attrs={"groups": AttrSpec("int", min=1), "eps": AttrSpec("float", 1e-5), **_dtype_attr()})
def qgroup_norm(node: Node, x: np.ndarray, mult: np.ndarray, shift: np.ndarray,
                bias: np.ndarray) -> np.ndarray:
    """Integer group norm: each group of channels normalised over (its channels, spatial), then
    per-channel (axis 1) multiplier, shift and bias."""
    grouped = x.reshape(x.shape[0], node.attrs["groups"], -1)
    norm = normalise(node, grouped, (2,)).reshape(x.shape)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return affine_out(node, norm, mult.reshape(shape), shift.reshape(shape), bias.reshape(shape))
