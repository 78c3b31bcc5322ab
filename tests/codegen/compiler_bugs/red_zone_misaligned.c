/* GCC 12.2 wrong code, reduced from npuc's generated depthwise conv (dsp-int16, the test
 * tests/codegen/test_gemm.py::test_geometries_bit_exact[sequence-dsp-int16]):
 *
 *   gcc -std=c99 -O2 -mavx512f -mavx512bw -mavx512vl red_zone_misaligned.c && ./a.out
 *
 * SIGSEGV on an AVX-512 machine (seen on AMD Zen 4 with -march=native). `layer` sets up a frame
 * pointer (push %rbp; mov %rsp,%rbp), pushes three more registers and places the local `acc` in
 * the red zone at -96(%rsp) = -120(%rbp): 8 mod 16, since %rbp is 16-aligned. Its vectorised
 * loop then stores to it with vmovdqa, which faults on an address that is not 16-aligned. The
 * C is valid (every access in bounds, every value initialised); GCC 11 places `acc` at 0 mod 16,
 * clang realigns the stack. Without -mavx512* the frame has no %rbp and `acc` is aligned.
 *
 * Since then npuc's generated C has no arrays with automatic storage: every buffer, the
 * depthwise row accumulator included, is static scratch at a planned, aligned arena offset
 * (tests/codegen/test_compilers.py checks this). */
#include <stdint.h>
#define NPUC_INT32_MIN (-2147483647LL - 1)
#define NPUC_INT32_MAX 2147483647LL
static inline int64_t npuc_clamp(int64_t x, int64_t lo, int64_t hi) {
    return x < lo ? lo : x > hi ? hi : x;
}
static inline int64_t npuc_sat32(int64_t x) {
    return npuc_clamp(x, NPUC_INT32_MIN, NPUC_INT32_MAX);
}
static inline int64_t npuc_srdhm(int64_t a, int64_t b) {
    int64_t total = a * b;
    total += total >= 0 ? (1LL << 30) : 1 - (1LL << 30);
    if (total < 0) total += (1LL << 31) - 1;
    return total >> 31;
}
static inline int64_t npuc_round_shift(int64_t x, int e) {
    int64_t mask = (int64_t)((1ULL << e) - 1);
    int64_t threshold = (mask >> 1) + (x < 0);
    return (x >> e) + ((x & mask) > threshold);
}
static inline int64_t npuc_mul_by_mult(int64_t x, int64_t multiplier, int shift) {
    if (shift > 0) return npuc_round_shift(x * multiplier, 31 - shift);
    return npuc_round_shift(npuc_srdhm(x, multiplier), -shift);
}
static inline int64_t npuc_requantize(int64_t acc, int64_t multiplier, int shift, int64_t zp,
                                      int64_t lo, int64_t hi) {
    return npuc_clamp(npuc_mul_by_mult(acc, multiplier, shift) + zp, lo, hi);
}
static int64_t npuc_arena_words[1000];
static uint8_t *volatile const npuc_arena_base = (uint8_t *)npuc_arena_words;
const int8_t w6[24]; const int32_t m4[8], s2[8], b5[8];
void layer(void) {
    uint8_t *const npuc_arena = npuc_arena_base;
    {
        int16_t *const y = ((int16_t *)(npuc_arena + 0));
        const int8_t *const w = w6;
        int16_t *const xp = ((int16_t *)(npuc_arena + 2832));
        int32_t acc[24];
        const int32_t *const mult = m4;
        const int32_t *const shift = s2;
        const int32_t *const bias = b5;
        for (int n = 0; n < 2; ++n) {
            for (int g = 0; g < 8; ++g) {
                for (int j = 0; j < 1; ++j) {
                    const int o = g * 1 + j;
                    int16_t *const out = y + n * 152 + o * 19;
                    for (int ql = 0; ql < 24; ++ql) acc[ql] = 0;
                    for (int t0 = 0; t0 < 3; ++t0) {
                        const int tap = t0;
                        const int32_t wv = w[o * 3 + tap];
                        const int16_t *const s = xp + t0;
                        for (int ql = 0; ql < 24; ++ql) acc[ql] += wv * s[ql * 1];
                    }
                    for (int ql = 0; ql < 19; ++ql) out[ql] = (int16_t)npuc_requantize(npuc_sat32((int64_t)acc[ql] + bias[o]), mult[o], (int)shift[o], 0, -32768LL, 32767LL);
                }
            }
        }
    }
}
int main(void) {
    layer();
    return 0;
}
