"""The generated C is right under any compiler and flags a user may pick, whatever this machine's
CPU: the Makefile's defaults, -O1/-O2/-O3, -march=native and portable x86-64, gcc and clang,
strict aliasing on (the -O2 default); memory-safe under valgrind on a portable build (valgrind
runs any x86-64 code, AVX-512 excepted, so the portable build is what it checks everywhere).

The two GCC 12 miscompiles found so far are reduced in tests/codegen/compiler_bugs/: a call
dropped as if it had no side effects (dropped_store.c; the generated C's opaque arena base
defeats it) and a local array misaligned in the red zone on AVX-512 machines
(red_zone_misaligned.c; the generated C declares no local arrays)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

import npuc.codegen
from tests.codegen.harness import WARNINGS, assert_bit_exact
from tests.codegen.test_zoo import compiled

BUGS = Path(__file__).parent / "compiler_bugs"
COMPILERS = [cc for cc in ("gcc", "clang") if shutil.which(cc)]

# (compiler, CFLAGS, ARCH); None keeps the Makefile's own (-O3 -Wall -Wextra -Werror, native)
FLAG_SETS = {
    "make-defaults": ("gcc", None, None),
    "gcc-O1-portable": ("gcc", f"{WARNINGS} -O1", "-march=x86-64"),
    "gcc-O2-portable": ("gcc", f"{WARNINGS} -O2", "-march=x86-64"),
    "gcc-O2-native": ("gcc", f"{WARNINGS} -O2", "-march=native"),
    "gcc-O3-portable": ("gcc", f"{WARNINGS} -O3", "-march=x86-64"),
    "clang-O2-native": ("clang", f"{WARNINGS} -O2", "-march=native"),
    "clang-O3-portable": ("clang", f"{WARNINGS} -O3", "-march=x86-64"),
    # the GEMM row layout each CPU family gets by default, forced either way (NPUC_U8_ROWS)
    "gcc-O3-u8-rows-portable": ("gcc", f"{WARNINGS} -O3 -DNPUC_U8_ROWS=1", "-march=x86-64"),
    "clang-O2-i16-rows-native": ("clang", f"{WARNINGS} -O2 -DNPUC_U8_ROWS=0", "-march=native"),
}
# depthwise and grouped convs, pools, concat (int8); attention, softmax, LayerNorm, GELU (int16)
MODELS = [("mobilenetv2_block", "npu-int8"), ("attention_block", "dsp-int16")]


def test_tools_present() -> None:
    """clang and valgrind are part of the matrix (.ci/run installs them): their absence is a
    failure, not a skip."""
    assert COMPILERS == ["gcc", "clang"]
    assert shutil.which("valgrind")


@pytest.mark.parametrize("flags", list(FLAG_SETS))
@pytest.mark.parametrize(("name", "target"), MODELS)
def test_flag_matrix_bit_exact(name: str, target: str, flags: str, tmp_path: Path) -> None:
    cc, cflags, arch = FLAG_SETS[flags]
    cm, inputs = compiled(name, target)
    assert_bit_exact(cm, inputs, tmp_path, cflags=cflags, cc=cc, arch=arch)


@pytest.mark.parametrize("rows", [0, 1])
@pytest.mark.parametrize(("name", "target"), MODELS)
def test_valgrind_is_clean(name: str, target: str, rows: int, tmp_path: Path) -> None:
    cm, inputs = compiled(name, target)
    assert_bit_exact(cm, inputs, tmp_path, cflags=f"{WARNINGS} -O2 -g -DNPUC_U8_ROWS={rows}",
                     arch="-march=x86-64", wrapper=["valgrind", "-q", "--error-exitcode=99"])


# a declaration of an array inside a function: a C type, a name, then [
LOCAL_ARRAY = re.compile(r"^[ \t]+(?:const\s+)?(?:npuc_\w+|u?int\d+_t|float|double|char|int|long)"
                         r"\s+\w+\s*\[", re.MULTILINE)


@pytest.mark.parametrize(("name", "target"), MODELS + [("conformer_conv", "dsp-int16"),
                                                       ("kws_cnn", "npu-w4a8")])
def test_no_automatic_arrays(name: str, target: str, tmp_path: Path) -> None:
    """Every buffer is static and planned: no compiler lays out a local array of ours."""
    cm, _ = compiled(name, target)
    project = cm.emit_c(tmp_path)
    found = LOCAL_ARRAY.findall((project / "model.c").read_text())
    assert not found, f"model.c declares local arrays: {found[:3]}"


def test_local_array_pattern() -> None:
    """The check above sees the declaration the depthwise kernel used to have."""
    assert LOCAL_ARRAY.findall("    npuc_i32 acc[24];\n")
    assert not LOCAL_ARRAY.findall("    acc[ql] = 0;\n    return x[0];\nconst long n[2];\n")


@pytest.mark.parametrize("opt", ["-O1", "-O2", "-O3"])
@pytest.mark.parametrize("cc", COMPILERS)
def test_opaque_base_survives_the_dropped_store_bug(cc: str, opt: str, tmp_path: Path) -> None:
    """The reduced GCC 12 miscompile, written as the generated C writes it: it must compute the
    right value under every compiler and level."""
    exe = tmp_path / "dropped_store"
    subprocess.run([cc, "-std=c99", opt, "-Wall", "-Wextra", "-Werror", "-DOPAQUE_BASE",
                    "-o", str(exe), str(BUGS / "dropped_store.c")], check=True)
    result = subprocess.run([str(exe)], capture_output=True, text=True)
    assert (result.returncode, result.stdout) == (0, "1\n")


@pytest.mark.parametrize(("arch", "u8_rows"), [("-march=x86-64", 0), ("-march=x86-64-v3", 0),
                                               ("-march=icelake-server", 1), ("-mavxvnni", 1),
                                               ("-march=alderlake", 1), ("-march=znver3", 0)])
def test_row_layout_follows_the_dot_product_instruction(arch: str, u8_rows: int) -> None:
    """Unsigned GEMM rows exactly where the CPU has vpdpbusd (AVX-512 VNNI, AVX-VNNI), decided
    by the C preprocessor for the -march the user builds with, not by the machine npuc ran on."""
    header = Path(npuc.codegen.__file__).parent / "runtime" / "npuc_runtime.h"
    for cc in COMPILERS:
        out = subprocess.run([cc, arch, "-dM", "-E", "-x", "c", str(header)],
                             capture_output=True, text=True, check=True).stdout
        assert f"#define NPUC_U8_ROWS {u8_rows}" in out, (cc, arch)
