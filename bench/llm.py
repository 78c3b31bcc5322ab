"""Decoder LLM accuracy and speed: SmolLM2-135M-Instruct (examples/smollm2.py) compiled by
`npuc.compile_lm` in several weight and activation formats, against PyTorch fp32.

    python -m bench.llm [--only NAME ...] [--skip-c] [--free-running all|default|none]

Accuracy, per variant: perplexity on held-out English (`bench/data/heldout.txt`, written for this
bench: no model has seen it; ~2,000 tokens in windows of 64, each window predicting all but its
first token, the same windows for every row) by the integer scorer (`CompiledLM.logits`); on 16
prompts, the fp32 model's greedy 32-token continuations, and how many of those tokens the integer
graphs predict given the same text before them (teacher-forced top-1 agreement); for the default
variant (or all, `--free-running all`) also free-running greedy generation with the integer
prefill and decode graphs, position by position against fp32's. Calibration: 8 sequences of 64
tokens of the Python reference (`smollm2.calibration_ids`), never the held-out text.
Speed: simulated time to first token (16-token prompt) and per decoded token (cache of 64) on the
variant's target and on "soc" (the same integer graphs); for the default variant also the
generated C program (`CompiledLM.emit_c`) on this CPU, one thread, against PyTorch fp32 (one
thread, transformers' KV cache).
Writes bench/llm.json (each variant as it finishes) and the "Decoder LLM" section of RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.results import write_section
from examples import smollm2

HERE = Path(__file__).parent
OUT = HERE / "llm.json"
WINDOW, NEW, PROMPT_LEN, MAX_LEN = 64, 32, 16, 64
PROMPTS = [
    "The capital of France is", "Once upon a time, there was a", "The best way to learn a new",
    "Water boils at a temperature of", "My favourite food is", "The train left the station and",
    "In the morning, I usually", "The most important thing about science is",
    "She opened the door and saw", "A good friend is someone who", "The sun rises in the",
    "To make a cup of tea, first", "The history of the city began", "Dogs are popular pets because",
    "The weather today is", "He picked up the phone and said",
]


def variants() -> dict[str, tuple[str, dict | None]]:
    """Row name -> (target, compile_lm's `passes`). Ternary and palettized rows keep the LM
    head (the tied embedding) int8, as TernaryLLM and eDKM keep it out of their formats."""
    import npuc

    plain = npuc.targets.get("npu-int8").quantize
    head = {"lm.lm_head": "int8"}
    return {
        "W8A8, npu-int8 default (smoothquant, products int16)": ("npu-int8", None),
        "W8A8, products int8 too (target's plain int16 list)": (
            "npu-int8", {"quantize": {"int16": list(plain["int16"]),
                                      "int16_mac": list(plain["int16_mac"])}}),
        "W8A16, npu-int8 with every activation int16": (
            "npu-int8", {"quantize": {"activations": "int16"}}),
        "W4A8, npu-w4a8 default (products int16)": ("npu-w4a8", None),
        "W4A8, LM head int8": ("npu-w4a8", {"quantize": {"layers": head}}),
        "palettized 4-bit weights (palette4), npu-int8": (
            "npu-int8", {"quantize": {"weights": "palette4", "layers": head}}),
        "ternary weights, npu-int8": (
            "npu-int8", {"quantize": {"weights": "ternary", "layers": head}}),
    }


def heldout_ids() -> list[int]:
    return smollm2.tokenizer()((HERE / "data" / "heldout.txt").read_text()).input_ids


def windows(ids: list[int]) -> list[list[int]]:
    return [ids[i:i + WINDOW] for i in range(0, len(ids) - 1, WINDOW) if len(ids[i:i + WINDOW]) > 1]


def fp32_reference(model: torch.nn.Module, text: list[int]) -> dict[str, Any]:
    """fp32 perplexity over the same windows, and the greedy continuations of the prompts."""
    tok = smollm2.tokenizer()
    total, count = 0.0, 0
    with torch.no_grad():
        for w in windows(text):
            logp = torch.log_softmax(model(torch.tensor([w])).logits[0, :-1].double(), -1)
            total += float(logp[torch.arange(len(w) - 1), torch.tensor(w[1:])].sum())
            count += len(w) - 1
        greedy = [model.generate(torch.tensor([tok(p).input_ids]), max_new_tokens=NEW,
                                 do_sample=False, min_new_tokens=NEW)[0].tolist()
                  for p in PROMPTS]
    return {"perplexity": float(np.exp(-total / count)), "tokens": count, "greedy": greedy}


class _Logits(torch.nn.Module):
    """The LM as ids (1, WINDOW) -> logits (1, WINDOW, vocab), no cache: what PT2E exports."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids, use_cache=False).logits


def pt2e_row(model: torch.nn.Module, text: list[int], calibration: list[list[int]],
             ref: dict[str, Any]) -> dict[str, Any]:
    """torchao PT2E (X86 Inductor quantizer, static int8: bench.peers.pt2e_int8) on the same
    windows (each padded to WINDOW at its end: causal, so padding changes no earlier logit)."""
    from bench.peers import PeerError, pt2e_int8

    def padded(ids: list[int]) -> torch.Tensor:
        return torch.tensor([ids + [0] * (WINDOW - len(ids))])

    start = time.time()
    try:
        q = pt2e_int8(_Logits(model), (padded(calibration[0]),),
                      [(padded(c[:WINDOW]),) for c in calibration])
    except PeerError as e:
        return {"error": str(e)}
    total, count = 0.0, 0
    for w in windows(text):
        z = torch.tensor(q(padded(w))[0, :len(w) - 1], dtype=torch.float64)
        logp = torch.log_softmax(z, -1)
        total += float(logp[torch.arange(len(w) - 1), torch.tensor(w[1:])].sum())
        count += len(w) - 1
    tok, hits = smollm2.tokenizer(), 0
    for prompt, seq in zip(PROMPTS, ref["greedy"], strict=True):
        n = len(tok(prompt).input_ids)
        pred = q(padded(seq[:-1]))[0, :len(seq) - 1].argmax(-1)[n - 1:]
        hits += int((pred == np.asarray(seq[n:])).sum())
    return {"perplexity": float(np.exp(-total / count)),
            "teacher_forced": hits / (NEW * len(PROMPTS)), "seconds": time.time() - start}


def accuracy(lm: Any, text: list[int], ref: dict[str, Any], free_running: bool) -> dict[str, Any]:
    tok = smollm2.tokenizer()
    start = time.time()
    row: dict[str, Any] = {"perplexity": lm.perplexity([text])}
    hits, free, first = 0, [], []
    for prompt, seq in zip(PROMPTS, ref["greedy"], strict=True):
        n = len(tok(prompt).input_ids)
        pred = lm.logits(seq[:-1]).argmax(axis=1)[n - 1:]
        hits += int((pred == np.asarray(seq[n:])).sum())
        if free_running:
            out = lm.generate(seq[:n], NEW)
            same = [a == b for a, b in zip(out[n:], seq[n:], strict=True)]
            free.append(sum(same))
            first.append(same.index(False) if False in same else NEW)
    row["teacher_forced"] = hits / (NEW * len(PROMPTS))
    if free_running:
        row["free_running"] = sum(free) / (NEW * len(PROMPTS))
        row["first_divergence"] = float(np.mean(first))
    row["eval_s"] = time.time() - start
    return row


def c_speed(lm: Any, model: torch.nn.Module) -> dict[str, Any]:
    """The generated C program on this CPU (one thread) against PyTorch fp32: time to first
    token of a 16-token prompt and time per decoded token, 32 new tokens."""
    ids = smollm2.tokenizer()(PROMPTS[1]).input_ids
    prompt = (ids * PROMPT_LEN)[:PROMPT_LEN]
    row: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="npuc_llm_") as tmp:
        start = time.time()
        project = lm.emit_c(Path(tmp))
        row["emit_s"] = time.time() - start
        start = time.time()
        subprocess.run(["make", "-s", "-C", str(project)], check=True, capture_output=True)
        row["build_s"] = time.time() - start
        run = subprocess.run([str(project / "model"), str(NEW), *map(str, prompt)],
                             capture_output=True, text=True, check=True)
        stats = run.stderr.split("time to first token ")[1]
        row["c_ttft_us"] = float(stats.split(" us")[0])
        row["c_decode_us"] = float(stats.split(", ")[1].split(" us")[0])
        row["c_equals_generate"] = [int(t) for t in run.stdout.split()] == lm.generate(prompt, NEW)
        row["weights_c_mb"] = (project / "weights.c").stat().st_size / 1e6
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with torch.no_grad():
        x = torch.tensor([prompt])
        model(x)  # warm
        start = time.perf_counter()
        for _ in range(3):
            model(x)
        row["torch_ttft_us"] = (time.perf_counter() - start) / 3 * 1e6
        start = time.perf_counter()
        model.generate(x, max_new_tokens=NEW + 1, min_new_tokens=NEW + 1, do_sample=False)
        total = time.perf_counter() - start
        row["torch_decode_us"] = (total * 1e6 - row["torch_ttft_us"]) / NEW
    torch.set_num_threads(threads)
    return row


def save(name: str, row: dict[str, Any]) -> dict[str, Any]:
    """Add one row to bench/llm.json, re-read first (runs with --only may go side by side)."""
    results = json.loads(OUT.read_text()) if OUT.exists() else {}
    results[name] = row
    OUT.write_text(json.dumps(results, indent=1))
    return results


def table(results: dict[str, Any]) -> str:
    ref = results["fp32"]
    rows = ["| model | perplexity | vs fp32 | teacher-forced top-1 = fp32 | free-running greedy = "
            "fp32 (first divergence) | simulated TTFT ms | ms/token | mJ/token | soc TTFT ms | soc "
            "ms/token | compile s |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            f"| PyTorch fp32 | {ref['perplexity']:.2f} | — | 100% | 100% | — | — | — | — | — | — |"]
    peer = results.get("pt2e")
    if peer and "error" in peer:
        rows.append(f"| torchao PT2E int8 (peer) | {peer['error']} | | | | | | | | | |")
    elif peer:
        rows.append(f"| torchao PT2E static int8, X86 quantizer (peer; float between its int8 "
                    f"ops) | {peer['perplexity']:.2f} | "
                    f"{peer['perplexity'] / ref['perplexity'] - 1:+.1%} | "
                    f"{peer['teacher_forced']:.0%} | not run | — | — | — | — | — | — |")
    for name in (n for n in variants() if n in results):  # in the order variants() gives
        r = results[name]
        free = (f"{r['free_running']:.0%} ({r['first_divergence']:.1f} tokens)"
                if "free_running" in r else "not run")
        worse = r["perplexity"] / ref["perplexity"] - 1
        rows.append(f"| {name} | {r['perplexity']:.2f} | {worse:+.1%}"
                    f" | {r['teacher_forced']:.0%} | {free} | {r['ttft_ms']:.2f} | "
                    f"{r['decode_ms']:.2f} | {r['decode_mj']:.1f} | {r['soc_ttft_ms']:.2f} | "
                    f"{r['soc_decode_ms']:.2f} | {r['compile_s']:.0f} |")
    return "\n".join(rows)


def main() -> None:
    from npuc.llm import compile_lm

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", help="variant names (substrings) to run")
    parser.add_argument("--skip-c", action="store_true")
    parser.add_argument("--free-running", choices=["all", "default", "none"], default="default")
    args = parser.parse_args()
    results: dict[str, Any] = json.loads(OUT.read_text()) if OUT.exists() else {}
    model, text = smollm2.load(), heldout_ids()
    calibration = smollm2.calibration_ids(8, MAX_LEN)
    if "fp32" not in results:
        results = save("fp32", fp32_reference(model, text))
    if "pt2e" not in results and not args.only:
        results["pt2e"] = pt2e_row(model, text, calibration, results["fp32"])
        print(f"PT2E: {results['pt2e']}", flush=True)
        results = save("pt2e", results["pt2e"])
    print(f"fp32: perplexity {results['fp32']['perplexity']:.2f} over "
          f"{results['fp32']['tokens']} tokens", flush=True)
    for i, (name, (target, passes)) in enumerate(variants().items()):
        if args.only and not any(o in name for o in args.only):
            continue
        print(f"{name} ...", flush=True)
        start = time.time()
        lm = compile_lm(model, target, prompt_len=PROMPT_LEN, max_len=MAX_LEN,
                        calibration=calibration, passes=passes, score_len=WINDOW)
        row = {"target": target, "compile_s": time.time() - start}
        free = args.free_running == "all" or args.free_running == "default" and i == 0
        row.update(accuracy(lm, text, results["fp32"], free))
        report = lm.simulate()
        row.update(ttft_ms=report.prefill_s * 1e3, decode_ms=report.decode_s * 1e3,
                   decode_mj=report.decode_j * 1e3, cache_bytes=report.cache_bytes,
                   weight_bytes=report.weight_bytes)
        soc = lm.simulate("soc")  # the same integer graphs on the phone-like SoC
        row.update(soc_ttft_ms=soc.prefill_s * 1e3, soc_decode_ms=soc.decode_s * 1e3)
        if i == 0 and not args.skip_c:
            row["c"] = c_speed(lm, model)
        print(json.dumps(row, default=str), flush=True)
        results = save(name, row)
    write_section("Decoder LLM", "python -m bench.llm", table(results), notes(results))


def notes(results: dict[str, Any]) -> str:
    text = (f"SmolLM2-135M-Instruct (weights from its Q4_1 GGUF, as float32); perplexity over "
            f"{results['fp32']['tokens']} held-out tokens in windows of {WINDOW}; agreement over "
            f"{len(PROMPTS)} prompts x {NEW} greedy fp32 tokens. Simulated: prompt {PROMPT_LEN} "
            f"tokens, cache {MAX_LEN} positions.")
    default = next((r for r in results.values() if "c" in r), None)
    if default:
        c = default["c"]
        text += (f" Generated C (default W8A8, gcc -O3 -march=native, one thread): time to first "
                 f"token {c['c_ttft_us'] / 1e3:.1f} ms, {c['c_decode_us'] / 1e3:.1f} ms per "
                 f"token; PyTorch fp32 (one thread, KV cache) {c['torch_ttft_us'] / 1e3:.1f} ms "
                 f"and {c['torch_decode_us'] / 1e3:.1f} ms; the C's tokens equal "
                 f"CompiledLM.generate: {c['c_equals_generate']}; weights.c "
                 f"{c['weights_c_mb']:.0f} MB, built in {c['build_s']:.0f} s.")
    return text


if __name__ == "__main__":
    main()
