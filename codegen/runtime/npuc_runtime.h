/* npuc runtime: the integer arithmetic of npuc.quant.arith, in C99.
 *
 * Every function mirrors one function of npuc/quant/arith.py bit for bit; the tests compile this
 * header and compare it with the Python spec on random values. Shifts of negative numbers are
 * arithmetic (as on every compiler npuc targets); left shifts are written as multiplications
 * because shifting a negative value left is undefined in C. */
#ifndef NPUC_RUNTIME_H
#define NPUC_RUNTIME_H

#include <math.h>
#include <stdint.h>

/* The element types of generated code. The arena holds tensors of every type in turn, which C's
 * effective-type rules allow only through character types; GCC and clang give these names the
 * aliasing of a character type (may_alias), so the code is correct with or without
 * -fstrict-aliasing (the default at -O2). Compilers without the attribute do no type-based alias
 * analysis that would need it (MSVC), or must be given -fno-strict-aliasing. */
#if defined(__GNUC__)
#define NPUC_MAY_ALIAS __attribute__((__may_alias__))
#else
#define NPUC_MAY_ALIAS
#endif
typedef int8_t npuc_i8 NPUC_MAY_ALIAS;
typedef uint8_t npuc_u8 NPUC_MAY_ALIAS;
typedef int16_t npuc_i16 NPUC_MAY_ALIAS;
typedef int32_t npuc_i32 NPUC_MAY_ALIAS;
typedef int64_t npuc_i64 NPUC_MAY_ALIAS;
typedef uint64_t npuc_u64 NPUC_MAY_ALIAS;
typedef float npuc_f32 NPUC_MAY_ALIAS;

/* The rows a GEMM with 8-bit activations and constant weights multiplies: unsigned bytes
 * x + 128 where the CPU has a u8 x s8 dot product that compilers emit from the plain loop
 * (AVX-512 VNNI, AVX-VNNI: vpdpbusd), else centred int16 x - zp (AVX2 pmaddwd, NEON smlal;
 * u8 rows there are multiplied in 16 bits and widened, 3x slower). Both are exact and give the
 * same results; -DNPUC_U8_ROWS=0 or =1 picks one by hand. */
#ifndef NPUC_U8_ROWS
#if defined(__AVX512VNNI__) || defined(__AVXVNNI__)
#define NPUC_U8_ROWS 1
#else
#define NPUC_U8_ROWS 0
#endif
#endif
#if NPUC_U8_ROWS
typedef uint8_t npuc_row8 NPUC_MAY_ALIAS;
#else
typedef int16_t npuc_row8 NPUC_MAY_ALIAS;
#endif

/* The index of the lowest set bit of a nonzero word (the sparse GEMM walks its weight bitmap
 * with it): one tzcnt/bsf where the compiler has the builtin. */
static inline int npuc_ctz64(uint64_t v) {
#if defined(__GNUC__)
    return __builtin_ctzll(v);
#else
    int n = 0;
    while (!(v & 1)) {
        v >>= 1;
        ++n;
    }
    return n;
#endif
}

#define NPUC_INT32_MIN (-2147483647LL - 1)
#define NPUC_INT32_MAX 2147483647LL

static inline int64_t npuc_clamp(int64_t x, int64_t lo, int64_t hi) {
    return x < lo ? lo : x > hi ? hi : x;
}

static inline int64_t npuc_sat32(int64_t x) {
    return npuc_clamp(x, NPUC_INT32_MIN, NPUC_INT32_MAX);
}

/* gemmlowp's SaturatingRoundingDoublingHighMul of two int32 values. */
static inline int64_t npuc_srdhm(int64_t a, int64_t b) {
    int64_t total;
    if (a == NPUC_INT32_MIN && b == NPUC_INT32_MIN) return NPUC_INT32_MAX;
    total = a * b;
    total += total >= 0 ? (1LL << 30) : 1 - (1LL << 30);
    /* C division truncates toward zero: bias negative totals before the arithmetic shift */
    if (total < 0) total += (1LL << 31) - 1;
    return total >> 31;
}

/* gemmlowp's RoundingDivideByPOT: x / 2**e, nearest, ties away from zero (0 <= e <= 62). */
static inline int64_t npuc_round_shift(int64_t x, int e) {
    int64_t mask = (int64_t)((1ULL << e) - 1);
    int64_t threshold = (mask >> 1) + (x < 0);
    return (x >> e) + ((x & mask) > threshold);
}

/* x * multiplier * 2**(shift - 31): double rounding below 1, one rounding from 1 up. */
static inline int64_t npuc_mul_by_mult(int64_t x, int64_t multiplier, int shift) {
    if (shift > 0) return npuc_round_shift(x * multiplier, 31 - shift);
    return npuc_round_shift(npuc_srdhm(x, multiplier), -shift);
}

/* requantize: an int32 accumulator to zp + acc * real, saturated to [lo, hi]. */
static inline int64_t npuc_requantize(int64_t acc, int64_t multiplier, int shift, int64_t zp,
                                      int64_t lo, int64_t hi) {
    return npuc_clamp(npuc_mul_by_mult(acc, multiplier, shift) + zp, lo, hi);
}

/* n / d (d > 0), nearest, ties away from zero. */
static inline int64_t npuc_div_round(int64_t n, int64_t d) {
    int64_t magnitude = ((n < 0 ? -n : n) + d / 2) / d;
    return n < 0 ? -magnitude : magnitude;
}

/* floor(sqrt(v)) of v >= 0, exactly: float sqrt, then corrected. */
static inline int64_t npuc_isqrt(int64_t v) {
    int64_t r = (int64_t)floor(sqrt((double)v));
    int i;
    for (i = 0; i < 2; ++i) {
        if (r * r > v) r -= 1;
        if ((r + 1) * (r + 1) <= v) r += 1;
    }
    return r;
}

/* float32 -> integer: rint(x / scale) (ties to even) + zp, clamped; NaN -> zp. */
static inline int64_t npuc_quantize(float x, float scale, int64_t zp, int64_t lo, int64_t hi) {
    float v = nearbyintf(x / scale);
    float low = (float)(lo - zp), high = (float)(hi - zp);
    if (v != v) v = 0.0f;
    v = v < low ? low : v > high ? high : v;
    return npuc_clamp((int64_t)v + zp, lo, hi);
}

/* integer -> float32: float32(q - zp) * scale. */
static inline float npuc_dequantize(int64_t q, float scale, int64_t zp) {
    return (float)(q - zp) * scale;
}

/* TOSA TABLE: a 513-entry table interpolated at int16 x, rounded to nearest (ties up). */
static inline int64_t npuc_lookup513(int64_t x, const int32_t *table) {
    int64_t u = x + 32768, index = u >> 7, base = table[index];
    int64_t step = table[index < 512 ? index + 1 : 512] - base;
    return base + ((step * (u & 127) + 64) >> 7);
}

#endif
