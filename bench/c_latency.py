"""Latency of npuc's generated C against onnxruntime int8 and PyTorch fp32, one thread each;
writes the "Generated C" section of bench/RESULTS.md.

    python bench/c_latency.py            # needs gcc, make and pip install '.[bench]'

For each model: npuc compiles it for npu-int8 (calibrated on its example inputs), emits C, builds
it with the default Makefile (gcc -O3 -march=native) and times `./model in.bin out.bin 20`
seven times (the median of the seven means of 20 runs); the C output is checked bit for bit
against the interpreter. onnxruntime runs the `quantize_static` QDQ int8 model of the same
PyTorch model (bench/peers.py: one intra- and one inter-op thread), PyTorch the fp32 eager model
with torch.set_num_threads(1); both as the median of 100 runs after a warm-up. Code size is the
binary's .text and .rodata (`size -A`); the arena is the generated C's static activation buffer
(tensors plus kernel scratch), next to the simulator's plan for the tensors alone.
"""

from __future__ import annotations

import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import npuc  # noqa: E402
import npuc.codegen  # noqa: E402
from bench.peers import PeerError, ort_int8  # noqa: E402
from bench.results import write_section  # noqa: E402
from tests.models import ZOO  # noqa: E402


def models() -> dict[str, tuple]:
    from examples import digits_cnn, minilm

    return {"digits CNN (8 images)": digits_cnn.build(),
            "ResNet-18 (1x3x224x224)": ZOO["resnet18"](),
            "all-MiniLM-L6-v2 (2x16 tokens)": minilm.build()}


BATCHES = 7


def median_us(fn, repeats: int = 100) -> float:  # noqa: ANN001
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def c_latency(cm: npuc.CompiledModel, inputs: tuple, folder: Path) -> tuple[float, int, int]:
    """(mean µs per run, .text bytes, .rodata bytes) of the generated C, checked bit-exact."""
    project = cm.emit_c(folder)
    subprocess.run(["make", "-s", "-C", str(project)], check=True)
    arrays = [x.numpy() for x in inputs]
    np.concatenate([a.astype("<f4").ravel() for a in arrays]).tofile(project / "in.bin")
    means = []
    for _ in range(BATCHES):  # this machine is shared: the median of batch means
        run = subprocess.run([str(project / "model"), str(project / "in.bin"),
                              str(project / "out.bin"), "20"], check=True, capture_output=True,
                             text=True)
        means.append(float(re.search(r"mean ([0-9.]+) us", run.stderr).group(1)))
    expected = np.asarray(cm.run(*arrays), np.float32).ravel()
    got = np.fromfile(project / "out.bin", dtype="<f4")
    if not np.array_equal(got.view(np.int32), expected.view(np.int32)):
        raise AssertionError(f"{project}: C output differs from the interpreter")
    mean = statistics.median(means)
    sections = subprocess.run(["size", "-A", str(project / "model")], check=True,
                              capture_output=True, text=True).stdout
    size = {m[0]: int(m[1]) for m in re.findall(r"^(\.\w+)\s+(\d+)", sections, re.M)}
    return mean, size.get(".text", 0), size.get(".rodata", 0)


def main() -> None:
    torch.set_num_threads(1)
    rows = ["| model | npuc C µs | onnxruntime int8 µs | PyTorch fp32 µs | C / ORT | .text KB | "
            ".rodata KB | arena KB (C) | arena KB (simulator) | simulated npu-int8 µs |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, (model, inputs) in models().items():
        print(f"{name} ...", flush=True)
        cm = npuc.compile(model, inputs, target="npu-int8")
        with tempfile.TemporaryDirectory(prefix="npuc_c_") as tmp:
            c_us, text, rodata = c_latency(cm, inputs, Path(tmp))
        view = npuc.codegen.build_view(cm.ir)
        report = cm.simulate()
        with torch.no_grad():
            torch_us = median_us(lambda m=model, x=inputs: m(*x))
        try:
            ort = ort_int8(model, inputs, [inputs])
            ort_us = median_us(lambda q=ort, x=inputs: q(*x))
            ort_cell, ratio = f"{ort_us:,.0f}", f"{c_us / ort_us:.2f}x"
        except PeerError as e:
            ort_cell, ratio = f"failed: {e}", "—"
        rows.append(f"| {name} | {c_us:,.0f} | {ort_cell} | {torch_us:,.0f} | {ratio} | "
                    f"{text / 1024:,.0f} | {rodata / 1024:,.0f} | {view.arena_bytes / 1024:,.1f} "
                    f"| {report.arena_bytes / 1024:,.1f} | {report.latency_s * 1e6:,.0f} |")
        print(rows[-1], flush=True)
    write_section("Generated C", "python bench/c_latency.py", "\n".join(rows),
                  "One thread each on this machine's CPU; the C output is bit-identical to "
                  "npuc's interpreter. The simulated column is the npu-int8 target's NPU, not "
                  "this CPU.")


if __name__ == "__main__":
    main()
