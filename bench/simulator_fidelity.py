"""npuc's systolic compute cycles against SCALE-Sim's, layer by layer; writes bench/RESULTS.md.

    python -m bench.simulator_fidelity

Reads SCALE-Sim 3.0.0's cached per-layer results (bench/scalesim/<dataflow>_<R>x<C>.csv, made by
`python -m bench.scalesim_ref`, which runs SCALE-Sim in its own venv) for ResNet-18's convs and
BERT-base's GEMMs, computes npuc's cycles for the same GEMMs, and reports the worst per-layer
difference and both simulators' wall times.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

from bench.results import write_section
from npuc.simulator.systolic import gemm_cycles

CACHE = Path(__file__).parent / "scalesim"


def main() -> None:
    meta = json.loads((CACHE / "meta.json").read_text())
    rows = ["| array, dataflow | network | layers | worst per-layer diff | SCALE-Sim wall s | "
            "npuc wall ms |", "|---|---|---:|---:|---:|---:|"]
    for path in sorted(CACHE.glob("*.csv")):
        flow, shape = path.stem.split("_")
        r, c = map(int, shape.split("x"))
        layers = list(csv.DictReader(path.open()))
        for network in sorted({layer["network"] for layer in layers}):
            subset = [layer for layer in layers if layer["network"] == network]
            start = time.perf_counter()
            ours = [gemm_cycles(int(x["m"]), int(x["k"]), int(x["n"]), r, c, flow)
                    for x in subset]
            npuc_ms = (time.perf_counter() - start) * 1e3
            worst = max(abs(o - int(x["compute_cycles"])) / int(x["compute_cycles"])
                        for o, x in zip(ours, subset, strict=True))
            wall = meta["runs"][path.stem]["wall_s"][network]
            rows.append(f"| {shape} {flow} | {network} | {len(subset)} | {worst:.2%} | "
                        f"{wall:.0f} | {npuc_ms:.2f} |")
            print(rows[-1], flush=True)
    write_section("Simulator fidelity", "python -m bench.simulator_fidelity", "\n".join(rows),
                  "SCALE-Sim 3.0.0 (numpy<2.3, own venv; results cached in bench/scalesim/) "
                  "against npuc.simulator.systolic.gemm_cycles on the same GEMMs: ResNet-18's "
                  "convs at 224x224 and BERT-base's GEMMs for 128 tokens. Compute cycles are "
                  "SCALE-Sim's stall-free cycles; npuc's wall time covers all layers of a "
                  "network.")


if __name__ == "__main__":
    main()
