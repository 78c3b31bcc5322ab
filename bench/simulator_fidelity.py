"""npuc's systolic compute cycles against SCALE-Sim's, layer by layer; writes bench/RESULTS.md.

    python -m bench.simulator_fidelity

Reads SCALE-Sim 3.0.0's cached per-layer results (bench/scalesim/<dataflow>_<R>x<C>.csv, made by
`python -m bench.scalesim_ref`, which runs SCALE-Sim in its own venv) for ResNet-18's convs and
BERT-base's GEMMs, computes npuc's cycles for the same GEMMs, and reports the worst per-layer
difference and both simulators' wall times. Then the path a user takes: each layer as a
one-layer torch model (nn.Conv2d or nn.Linear) through `npuc.compile(..., target="npu-int8")`,
whose result is int16 (a graph output), and `simulate` on each cached array: the qconv/qlinear
row's compute cycles against SCALE-Sim's for the same int8 GEMM.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import time
from pathlib import Path

import torch
from torch import nn

import npuc
from bench.results import write_section
from bench.scalesim_ref import NETWORKS, Layer
from npuc.simulator import simulate
from npuc.simulator.systolic import gemm_cycles

CACHE = Path(__file__).parent / "scalesim"


def _one_layer(layer: Layer) -> tuple[nn.Module, torch.Tensor]:
    """`layer` as a torch model and an input of its shape."""
    if layer.kind == "gemm":
        return nn.Linear(layer.k, layer.n), torch.randn(layer.m, layer.k)
    conv = nn.Conv2d(layer.channels, layer.num_filters, (layer.filter_h, layer.filter_w),
                     (layer.stride_h, layer.stride_w), (layer.pad_h, layer.pad_w))
    return conv, torch.randn(1, layer.channels, layer.ifmap_h, layer.ifmap_w)


def compiled_rows(cached: dict[str, list[dict]]) -> list[str]:
    """Per array and network: the worst difference between SCALE-Sim's compute cycles and the
    GEMM row of `simulate` for each layer compiled alone for npu-int8 (int16 result)."""
    base = npuc.targets.get("npu-int8")
    worst: dict[tuple[str, str], float] = {}
    wide = 0
    for network, layers in NETWORKS.items():
        for layer in layers():
            torch.manual_seed(0)
            model, x = _one_layer(layer)
            cm = npuc.compile(model.eval(), (x,), target="npu-int8")
            (gemm,) = [n for n in cm.ir.nodes if n.op in ("qconv", "qlinear")]
            wide += gemm.dtype == npuc.DType.I16
            for config, results in cached.items():
                flow, shape = config.split("_")
                r, c = map(int, shape.split("x"))
                target = dataclasses.replace(base, npu=dataclasses.replace(
                    base.npu, rows=r, cols=c, dataflow=flow))
                (row,) = [row for row in simulate(cm.ir, target).rows if row.op == gemm.op]
                (ref,) = [x for x in results if (x["network"], x["name"]) == (network,
                                                                              layer.name)]
                want = int(ref["compute_cycles"])
                diff = abs(row.compute_cycles - want) / want if row.engine == "npu" else 1.0
                key = (config, network)
                worst[key] = max(worst.get(key, 0.0), diff)
            print(f"compiled {network} {layer.name}: result {gemm.dtype}", flush=True)
    rows = ["| array, dataflow | network | worst per-layer diff, `npuc.compile` + `simulate` |",
            "|---|---|---:|"]
    for (config, network), diff in sorted(worst.items()):
        flow, shape = config.split("_")
        rows.append(f"| {shape} {flow} | {network} | {diff:.2%} |")
    total = sum(len(f()) for f in NETWORKS.values())
    return rows + ["", f"{wide} of the {total} compiled layers have an int16 result."]


def main() -> None:
    meta = json.loads((CACHE / "meta.json").read_text())
    cached = {}
    rows = ["| array, dataflow | network | layers | worst per-layer diff | SCALE-Sim wall s | "
            "npuc wall ms |", "|---|---|---:|---:|---:|---:|"]
    for path in sorted(CACHE.glob("*.csv")):
        flow, shape = path.stem.split("_")
        r, c = map(int, shape.split("x"))
        layers = list(csv.DictReader(path.open()))
        cached[path.stem] = layers
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
    rows += ["", *compiled_rows(cached)]
    write_section("Simulator fidelity", "python -m bench.simulator_fidelity", "\n".join(rows),
                  "SCALE-Sim 3.0.0 (numpy<2.3, own venv; results cached in bench/scalesim/) "
                  "against npuc.simulator.systolic.gemm_cycles on the same GEMMs: ResNet-18's "
                  "convs at 224x224 and BERT-base's GEMMs for 128 tokens. Compute cycles are "
                  "SCALE-Sim's stall-free cycles; npuc's wall time covers all layers of a "
                  "network. The second table takes the user's path: each layer alone as an "
                  "nn.Conv2d or nn.Linear through npuc.compile for npu-int8 (int8 operands, "
                  "an int16 result: the graph output) and simulate on the same array.")


if __name__ == "__main__":
    main()
