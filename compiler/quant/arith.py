"""The integer arithmetic every quantized op is built from: the one spec that the interpreter, the
simulator and the generated C share. Change a rule here and every consumer changes with it.

    real value      = scale * (q - zero_point)
    quantize(x)     = clamp(rint(x / scale) + zero_point)   float32 ops; ties to even; NaN -> zp
    dequantize(q)   = float32(q - zero_point) * float32(scale)
    requantize(acc) = rounding_right_shift(srdhm(acc, multiplier), -shift)       shift <= 0
                      rounding_right_shift(acc * multiplier, 31 - shift)           shift > 0
                      with real_multiplier = multiplier * 2**(shift - 31)  (gemmlowp/TFLite's
                      "double rounding" below 1; one rounding for multipliers of 1 and more)

`srdhm(a, b)` is gemmlowp's SaturatingRoundingDoublingHighMul: the high 32 bits of 2*a*b, rounded
to nearest with ties away from zero, saturating the one overflowing case a = b = INT32_MIN.
`rounding_right_shift(x, e)` is gemmlowp's RoundingDivideByPOT: x / 2**e rounded to nearest, ties
away from zero. Both take int32 operands; numpy computes them in int64, where no intermediate can
overflow (|a * b| <= 2**62), and C does the same with int64_t.

Within 1 LSB: for a real multiplier in (0, 1) and any int32 accumulator, `requantize` differs
from the exact product by at most 1 (multiplier rounding <= 2**shift / 2, srdhm rounding <= 2**shift
/ 2, the final shift's rounding <= 1/2, and shift <= -1 whenever the last rounding happens).
"""

from __future__ import annotations

import math

import numpy as np

from ..ir import DType, QuantParams

INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1


def dtype_range(dtype: DType) -> tuple[int, int]:
    """The representable integers of an integer dtype (i4 is [-8, 7], u4 [0, 15])."""
    if dtype.is_float or dtype == DType.BOOL:
        raise TypeError(f"{dtype} is not an integer dtype")
    if dtype in (DType.U8, DType.U4):
        return 0, (1 << dtype.bits) - 1
    return -(1 << (dtype.bits - 1)), (1 << (dtype.bits - 1)) - 1


def saturate(x: np.ndarray, dtype: DType) -> np.ndarray:
    """Clamp to the dtype's range and store in its numpy type."""
    lo, hi = dtype_range(dtype)
    return np.clip(x, lo, hi).astype(dtype.numpy)


def quantize_multiplier(real: float) -> tuple[int, int]:
    """(multiplier, shift) with real == multiplier * 2**(shift - 31) to 31 bits, multiplier in
    [2**30, 2**31). Reals too small for a shift of -31 give (0, 0): their products round to 0;
    reals of 2**30 and more give the largest pair, since every nonzero product saturates."""
    if not real > 0 or not math.isfinite(real):
        if real == 0:
            return 0, 0
        raise ValueError(f"a requantization multiplier must be positive and finite, got {real}")
    mantissa, exponent = math.frexp(real)  # real = mantissa * 2**exponent, mantissa in [0.5, 1)
    multiplier = math.floor(mantissa * (1 << 31) + 0.5)
    if multiplier == 1 << 31:
        multiplier, exponent = multiplier // 2, exponent + 1
    if exponent < -31:
        return 0, 0
    if exponent > 30:  # any nonzero product saturates anyway: keep the largest multiplier
        return INT32_MAX, 30
    return multiplier, exponent


def srdhm(a: np.ndarray, b: np.ndarray | int) -> np.ndarray:
    """gemmlowp's SaturatingRoundingDoublingHighMul of int32 values, as int64."""
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    total = a * b
    negative = total >> 63  # -1 where the product is negative, else 0 (branch-free, as in C)
    total += (1 << 30) + (negative & (1 - (1 << 31)))  # nudge: 2**30, or 1 - 2**30
    total += (total >> 63) & ((1 << 31) - 1)  # C's division truncates toward zero
    total >>= 31
    overflow = (a == INT32_MIN) & (b == INT32_MIN)
    return np.where(overflow, INT32_MAX, total) if overflow.any() else total


def rounding_right_shift(x: np.ndarray, exponent: np.ndarray | int) -> np.ndarray:
    """gemmlowp's RoundingDivideByPOT: x / 2**exponent, nearest, ties away from zero (int64)."""
    x = np.asarray(x, dtype=np.int64)
    exponent = np.asarray(exponent, dtype=np.int64)
    mask = (np.int64(1) << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0)
    return (x >> exponent) + (remainder > threshold)


def multiply_by_multiplier(x: np.ndarray, multiplier: np.ndarray | int,
                           shift: np.ndarray | int) -> np.ndarray:
    """x * multiplier * 2**(shift - 31), rounded as the module docstring says, for int32 x. A
    multiplier >= 1 (shift > 0) rounds once instead: rounding_right_shift(x * multiplier,
    31 - shift), exact in int64 since |x * multiplier| < 2**62."""
    shift = np.asarray(shift, dtype=np.int64)
    x = np.asarray(x, dtype=np.int64)
    down = rounding_right_shift(srdhm(x, multiplier), np.maximum(-shift, 0))
    if not np.any(shift > 0):
        return down
    up = rounding_right_shift(x * np.asarray(multiplier, dtype=np.int64),
                              31 - np.maximum(shift, 0))
    return np.where(shift > 0, up, down)


def requantize(acc: np.ndarray, real_multiplier: float | np.ndarray, zero_point: int,
               dtype: DType, axis: int | None = None) -> np.ndarray:
    """acc (int32 values, any integer array) scaled by `real_multiplier` (one per channel along
    `axis` when an array), plus `zero_point`, saturated to `dtype`."""
    mult, shift = multipliers(real_multiplier)
    if axis is not None and mult.size > 1:
        shape = [1] * acc.ndim
        shape[axis] = -1
        mult, shift = mult.reshape(shape), shift.reshape(shape)
    return saturate(multiply_by_multiplier(acc, mult, shift) + zero_point, dtype)


def multipliers(real: float | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised `quantize_multiplier`: (multiplier, shift) int64 arrays of real's shape."""
    real = np.asarray(real, dtype=np.float64)
    pairs = [quantize_multiplier(float(r)) for r in real.ravel()]
    mult = np.array([p[0] for p in pairs], dtype=np.int64).reshape(real.shape)
    shift = np.array([p[1] for p in pairs], dtype=np.int64).reshape(real.shape)
    return mult, shift


def quantize(x: np.ndarray, scale: float, zero_point: int, dtype: DType) -> np.ndarray:
    """float32 -> integer: IEEE float32 division, ties-to-even rounding; NaN -> zero_point."""
    lo, hi = dtype_range(dtype)
    v = np.rint(np.asarray(x, dtype=np.float32) / np.float32(scale))
    v = np.clip(v, lo - zero_point, hi - zero_point)
    v = np.where(np.isnan(v), np.float32(0), v)
    # float32 rounds int32's bounds up to 2**31: clamp again once in integers
    return np.clip(v.astype(np.int64) + zero_point, lo, hi).astype(dtype.numpy)


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """integer -> float32: float32(q - zero_point) * float32(scale)."""
    centred = (np.asarray(q, dtype=np.int64) - zero_point).astype(np.float32)
    return centred * np.float32(scale)


def divide_rounded(numerator: np.ndarray, denominator: np.ndarray | int) -> np.ndarray:
    """numerator / denominator (> 0), nearest, ties away from zero (int64)."""
    n = np.asarray(numerator, dtype=np.int64)
    d = np.asarray(denominator, dtype=np.int64)
    magnitude = (np.abs(n) + d // 2) // d
    return np.where(n < 0, -magnitude, magnitude)


def isqrt(v: np.ndarray) -> np.ndarray:
    """floor(sqrt(v)) of non-negative int64 values, exactly (float sqrt, then corrected)."""
    v = np.asarray(v, dtype=np.int64)
    r = np.floor(np.sqrt(v.astype(np.float64))).astype(np.int64)
    for _ in range(2):  # float64 sqrt is off by at most 1 below 2**62; two fixes are plenty
        r = np.where(r * r > v, r - 1, r)
        r = np.where((r + 1) * (r + 1) <= v, r + 1, r)
    return r


def lookup(x: np.ndarray, table: np.ndarray, dtype: DType) -> np.ndarray:
    """Table lookup of 8- or 16-bit integers. A 256-entry table maps int8 (index x + 128) or uint8
    (index x) directly. A 513-entry table interpolates int16 x (TOSA's TABLE): index
    (x + 32768) >> 7, fraction (x + 32768) & 127, result rounded to nearest (ties up)."""
    offset = 0 if np.asarray(x).dtype == np.uint8 else 128
    x = np.asarray(x, dtype=np.int64)
    t = np.asarray(table, dtype=np.int64)
    if t.size == 256:
        return saturate(t[x + offset], dtype)
    if t.size != 513:
        raise ValueError(f"a lookup table has 256 or 513 entries, not {t.size}")
    u = x + 32768
    base, frac = t[u >> 7], u & 127
    step = t[np.minimum((u >> 7) + 1, 512)] - base
    return saturate(base + ((step * frac + 64) >> 7), dtype)


def qparams(lo: float, hi: float, dtype: DType, symmetric: bool = False) -> QuantParams:
    """Scale and zero point covering [lo, hi] (which contains 0) on dtype's grid; symmetric uses
    zero point 0 and the grid [-qmax, qmax], as int16 activations and all weights do."""
    qmin, qmax = dtype_range(dtype)
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if symmetric:
        scale = max(-lo, hi) / qmax
        return QuantParams((_positive(scale),), (0,))
    scale = _positive((hi - lo) / (qmax - qmin))
    zero_point = int(np.clip(round(qmin - lo / scale), qmin, qmax))
    return QuantParams((scale,), (zero_point,))


def _positive(scale: float) -> float:
    return scale if scale > 1e-12 else 1e-12  # an all-zero tensor still needs a usable scale
