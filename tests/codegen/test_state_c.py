"""The generated C of graphs with state: a whole sampling loop bit-exact with `cm.run`, the
layers a reusing step skips skipped, `npuc_reset()` as `cm.reset()`."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import npuc
from npuc.ir import Graph
from tests.codegen.harness import FAST, SANITIZE, WARNINGS, build, run
from tests.stateful import SCHEDULE, Attention, cached_softmax, loop_inputs

COMPILERS = [cc for cc in ("gcc", "clang") if shutil.which(cc)]


def compiled(schedule: tuple[int, ...] = SCHEDULE) -> tuple:
    graph, calls = cached_softmax(schedule, size=16)
    return npuc.compile(graph, calibration=calls, target="npu-int8"), calls


def sequence_in_c(cm, calls: list, folder: Path, cflags: str = FAST,  # noqa: ANN001
                  cc: str = "gcc") -> list[np.ndarray]:
    """Every call's output from one run of ./model on all the calls' inputs in order."""
    exe = build(cm.emit_c(folder), cflags, cc)
    flat = [np.asarray(a, np.float32) for call in calls for a in call]
    return run(exe, flat, [calls[0][0].size] * len(calls))


def sequence_in_python(cm, calls: list) -> list[np.ndarray]:  # noqa: ANN001
    cm.reset()
    return [np.asarray(cm.run(*call), np.float32).ravel() for call in calls]


def assert_same_bits(got: list[np.ndarray], want: list[np.ndarray]) -> None:
    for step, (g, w) in enumerate(zip(got, want, strict=True)):
        assert np.array_equal(g.view(np.int32), w.view(np.int32)), f"call {step} differs"


@pytest.mark.parametrize("cc", COMPILERS)
def test_a_sampling_loop_is_bit_exact_in_c(cc: str, tmp_path: Path) -> None:
    cm, calls = compiled()
    want = sequence_in_python(cm, calls)
    assert_same_bits(sequence_in_c(cm, calls, tmp_path, cc=cc), want)
    # and the reuse is real: a reusing call's output differs from a recomputing one's
    plain, _ = compiled((1,) * len(SCHEDULE))
    assert not np.array_equal(want[1], sequence_in_python(plain, calls)[1])


def test_a_sampling_loop_is_clean_under_sanitizers(tmp_path: Path) -> None:
    cm, calls = compiled()
    assert_same_bits(sequence_in_c(cm, calls, tmp_path, SANITIZE), sequence_in_python(cm, calls))


def test_always_recomputing_equals_the_graph_without_reuse_in_c(tmp_path: Path) -> None:
    always, calls = compiled((1,) * len(SCHEDULE))
    graph, _ = cached_softmax(size=16)
    (slot,) = graph.state
    # the same model without the cache: the map feeds the product directly
    product = graph.outputs[0]
    direct = product.with_inputs((slot.write.inputs[0], product.inputs[1]))
    plain = Graph(graph.inputs[:1], (direct,), "plain")
    cm_plain = npuc.compile(plain, calibration=[c[:1] for c in calls], target="npu-int8")
    expected = [np.asarray(cm_plain.run(c[0]), np.float32).ravel() for c in calls]
    assert_same_bits(sequence_in_python(always, calls), expected)
    assert_same_bits(sequence_in_c(always, calls, tmp_path), expected)


def test_reusing_steps_skip_the_layers_of_the_map(tmp_path: Path) -> None:
    cm, _ = compiled()
    project = cm.emit_c(tmp_path)
    model = (project / "model.c").read_text()
    guarded = [line for line in model.splitlines() if "[npuc_step]) NPUC_CALL" in line]
    assert len(guarded) == 2  # the projection and the softmax
    assert "npuc_reset" in (project / "model.h").read_text()
    assert f"#define NPUC_STATE_BYTES {cm.ir.state[0].type.nbytes}" in (
        project / "model.h").read_text()


RESET_DRIVER = r"""
#include <stdio.h>
#include "model.h"
/* ./reset in.bin plan out.bin: in.bin holds %(calls)d calls' inputs; plan is a string of call
 * indices and 'r' (npuc_reset()); each call's outputs go to out.bin in turn */
int main(int argc, char **argv) {
    static float in[%(calls)d][%(total_in)d], out[%(total_out)d];
    FILE *f = fopen(argv[1], "rb"), *o;
    const char *p;
    if (argc != 4 || !f || fread(in, sizeof in, 1, f) != 1) return 2;
    fclose(f);
    o = fopen(argv[3], "wb");
    for (p = argv[2]; *p; ++p) {
        if (*p == 'r') {
            npuc_reset();
        } else {
            const float *inputs[2] = { in[*p - '0'], in[*p - '0'] + %(x)d };
            float *outputs[1] = { out };
            if (npuc_run(inputs, outputs) || fwrite(out, sizeof out, 1, o) != 1) return 3;
        }
    }
    return fclose(o) != 0;
}
"""


def test_npuc_reset_is_cm_reset(tmp_path: Path) -> None:
    """A call at a reusing step reads the cache: after a reset, its reset value (real zero),
    in C as in cm.run, whatever came before."""
    cm, calls = compiled()
    project = cm.emit_c(tmp_path)
    x = calls[0][0].size
    calls = calls[:2]
    (project / "reset.c").write_text(RESET_DRIVER % {"calls": len(calls), "total_in": x + 1,
                                                     "total_out": x, "x": x})
    np.concatenate([np.append(c[0].ravel(), np.float32(c[1])) for c in calls]).astype(
        "<f4").tofile(project / "in.bin")
    sources = [str(project / n) for n in ("reset.c", "model.c", "weights.c")]
    exe = project / "reset"
    subprocess.run(["gcc", *WARNINGS.split(), "-O2", "-I", str(project), *sources, "-lm", "-o",
                    str(exe)], check=True, capture_output=True)
    plan = "101r1"
    subprocess.run([str(exe), str(project / "in.bin"), plan, str(project / "out.bin")],
                   check=True)
    got = np.fromfile(project / "out.bin", "<f4").reshape(len(plan) - 1, x)
    cm.reset()
    want = []
    for c in plan:
        if c == "r":
            cm.reset()
        else:
            want.append(np.asarray(cm.run(*calls[int(c)]), np.float32).ravel())
    assert_same_bits(list(got), want)
    assert np.array_equal(got[0], got[3])  # both right after a reset
    assert not np.array_equal(got[0], got[2])  # the same call reading a real cache


def test_reuse_attention_through_npu_int8_is_bit_exact_over_a_sampling_loop(tmp_path: Path
                                                                              ) -> None:
    """Attention conditioned on the timestep, its map reused late in sampling: the loop's
    every call in C equals cm.run, and the reusing calls skip QK^T in C as in the simulator."""
    import torch

    calls = loop_inputs()
    torch.manual_seed(5)
    model = Attention().eval()
    times = [int(c[1][0]) for c in calls]
    cm = npuc.compile(model, tuple(torch.from_numpy(a) for a in calls[0]), "npu-int8",
                      calibration=calls,
                      passes=[("reuse_attention", {"timesteps": times, "every": 2}),
                              *npuc.targets.get("npu-int8").pipeline])
    assert len(cm.ir.state) == 1 and not cm.ir.state[0].type.dtype.is_float
    want = sequence_in_python(cm, calls)
    exe = build(cm.emit_c(tmp_path))
    flat = [np.asarray(a, np.float32) for call in calls for a in call]
    got = run(exe, flat, [want[0].size] * len(calls))
    assert_same_bits(got, want)
