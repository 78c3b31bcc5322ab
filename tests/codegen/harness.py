"""Build generated C with gcc and run it: the oracle is always `cm.run` on the same inputs."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import numpy as np

WARNINGS = "-std=c99 -Wall -Wextra -Werror -Wvla"  # -Wvla: no variable-length arrays
FAST = f"{WARNINGS} -O2"
SANITIZE = f"{WARNINGS} -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=all"


def build(project: Path, cflags: str | None = FAST, cc: str = "gcc",
          arch: str | None = None) -> Path:
    """`make` the project with `cc` and return the executable. `cflags` and `arch` override the
    Makefile's CFLAGS and ARCH (None keeps its defaults: -O3 -march=native, warnings fatal)."""
    if shutil.which(cc) is None:
        raise RuntimeError(f"{cc} is required to build generated C")
    overrides = [f"CFLAGS={cflags}", f"LDFLAGS={cflags if 'sanitize' in cflags else ''}"] \
        if cflags is not None else []
    overrides += [f"ARCH={arch}"] if arch is not None else []
    result = subprocess.run(["make", "-s", "-C", str(project), f"CC={cc}", *overrides],
                            capture_output=True, text=True)
    if result.returncode:
        raise AssertionError(f"make failed in {project}:\n{result.stdout}\n{result.stderr}")
    return project / "model"


def run(exe: Path, inputs: Sequence[np.ndarray], output_sizes: Sequence[int],
        wrapper: Sequence[str] = ()) -> list[np.ndarray]:
    """Run `./model in.bin out.bin` (under `wrapper`, e.g. valgrind) on float32 inputs; the
    outputs as flat float32 arrays."""
    folder = exe.parent
    np.concatenate([np.asarray(x, dtype="<f4").ravel() for x in inputs]).tofile(folder / "in.bin")
    result = subprocess.run([*wrapper, str(exe), str(folder / "in.bin"), str(folder / "out.bin")],
                            capture_output=True, text=True, timeout=600)
    if result.returncode:
        raise AssertionError(f"{exe} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    flat = np.fromfile(folder / "out.bin", dtype="<f4")
    return np.split(flat, np.cumsum(output_sizes)[:-1])


def assert_bit_exact(cm, inputs: Sequence[np.ndarray], folder: Path,  # noqa: ANN001
                     cflags: str | None = FAST, cc: str = "gcc", arch: str | None = None,
                     wrapper: Sequence[str] = ()) -> None:
    """Emit `cm`, build it with `cc`, `cflags` and `arch` (see `build`), run it on `inputs`
    (under `wrapper`); every output must equal `cm.run` bit for bit."""
    project = cm.emit_c(folder)
    expected = cm.run(*inputs)
    expected = expected if isinstance(expected, tuple) else (expected,)
    got = run(build(project, cflags, cc, arch), inputs, [e.size for e in expected], wrapper)
    for i, (e, g) in enumerate(zip(expected, got, strict=True)):
        e = np.asarray(e, dtype=np.float32).ravel()
        mismatch = np.flatnonzero(e.view(np.int32) != g.view(np.int32))
        assert mismatch.size == 0, (f"output {i}: {mismatch.size} of {e.size} values differ; "
                                    f"first at {mismatch[:5]}: C {g[mismatch[:5]]} vs "
                                    f"interpreter {e[mismatch[:5]]}")
