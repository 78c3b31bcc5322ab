"""What the simulator reports for real models on every built-in target; writes the "Simulated
targets" section of bench/RESULTS.md.

    python -m bench.simulated_zoo

For the models of bench/c_latency.py (the digits CNN, ResNet-18, all-MiniLM-L6-v2): each built-in
target's default pipeline, then `cm.simulate()`: latency, energy, the busiest engine, the
engines' busy time per unit of latency (above 1: they run at once), the activation arena
against its lower bound, DRAM bytes, and the wall time of the simulation itself (median of 5).
"""

from __future__ import annotations

import statistics
import time

import torch

import npuc
from bench.c_latency import models
from bench.results import write_section
from npuc.simulator.cost import is_gemm


def main() -> None:
    torch.manual_seed(0)
    rows = ["| model | target | latency ms | energy mJ | busiest engine | busy / latency | "
            "arena KB (lower bound) | DRAM MB | GEMMs on NPU | simulate ms |",
            "|---|---|---:|---:|---|---:|---:|---:|---:|---:|"]
    for name, (model, inputs) in models().items():
        for target in npuc.targets.names():
            print(f"{name} on {target} ...", flush=True)
            cm = npuc.compile(model, inputs, target=target)
            walls = []
            for _ in range(5):
                start = time.perf_counter()
                report = cm.simulate()
                walls.append(time.perf_counter() - start)
            engines = report.by_engine()
            busiest = max(engines, key=lambda e: engines[e][2])
            busy = sum(b for _, _, b in engines.values())
            concurrency = busy / report.latency_s if report.latency_s else 0.0
            gemms = [r for r in report.rows if is_gemm(r.op)]
            on_npu = (f"{sum(r.engine == 'npu' for r in gemms)}/{len(gemms)}" if gemms
                      else "—")
            rows.append(f"| {name} | {target} | {report.latency_s * 1e3:.3f} | "
                        f"{report.energy_j * 1e3:.3f} | {busiest} "
                        f"({engines[busiest][2] / busy:.0%} of busy time) | {concurrency:.2f} | "
                        f"{report.arena_bytes / 1024:,.1f} ({report.arena_lower_bound / 1024:,.1f})"
                        f" | {sum(r.dram_bytes for r in report.rows) / 1e6:.2f} | {on_npu} | "
                        f"{statistics.median(walls) * 1e3:.1f} |")
            print(rows[-1], flush=True)
    write_section("Simulated targets", "python -m bench.simulated_zoo", "\n".join(rows),
                  "Busy / latency: the engines' summed busy time over the latency, above 1 where "
                  "HEFT runs engines at once, below where ops wait for operands moved between "
                  "engines. GEMMs on NPU: integer GEMMs the schedule put on the "
                  "NPU (depthwise convs and GEMMs that finish earlier elsewhere go to the DSP).")


if __name__ == "__main__":
    main()
