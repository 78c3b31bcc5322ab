"""The integer arithmetic spec (npuc.quant.arith) against exact rational arithmetic.

Properties from the quantization issue: requantization lands within 1 LSB of the exact real result
for every multiplier in (0, 1) and every int32 accumulator; no intermediate overflows for any legal
operand (numpy int64 would wrap silently, so results are checked against Python's unbounded ints).
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npuc.ir import DType
from npuc.quant import arith

int32s = st.integers(arith.INT32_MIN, arith.INT32_MAX)
unit_multipliers = st.floats(min_value=2.0 ** -40, max_value=1.0, exclude_max=True)


def round_half_away(q: Fraction) -> int:
    magnitude = int(abs(q) + Fraction(1, 2))  # floor(|q| + 1/2)
    return magnitude if q >= 0 else -magnitude


def srdhm_reference(a: int, b: int) -> int:
    """gemmlowp's SaturatingRoundingDoublingHighMul, in unbounded Python ints."""
    if a == b == arith.INT32_MIN:
        return arith.INT32_MAX
    ab = a * b
    nudge = (1 << 30) if ab >= 0 else 1 - (1 << 30)
    total = ab + nudge
    return total // (1 << 31) if total >= 0 else -((-total) // (1 << 31))


@given(int32s, unit_multipliers)
@settings(deadline=None)
def test_requantize_within_one_lsb(acc: int, real: float) -> None:
    mult, shift = arith.quantize_multiplier(real)
    got = int(arith.multiply_by_multiplier(np.array([acc]), mult, shift)[0])
    assert abs(got - acc * Fraction(real)) <= 1


@given(st.floats(min_value=2.0 ** -31, max_value=2.0 ** 29, allow_nan=False))
def test_multiplier_has_31_bits(real: float) -> None:
    mult, shift = arith.quantize_multiplier(real)
    assert (1 << 30) <= mult < (1 << 31)
    assert abs(Fraction(mult) * Fraction(2) ** (shift - 31) - Fraction(real)) <= \
        Fraction(2) ** (shift - 32)


def test_multiplier_edges() -> None:
    assert arith.quantize_multiplier(0.0) == (0, 0)
    assert arith.quantize_multiplier(2.0 ** -40) == (0, 0)  # rounds every int32 to 0 anyway
    with pytest.raises(ValueError, match="positive"):
        arith.quantize_multiplier(-1.0)
    assert arith.quantize_multiplier(2.0 ** 31) == (arith.INT32_MAX, 30)
    huge = arith.multiply_by_multiplier(np.array([-2, 0, 1]), arith.INT32_MAX, 30)
    assert huge.tolist() == [-arith.INT32_MAX, 0, 1 << 30]  # x * (2**31 - 1) / 2, rounded


@given(int32s, int32s)
def test_srdhm_never_overflows(a: int, b: int) -> None:
    got = int(arith.srdhm(np.array([a]), np.array([b]))[0])
    assert got == srdhm_reference(a, b)
    assert arith.INT32_MIN <= got <= arith.INT32_MAX


@given(int32s, st.integers(0, 31))
def test_rounding_right_shift_is_nearest_ties_away(x: int, exponent: int) -> None:
    got = int(arith.rounding_right_shift(np.array([x]), exponent)[0])
    assert got == round_half_away(Fraction(x, 1 << exponent))


@given(int32s, st.floats(min_value=1.0, max_value=2.0 ** 29))
def test_multipliers_above_one_round_once(acc: int, real: float) -> None:
    """Multipliers >= 1 (rescaling up) multiply in int64 and round once: nearest, ties away."""
    mult, shift = arith.quantize_multiplier(real)
    got = int(arith.multiply_by_multiplier(np.array([acc]), mult, shift)[0])
    assert got == round_half_away(Fraction(acc * mult) / 2 ** (31 - shift))
    assert abs(got - acc * Fraction(real)) <= Fraction(1, 2) + abs(acc) * Fraction(real) / 2 ** 30


@given(st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=1,
                max_size=32),
       st.floats(min_value=1e-4, max_value=10.0), st.integers(-128, 127),
       st.sampled_from([DType.I8, DType.I16, DType.U8]))
def test_quantize_rounds_and_saturates(values: list[float], scale: float, zp: int,
                                       dtype: DType) -> None:
    lo, hi = arith.dtype_range(dtype)
    zp = min(max(zp, lo), hi)
    x = np.array(values, dtype=np.float32)
    q = arith.quantize(x, scale, zp, dtype)
    assert q.dtype == dtype.numpy
    v = x.astype(np.float32) / np.float32(scale)
    for xi, vi, qi in zip(x, v, q, strict=True):
        if np.isnan(xi):
            assert qi == zp
        elif lo - zp <= np.rint(vi) <= hi - zp:
            assert qi == np.rint(vi) + zp  # ties to even, as C's rintf
        else:
            assert qi == (lo if vi < 0 else hi)


@given(st.integers(-128, 127), st.floats(min_value=1e-4, max_value=10.0), st.integers(-128, 127))
def test_dequantize_inverts_quantize(q: int, scale: float, zp: int) -> None:
    real = arith.dequantize(np.array([q], np.int8), scale, zp)
    assert real.dtype == np.float32
    assert arith.quantize(real, scale, zp, DType.I8)[0] == q


@given(st.integers(0, (1 << 62) - 1))
def test_isqrt_is_exact(v: int) -> None:
    r = int(arith.isqrt(np.array([v]))[0])
    assert r * r <= v < (r + 1) * (r + 1)


@given(st.integers(-(1 << 40), 1 << 40), st.integers(1, 1 << 20))
def test_divide_rounded(n: int, d: int) -> None:
    assert int(arith.divide_rounded(np.array([n]), d)[0]) == round_half_away(Fraction(n, d))


@given(st.lists(st.integers(-(1 << 20), 1 << 20), min_size=513, max_size=513),
       st.integers(-32768, 32767))
def test_interpolated_lookup(table: list[int], x: int) -> None:
    """TOSA's TABLE: base + round((next - base) * frac / 128), ties up, saturated."""
    u = x + 32768
    base, nxt, frac = table[u >> 7], table[min((u >> 7) + 1, 512)], u & 127
    want = base + ((nxt - base) * frac + 64 >> 7)
    got = int(arith.lookup(np.array([x], np.int16), np.array(table), DType.I32)[0])
    assert got == want


def test_direct_lookup_indexes_every_code() -> None:
    table = np.arange(256, dtype=np.int64) - 100
    signed = np.arange(-128, 128).astype(np.int8)
    assert np.array_equal(arith.lookup(signed, table, DType.I16), table)
    unsigned = np.arange(256).astype(np.uint8)
    assert np.array_equal(arith.lookup(unsigned, table, DType.I16), table)


@given(st.floats(-1e3, 0.0), st.floats(0.0, 1e3), st.sampled_from([DType.I8, DType.I16]))
def test_qparams_cover_the_range_and_hold_zero(lo: float, hi: float, dtype: DType) -> None:
    symmetric = dtype == DType.I16
    q = arith.qparams(lo, hi, dtype, symmetric)
    scale, zp = q.scale[0], q.zero_point[0]
    qmin, qmax = arith.dtype_range(dtype)
    assert scale > 0 and qmin <= zp <= qmax
    assert arith.dequantize(np.array([zp]), scale, zp)[0] == 0  # zero is exact
    if hi - lo > 1e-6:
        assert scale * (qmin - zp) <= lo + scale and scale * (qmax - zp) >= hi - scale
    if symmetric:
        assert zp == 0
