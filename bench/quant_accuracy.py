"""Integer quantization accuracy on real models, npuc beside its peers; writes bench/RESULTS.md.

    python -m bench.quant_accuracy [--quick] [--only digits|minilm] [--mobilequant-steps 30]

One run, the same inputs for every method:
- the digits CNN (examples/digits_cnn.py, trained here in seconds): fp32 test accuracy, and per
  method the test accuracy and the relative error of the logits, ||q - f|| / ||f|| over the
  whole test set (360 images). Calibration: the first 256 training images, 8 batches of 32;
  evaluation in batches of 32 (the last one zero-padded; padded rows are dropped).
- all-MiniLM-L6-v2 (examples/minilm.py) at 32 tokens: the mean (and worst) cosine similarity
  of each method's sentence embedding to the fp32 one over EVAL_SENTENCES (one batch of 16),
  and their relative error. Calibration: CALIBRATION_SENTENCES, 2 batches of 16.

Methods: npuc's npu-int8 target (and, on MiniLM, the variants of `npuc_variants`), torchao's
PT2E with the X86 Inductor quantizer, onnxruntime's quantize_static with its defaults and with
the best settings found (bench/peers.py: ORT_PRESETS, and the docstrings say which API and
config each peer uses). Each table row also says how many nodes of each kind the method leaves
reading float data (for the peers: bench/peers.py's op census of their QDQ graphs; for npuc: the
float ops of the lowered graph besides the quantize/dequantize at its boundary). Wall times:
"quantize" is capture/export + calibration + conversion, "run" is the evaluation.

--quick calibrates on less (64 images, 16 sentences), skips mobilequant and prints the tables
without writing RESULTS.md; so does --only (one model). A row that fails is recorded, not
fatal: npuc rows as "pending: <error>", peers as "n/a (<reason>)".

How ORT "best" was chosen (onnxruntime 1.31, MiniLM, mean cosine on the eval sentences, the
calibration sentences agreeing within 0.001): quantizing every op type (the default) gives
0.38: the attention mask's -3.4e38 and the softmax/LayerNorm in 8 bits destroy it; only MatMul:
0.916 per tensor, 0.945 per channel; also leaving MatMul outputs in float
(OpTypesToExcludeOutputQuantization): 0.962 per tensor, 0.990 per channel; with
quant_pre_process first: 0.993. Percentile calibration (99.999) matches MinMax, lower
percentiles are worse (99.99: 0.87; 99.9: 0.75); Entropy equals MinMax (quantize_static cannot
set its histogram sizes, and its defaults of 128 bins for 128 levels leave one candidate);
symmetric activations 0.976; QInt8 vs QUInt8 and excluding the attention MatMuls change < 0.001;
reduce_range loses 0.001; adding Softmax to the quantized ops: 0.45; LayerNormalization: 0.92.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import npuc  # noqa: E402
from bench import peers  # noqa: E402
from bench.results import write_section  # noqa: E402
from npuc.pipeline import plural  # noqa: E402

SCRIPT = "python -m bench.quant_accuracy"
BATCH = 32  # digits: calibration and evaluation batch
TOKENS = 32  # MiniLM sequence length
SENTENCE_BATCH = 16


def npuc_variants(mobilequant_steps: int = 30) -> dict[str, list]:
    """Row name -> `passes=` pipeline for npuc.compile, built on npu-int8's own pipeline:
    smoothquant / mobilequant inserted right before its "quantize" step, and the quantize step
    replaced for 4-bit weights (int4, or a 16-entry palette)."""
    base: list[Any] = list(npuc.targets.get("npu-int8").pipeline)
    if "quantize" not in base:
        raise LookupError("npu-int8's pipeline has no 'quantize' step yet")
    at = base.index("quantize")

    def before(step: tuple[str, dict]) -> list:
        return base[:at] + [step] + base[at:]

    def quantize(**options: Any) -> list:
        return base[:at] + [("quantize", options)] + base[at + 1:]

    return {
        "npuc W8A8": base,
        "npuc W8A8 + smoothquant": before(("smoothquant", {"alpha": 0.5, "shared_norms": True})),
        "npuc W8A8 + mobilequant": before(("mobilequant", {
            "steps": mobilequant_steps, "lr": 1e-3, "alpha": 0.5, "shared_norms": True,
            "progress": False})),
        # bias correction averages the calibration inputs over every token, padding included,
        # which MiniLM's pooling ignores: for 4-bit weights it costs 0.03 cosine, so it is off
        "npuc W4A8": quantize(weights="int4", bias_correction=False),
        "npuc W4A8 + smoothquant": before(("smoothquant", {"alpha": 0.5, "shared_norms": True}))
        [:at + 1] + [("quantize", {"weights": "int4", "bias_correction": False})] + base[at + 1:],
        "npuc W8A8 palettized 4-bit": quantize(weights="palette4", bias_correction=False),
    }


# ------------------------------------------------------------------------------------------------
# the methods, each: (model, example, calibration) -> (run(*inputs) -> np.ndarray, float ops, s)

Method = Callable[[torch.nn.Module, tuple, list], tuple[Callable[..., np.ndarray], str, float]]


def npuc_method(passes: list | None) -> Method:
    def make(model: torch.nn.Module, example: tuple, calibration: list,
             ) -> tuple[Callable[..., np.ndarray], str, float]:
        start = time.perf_counter()
        cm = npuc.compile(model, example, target="npu-int8", calibration=calibration,
                          passes=passes)
        seconds = time.perf_counter() - start
        if not any(r.name == "quantize" for r in cm.records):
            raise RuntimeError("the pipeline ran no quantize pass")
        return cm.run, npuc_float_ops(cm.ir), seconds

    return make


def npuc_float_ops(graph: Any) -> str:
    """The float ops of a lowered npuc graph other than its boundary quantize/dequantize."""
    counts: dict[str, int] = {}
    for node in graph.nodes:
        if node.dtype.is_float and node.op not in ("input", "const", "quantize", "dequantize"):
            counts[node.op] = counts.get(node.op, 0) + 1
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"


def peer_method(quantize: Callable[..., peers.Quantized]) -> Method:
    def make(model: torch.nn.Module, example: tuple, calibration: list,
             ) -> tuple[Callable[..., np.ndarray], str, float]:
        q = quantize(model, example, calibration)
        left = ", ".join(f"{k} {v}" for k, v in sorted(q.float_ops().items())) or "none"
        return q, left, q.seconds

    return make


def methods(npuc_rows: dict[str, list | None]) -> dict[str, tuple[Method, bool]]:
    """Row name -> (method, is it npuc's)."""
    rows: dict[str, tuple[Method, bool]] = {k: (npuc_method(v), True) for k, v in npuc_rows.items()}
    rows["PT2E X86 static int8"] = (peer_method(peers.pt2e_int8), False)
    rows["ORT quantize_static, defaults"] = (peer_method(
        lambda m, x, c: peers.ort_int8(m, x, c, preset="default")), False)
    rows["ORT quantize_static, best"] = (peer_method(
        lambda m, x, c: peers.ort_int8(m, x, c, preset="best")), False)
    return rows


def failure(e: BaseException, ours: bool) -> str:
    text = " ".join(str(e).split())[:140] or type(e).__name__
    return f"pending: {type(e).__name__}: {text}" if ours else f"n/a ({text})"


# ------------------------------------------------------------------------------------------------
# digits CNN


def digits(quick: bool) -> tuple[str, str]:
    from examples.digits_cnn import digits_data, train

    model, _ = train()
    x_train, _, x_test, y_test = digits_data()
    calibration = peers.calibration_batches(x_train[:64 if quick else 256], BATCH)
    n = len(y_test)
    padded = torch.cat([x_test, x_test.new_zeros((-n) % BATCH, *x_test.shape[1:])])
    batches = [(padded[i:i + BATCH],) for i in range(0, len(padded), BATCH)]
    with torch.no_grad():
        f = model(x_test).numpy()
    labels = y_test.numpy()
    fp32 = 100 * float((f.argmax(1) == labels).mean())

    lines = ["| method | test accuracy % | Δ vs fp32, points | logits rel. error | "
             "quantize s | run s | nodes left reading float |",
             "|---|---:|---:|---:|---:|---:|---|", f"| fp32 (torch) | {fp32:.2f} | | | | | all |"]
    for name, (method, ours) in methods({"npuc npu-int8": None}).items():
        try:
            run, left, seconds = method(model, calibration[0], calibration)
            start = time.perf_counter()
            q = np.concatenate([run(*b) for b in batches])[:n]
            run_s = time.perf_counter() - start
        except Exception as e:  # a failing row is recorded, not fatal
            lines.append(f"| {name} | {failure(e, ours)} | | | | | |")
            print(lines[-1], flush=True)
            continue
        acc = 100 * float((q.argmax(1) == labels).mean())
        rel = float(np.linalg.norm(q - f) / np.linalg.norm(f))
        lines.append(f"| {name} | {acc:.2f} | {acc - fp32:+.2f} | {rel:.4f} | {seconds:.1f} | "
                     f"{run_s:.2f} | {left} |")
        print(lines[-1], flush=True)
    note = (f"Digits CNN (examples/digits_cnn.py, conv-BN-ReLU x2, depthwise conv-BN-ReLU6, "
            f"mean, linear), {n} test images; calibration "
            f"{plural(len(calibration), 'batch', 'batches')} of {BATCH} training images, "
            f"evaluation in batches of {BATCH}.")
    return "\n".join(lines), note


# ------------------------------------------------------------------------------------------------
# all-MiniLM-L6-v2


def cosines(q: np.ndarray, f: np.ndarray) -> np.ndarray:
    return (q * f).sum(1) / (np.linalg.norm(q, axis=1) * np.linalg.norm(f, axis=1))


def minilm(quick: bool, mobilequant_steps: int) -> tuple[str, str]:
    from examples.minilm import CALIBRATION_SENTENCES, EVAL_SENTENCES, encode, load

    model = load()
    sentences = CALIBRATION_SENTENCES[:SENTENCE_BATCH if quick else None]
    calibration = [encode(sentences[i:i + SENTENCE_BATCH], TOKENS)
                   for i in range(0, len(sentences) - SENTENCE_BATCH + 1, SENTENCE_BATCH)]
    inputs = encode(EVAL_SENTENCES[:SENTENCE_BATCH], TOKENS)
    with torch.no_grad():
        f = model(*inputs).numpy()

    try:
        variants: dict[str, list | None] = dict(npuc_variants(mobilequant_steps))
        if quick:
            del variants["npuc W8A8 + mobilequant"]
    except LookupError as e:
        variants = {"npuc W8A8": None}
        pending = str(e)
    else:
        pending = ""

    lines = ["| method | mean cosine to fp32 | worst cosine | rel. error | quantize s | run s | "
             "nodes left reading float |", "|---|---:|---:|---:|---:|---:|---|"]
    for name, (method, ours) in methods(variants).items():
        try:
            if pending and ours:
                raise LookupError(pending)
            run, left, seconds = method(model, inputs, calibration)
            start = time.perf_counter()
            q = run(*inputs)
            run_s = time.perf_counter() - start
        except Exception as e:  # a failing row is recorded, not fatal
            lines.append(f"| {name} | {failure(e, ours)} | | | | | |")
            print(lines[-1], flush=True)
            continue
        cos = cosines(q, f)
        rel = float(np.linalg.norm(q - f) / np.linalg.norm(f))
        lines.append(f"| {name} | {cos.mean():.4f} | {cos.min():.4f} | {rel:.4f} | "
                     f"{seconds:.1f} | {run_s:.2f} | {left} |")
        print(lines[-1], flush=True)

    check = ""
    try:
        exported = peers.ort_float(model, inputs)
        q = exported(*inputs)
        check = (f" The float ONNX export under onnxruntime matches torch: mean cosine "
                 f"{cosines(q, f).mean():.6f}, rel. error "
                 f"{np.linalg.norm(q - f) / np.linalg.norm(f):.1e} ({exported.config}).")
    except Exception as e:  # only a sanity check
        check = f" The float ONNX export check failed: {failure(e, False)}."
    note = (f"all-MiniLM-L6-v2 (examples/minilm.py, mean-pooled), {len(EVAL_SENTENCES)} "
            f"evaluation sentences as one batch of {SENTENCE_BATCH} padded to {TOKENS} tokens; "
            f"calibration {plural(len(calibration), 'batch', 'batches')} of {SENTENCE_BATCH} "
            f"other sentences (CALIBRATION_SENTENCES).{check}")
    return "\n".join(lines), note


# ------------------------------------------------------------------------------------------------


def explanation(mobilequant_steps: int) -> str:
    best = peers.ORT_PRESETS["best"]
    shown = ", ".join(f"{k}={v}" for k, v in best.items())
    target = npuc.targets.get("npu-int8")
    defaults = ", ".join(f"{k}={v}" for k, v in getattr(target, "quantize", {}).items())
    return (
        "Rows. *npuc*: `npuc.compile(model, x, target=\"npu-int8\", calibration=...)` and "
        "`cm.run`, integer-only between the input quantize and the output dequantize; W8A8 is "
        f"the target's own pipeline ({', '.join(target.pipeline)}"
        + (f"; quantize defaults {defaults}" if defaults else "") + "), + smoothquant "
        "(alpha 0.5, shared_norms) and + mobilequant "
        f"({mobilequant_steps} steps, lr 1e-3) run that pass right before quantize, W4A8 and "
        "palettized 4-bit set the quantize step's `weights` to `int4` / `palette4` with "
        "`bias_correction` off (its calibration means include the padded positions MiniLM's "
        "pooling ignores, which costs 4-bit weights 0.03 cosine); `npuc_variants()` in this "
        "script. *PT2E*: "
        "torchao's `prepare_pt2e`/`convert_pt2e` with `X86InductorQuantizer` "
        "and `get_default_x86_inductor_quantization_config()` (uint8 activations per tensor, "
        "HistogramObserver; int8 weights per channel), run eagerly as its reference QDQ graph; "
        "its default recipe quantizes conv, linear and what int8 can flow through, not the "
        "attention matmuls (`aten.matmul` is quantizable but not in its default set). "
        "*ORT defaults*: the dynamo ONNX export, `quantize_static(..., QuantFormat.QDQ)` with "
        "every other argument at its default (QInt8 activations and weights, MinMax, per tensor, "
        "all op types it knows, Softmax and LayerNormalization included). *ORT best*: "
        f"{shown} (how it was chosen: this script's docstring). onnxruntime sessions: CPU, one "
        "thread. The last column counts, per op kind, the nodes whose float operands do not all "
        "come from a dequantize (looking through reshapes and transposes; a ReLU/clip fused "
        "into a quantized producer's output counts as quantized): what the method computes in "
        "float, MiniLM's mask arithmetic and mean pooling (where, clamp/Clip, sum, div) "
        "included; for npuc, the float ops of the lowered graph besides its boundary. Timings "
        "are wall seconds on a shared 2-core machine: indicative only."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="less calibration, no mobilequant; print, do not write RESULTS.md")
    parser.add_argument("--only", choices=["digits", "minilm"])
    parser.add_argument("--mobilequant-steps", type=int, default=30)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger().setLevel(logging.ERROR)  # onnxruntime's "consider pre-processing"
    torch.manual_seed(0)

    versions = peers.versions()
    print(", ".join(f"{k} {v}" for k, v in versions.items()), flush=True)
    tables: list[str] = []
    notes: list[str] = []
    if args.only in (None, "digits"):
        table, note = digits(args.quick)
        tables.append("### Digits CNN\n\n" + note + "\n\n" + table)
    if args.only in (None, "minilm"):
        table, note = minilm(args.quick, args.mobilequant_steps)
        tables.append("### all-MiniLM-L6-v2\n\n" + note + "\n\n" + table)
    notes.append(", ".join(f"{k} {v}" for k, v in versions.items())
                 + f", {torch.get_num_threads()} torch threads.")
    text = "\n\n".join(tables) + "\n\n" + explanation(args.mobilequant_steps)
    if args.quick or args.only:
        print("\n" + text)
        return
    write_section("Quantization accuracy", SCRIPT, text, " ".join(notes))


if __name__ == "__main__":
    main()
