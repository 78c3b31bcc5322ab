"""Every zoo model's generated C under every compiler and flag set a user may pick; writes the
"Generated C under every compiler and flag set" section of bench/RESULTS.md.

    python bench/c_flags.py          # needs gcc, clang, valgrind and make; about 30 minutes

For each zoo model (tests/models.py, ResNet-18 and all-MiniLM-L6-v2 included) and each distinct
integer lowering (npu-int8, npu-w4a8, dsp-int16; soc lowers as npu-int8), the C is built with
each flag set below, run on fresh inputs beyond the calibrated range, and compared with
`cm.run` bit for bit: "ok", or what failed (build, crash, differing outputs). The tests build a
sample of this matrix (tests/codegen/test_compilers.py); this script builds all of it. The
valgrind row uses the portable build, which valgrind runs on any x86-64 CPU.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.results import write_section  # noqa: E402
from tests.codegen.harness import SANITIZE, WARNINGS, assert_bit_exact  # noqa: E402
from tests.codegen.test_compilers import FLAG_SETS  # noqa: E402
from tests.codegen.test_zoo import DISTINCT, compiled  # noqa: E402
from tests.models import ZOO  # noqa: E402

CHECKS = {**{name: dict(zip(("cc", "cflags", "arch"), flags, strict=True))
             for name, flags in FLAG_SETS.items()},
          "asan+ubsan": {"cc": "gcc", "cflags": SANITIZE, "arch": "-march=x86-64"},
          "valgrind": {"cc": "gcc", "cflags": f"{WARNINGS} -O2 -g", "arch": "-march=x86-64",
                       "wrapper": ["valgrind", "-q", "--error-exitcode=99"]}}


def check(cm, inputs, options: dict) -> str:  # noqa: ANN001
    with tempfile.TemporaryDirectory() as folder:
        try:
            assert_bit_exact(cm, inputs, Path(folder), **options)
        except AssertionError as e:
            return str(e).splitlines()[0][:60].replace("|", "/")
    return "ok"


def main() -> None:
    rows, failures, start = [], 0, time.perf_counter()
    for name in ZOO:
        for target in DISTINCT:
            cm, inputs = compiled(name, target)
            results = [check(cm, inputs, options) for options in CHECKS.values()]
            failures += sum(r != "ok" for r in results)
            rows.append(f"| {name} | {target} | " + " | ".join(results) + " |")
            print(rows[-1], flush=True)
    header = ("| model | target | " + " | ".join(CHECKS) + " |\n"
              "|---|---|" + "---|" * len(CHECKS))
    note = (f"{len(rows)} model x target pairs, {len(CHECKS)} builds each, {failures} failures, "
            f"{(time.perf_counter() - start) / 60:.0f} minutes. Flag sets: "
            + "; ".join(f"{k} = {v['cc']} {v['cflags'] or '(Makefile CFLAGS)'} "
                        f"{v['arch'] or '(Makefile ARCH)'}" for k, v in CHECKS.items()) + ".")
    write_section("Generated C under every compiler and flag set", "python bench/c_flags.py",
                  header + "\n" + "\n".join(rows), note)

if __name__ == "__main__":
    main()
