"""Interpreter speed on real-size models; writes the table into bench/RESULTS.md.

    python bench/interpreter_speed.py

Measures, for each model, capture time, the interpreter's median wall time over 5 runs (after
one warm-up) on the float graph and on the npu-int8 integer-only graph (calibrated on the
example inputs), PyTorch eager's for scale, and the relative errors against PyTorch.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import npuc  # noqa: E402
from bench.results import write_section  # noqa: E402
from tests.models import ZOO  # noqa: E402

MODELS = ["resnet18", "minilm", "unet_small", "kws_cnn"]


def median_seconds(fn, repeats: int = 5) -> float:  # noqa: ANN001
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    rows = ["| model | nodes | MACs | capture s | float interpreter s | int8 interpreter s | "
            "PyTorch eager s | float rel. error | int8 rel. error |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name in MODELS:
        model, inputs = ZOO[name]()
        start = time.perf_counter()
        graph = npuc.capture(model, inputs)
        capture_s = time.perf_counter() - start
        interp_s = median_seconds(lambda g=graph, x=inputs: npuc.interpret(g, *x))
        with torch.no_grad():
            eager_s = median_seconds(lambda m=model, x=inputs: m(*x))
            want = model(*inputs).numpy()
        got = npuc.interpret(graph, *inputs)[0]
        err = np.linalg.norm(got - want) / np.linalg.norm(want)
        lowered = npuc.compile(graph, inputs, target="npu-int8").ir
        int_s = median_seconds(lambda g=lowered, x=inputs: npuc.interpret(g, *x))
        int_err = np.linalg.norm(npuc.interpret(lowered, *inputs)[0] - want) / np.linalg.norm(want)
        summary = npuc.summarize(graph)
        rows.append(f"| {name} | {len(graph.nodes)} | {summary.macs / 1e6:,.0f}M | "
                    f"{capture_s:.2f} | {interp_s:.3f} | {int_s:.3f} | {eager_s:.3f} | "
                    f"{err:.1e} | {int_err:.3f} |")
        print(rows[-1], flush=True)
    write_section("Interpreter speed", "bench/interpreter_speed.py", "\n".join(rows),
                  f"torch {torch.__version__}, numpy {np.__version__}, "
                  f"{torch.get_num_threads()} threads; median of 5 runs after a warm-up.")


if __name__ == "__main__":
    main()
