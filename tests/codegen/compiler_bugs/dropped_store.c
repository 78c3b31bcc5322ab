/* GCC 12.2 wrong code, reduced from the generated C of all-MiniLM-L6-v2: with -O1, -O2 or -O3
 * the call `layer()` is deleted as if it had no side effects, and main prints 0. Valid C: a
 * char-typed store may modify any object (C99 6.5p7), and the loads stay inside `arena`.
 * GCC 11 and clang 14 print 1; so does GCC 12 with -fno-tree-loop-optimize or -fno-ivopts.
 *
 *   gcc -std=c99 -O2 dropped_store.c && ./a.out            # GCC 12.2: 0 (wrong)
 *   gcc -std=c99 -O2 -DOPAQUE_BASE dropped_store.c && ./a.out   # 1: what npuc's C does
 *
 * With OPAQUE_BASE the function reaches the array through a volatile pointer, as every layer
 * of npuc's generated model.c does, and no compiler can tell which object it stores into. */
#include <stdint.h>
#include <stdio.h>

static int64_t arena[64];
#ifdef OPAQUE_BASE
static uint8_t *volatile const arena_base = (uint8_t *)arena;
#define BASE arena_base
#else
#define BASE ((uint8_t *)arena)
#endif

__attribute__((noinline)) static void layer(void) {
    uint8_t *const a = BASE;
    for (int i = 0; i < 32; ++i) {
        const int64_t v = ((int64_t *)(a + 256))[i];
        a[i] = (uint8_t)(v != 0);
    }
}

int main(void) {
    for (int i = 0; i < 32; ++i) arena[32 + i] = 1;
    layer();
    printf("%d\n", ((uint8_t *)arena)[5]);
    return ((uint8_t *)arena)[5] == 1 ? 0 : 1;
}
