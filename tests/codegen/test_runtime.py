"""The C runtime (`codegen/runtime/npuc_runtime.h`) against the Python spec `npuc.quant.arith`,
value by value: one small driver is compiled once and fed hypothesis-chosen batches."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import npuc.codegen
from npuc.ir import DType
from npuc.quant import arith

RUNTIME = Path(npuc.codegen.__file__).parent / "runtime"
DRIVER = r"""
#include <stdio.h>
#include <string.h>
#include "npuc_runtime.h"
/* each line: a function name and its operands; prints the result */
int main(void) {
    char fn[32];
    long long a, b, c;
    float x, s;
    while (scanf("%31s", fn) == 1) {
        if (!strcmp(fn, "srdhm") && scanf("%lld %lld", &a, &b) == 2)
            printf("%lld\n", (long long)npuc_srdhm(a, b));
        else if (!strcmp(fn, "shift") && scanf("%lld %lld", &a, &b) == 2)
            printf("%lld\n", (long long)npuc_round_shift(a, (int)b));
        else if (!strcmp(fn, "mult") && scanf("%lld %lld %lld", &a, &b, &c) == 3)
            printf("%lld\n", (long long)npuc_mul_by_mult(a, b, (int)c));
        else if (!strcmp(fn, "div") && scanf("%lld %lld", &a, &b) == 2)
            printf("%lld\n", (long long)npuc_div_round(a, b));
        else if (!strcmp(fn, "isqrt") && scanf("%lld", &a) == 1)
            printf("%lld\n", (long long)npuc_isqrt(a));
        else if (!strcmp(fn, "quant") && scanf("%a %a %lld", &x, &s, &a) == 3)
            printf("%lld\n", (long long)npuc_quantize(x, s, a, -128, 127));
        else if (!strcmp(fn, "dequant") && scanf("%lld %a %lld", &a, &s, &b) == 3)
            printf("%a\n", (double)npuc_dequantize(a, s, b));
        else return 1;
    }
    return 0;
}
"""

INT32 = st.integers(arith.INT32_MIN, arith.INT32_MAX)
FLOAT = st.floats(-1e6, 1e6, width=32, allow_nan=False) | st.sampled_from(
    [0.5, -0.5, 1.5, -2.5, float("inf"), float("-inf"), float("nan")])


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("runtime")
    (folder / "driver.c").write_text(DRIVER)
    exe = folder / "driver"
    subprocess.run(["gcc", "-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-fsanitize=undefined",
                    "-fno-sanitize-recover=all", f"-I{RUNTIME}", str(folder / "driver.c"), "-o",
                    str(exe), "-lm"], check=True)
    return exe


def call(driver: Path, lines: list[str]) -> list[str]:
    result = subprocess.run([str(driver)], input="\n".join(lines) + "\n", capture_output=True,
                            text=True, check=True)
    return result.stdout.split()


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(INT32, INT32, st.integers(-31, 30), st.integers(0, 40)), min_size=1,
                max_size=50))
def test_fixed_point_matches_the_spec(driver: Path, cases: list) -> None:
    lines, expected = [], []
    for a, b, shift, e in cases:
        m = abs(b) if b != arith.INT32_MIN else arith.INT32_MAX
        lines += [f"srdhm {a} {b}", f"shift {a} {e}", f"mult {a} {m} {shift}",
                  f"div {a} {max(abs(b), 1)}", f"isqrt {abs(a) * abs(b)}"]
        expected += [arith.srdhm(a, b), arith.rounding_right_shift(a, e),
                     arith.multiply_by_multiplier(a, m, shift),
                     arith.divide_rounded(a, max(abs(b), 1)), arith.isqrt(abs(a) * abs(b))]
    assert call(driver, lines) == [str(int(v)) for v in expected]


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(FLOAT, st.floats(2.0 ** -20, 1024.0, width=32), st.integers(-128, 127)),
                min_size=1, max_size=50))
def test_quantize_and_dequantize_match_the_spec(driver: Path, cases: list) -> None:
    lines, expected = [], []
    for x, scale, zp in cases:
        lines += [f"quant {float(x).hex()} {float(scale).hex()} {zp}",
                  f"dequant {zp + 3} {float(scale).hex()} {zp}"]
        expected += [str(int(arith.quantize(np.float32(x), scale, zp, DType.I8))),
                     float(arith.dequantize(zp + 3, scale, zp)).hex()]
    got = call(driver, lines)
    assert got[0::2] == expected[0::2]
    assert [float.fromhex(v) for v in got[1::2]] == [float.fromhex(v) for v in expected[1::2]]
