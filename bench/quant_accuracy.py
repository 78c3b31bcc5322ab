"""Integer quantization accuracy on real models, npuc beside its peers; writes bench/RESULTS.md.

    python -m bench.quant_accuracy [--quick] [--only digits|minilm] [--mobilequant-steps 30]

One run, the same inputs for every method:
- the digits CNN (examples/digits_cnn.py, trained here in seconds): fp32 test accuracy, and per
  method the test accuracy and the relative error of the logits, ||q - f|| / ||f|| over the
  whole test set (360 images). Calibration: the first 256 training images, 8 batches of 32;
  evaluation in batches of 32 (the last one zero-padded; padded rows are dropped).
- all-MiniLM-L6-v2 (examples/minilm.py) at 32 tokens: the mean (and worst) cosine similarity
  of each method's sentence embedding to the fp32 one over the 64 held-out sentences nobody here
  wrote (`held_out_sentences()`, 4 batches of 16), their relative error, and the mean cosine on
  EVAL_SENTENCES (16, written here). Calibration: CALIBRATION_SENTENCES, 2 batches of 16.

Methods: npuc's default pipelines of npu-int8 and npu-w4a8, the old default pipeline, and on
MiniLM the variants of `npuc_variants`; torchao's
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


OLD_INT16 = ["softmax", "log_softmax", "layer_norm", "group_norm", "output"]


def npuc_variants(mobilequant_steps: int = 30) -> dict[str, tuple[str, list | None]]:
    """Row name -> (target, `passes=` for npuc.compile; None: the target's own pipeline). The
    defaults of npu-int8 and npu-w4a8 first, then the old default (no smoothquant, GELU input
    int8, min-max everywhere, bias correction always on) for comparison, mobilequant in
    smoothquant's place, and palettized 4-bit weights."""
    base: list[Any] = list(npuc.targets.get("npu-int8").pipeline)
    if "quantize" not in base:
        raise LookupError("npu-int8's pipeline has no 'quantize' step yet")
    plain = [p for p in base if p != "smoothquant"]
    at = plain.index("quantize")

    def quantize(pipeline: list, **options: Any) -> list:
        k = pipeline.index("quantize")
        return pipeline[:k] + [("quantize", options)] + pipeline[k + 1:]

    old = {"int16": OLD_INT16, "observers": {}, "bias_correction": True}
    return {
        "npuc W8A8 (npu-int8 default)": ("npu-int8", None),
        "npuc W8A8, old default pipeline": ("npu-int8", quantize(plain, **old)),
        "npuc W8A8, smoothquant replaced by mobilequant": ("npu-int8", plain[:at] + [(
            "mobilequant", {"steps": mobilequant_steps, "lr": 1e-3, "alpha": 0.5,
                            "shared_norms": True, "progress": False})] + plain[at:]),
        "npuc W4A8 (npu-w4a8 default)": ("npu-w4a8", None),
        "npuc W4A8, old default pipeline": ("npu-w4a8", quantize(plain, **old,
                                                                  weights="int4")),
        "npuc W8A8 palettized 4-bit (npu-int8 default, weights palette4)": (
            "npu-int8", quantize(base, weights="palette4")),
    }


# ------------------------------------------------------------------------------------------------
# the methods, each: (model, example, calibration) -> (run(*inputs) -> np.ndarray, float ops, s)

Method = Callable[[torch.nn.Module, tuple, list], tuple[Callable[..., np.ndarray], str, float]]


def npuc_method(target: str, passes: list | None) -> Method:
    def make(model: torch.nn.Module, example: tuple, calibration: list,
             ) -> tuple[Callable[..., np.ndarray], str, float]:
        start = time.perf_counter()
        cm = npuc.compile(model, example, target=target, calibration=calibration,
                          passes=passes)
        seconds = time.perf_counter() - start
        if not any(r.name == "quantize" for r in cm.records):
            raise RuntimeError("the pipeline ran no quantize pass")
        REPORTS[target if passes is None else ""] = cm.report()
        return cm.run, npuc_float_ops(cm.ir), seconds

    return make


REPORTS: dict[str, str] = {}  # the default pipelines' cm.report(), for the notes


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


def methods(npuc_rows: dict[str, tuple[str, list | None]]) -> dict[str, tuple[Method, bool]]:
    """Row name -> (method, is it npuc's)."""
    rows: dict[str, tuple[Method, bool]] = {k: (npuc_method(*v), True)
                                             for k, v in npuc_rows.items()}
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
    rows = {"npuc npu-int8 (default)": ("npu-int8", None),
            "npuc npu-int8 without smoothquant": ("npu-int8", [
                p for p in npuc.targets.get("npu-int8").pipeline if p != "smoothquant"]),
            "npuc npu-w4a8 (default)": ("npu-w4a8", None)}
    for name, (method, ours) in methods(rows).items():
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
    from examples.minilm import CALIBRATION_SENTENCES, EVAL_SENTENCES, encode, held_out_sentences

    model = load_minilm()
    sentences = CALIBRATION_SENTENCES[:SENTENCE_BATCH if quick else None]
    calibration = [encode(sentences[i:i + SENTENCE_BATCH], TOKENS)
                   for i in range(0, len(sentences) - SENTENCE_BATCH + 1, SENTENCE_BATCH)]
    held_out = held_out_sentences()
    batches = [encode(held_out[i:i + SENTENCE_BATCH], TOKENS)
               for i in range(0, len(held_out), SENTENCE_BATCH)]
    ours = encode(EVAL_SENTENCES[:SENTENCE_BATCH], TOKENS)
    with torch.no_grad():
        f = np.concatenate([model(*b).numpy() for b in batches])
        f_ours = model(*ours).numpy()

    try:
        variants = dict(npuc_variants(mobilequant_steps))
        if quick:
            del variants["npuc W8A8, smoothquant replaced by mobilequant"]
    except LookupError as e:
        variants = {"npuc W8A8 (npu-int8 default)": ("npu-int8", None)}
        pending = str(e)
    else:
        pending = ""

    lines = ["| method | mean cosine to fp32, held out | worst | rel. error | mean cosine, "
             "EVAL_SENTENCES | quantize s | run s | nodes left reading float |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for name, (method, ours_) in methods(variants).items():
        try:
            if pending and ours_:
                raise LookupError(pending)
            run, left, seconds = method(model, batches[0], calibration)
            start = time.perf_counter()
            q = np.concatenate([run(*b) for b in batches])
            run_s = time.perf_counter() - start
            q_ours = run(*ours)
        except Exception as e:  # a failing row is recorded, not fatal
            lines.append(f"| {name} | {failure(e, ours_)} | | | | | | |")
            print(lines[-1], flush=True)
            continue
        cos = cosines(q, f)
        rel = float(np.linalg.norm(q - f) / np.linalg.norm(f))
        lines.append(f"| {name} | {cos.mean():.4f} | {cos.min():.4f} | {rel:.4f} | "
                     f"{cosines(q_ours, f_ours).mean():.4f} | {seconds:.1f} | {run_s:.2f} | "
                     f"{left} |")
        print(lines[-1], flush=True)

    check = ""
    try:
        exported = peers.ort_float(model, batches[0])
        q = exported(*batches[0])
        f0 = f[:len(q)]
        check = (f" The float ONNX export under onnxruntime matches torch: mean cosine "
                 f"{cosines(q, f0).mean():.6f}, rel. error "
                 f"{np.linalg.norm(q - f0) / np.linalg.norm(f0):.1e} ({exported.config}).")
    except Exception as e:  # only a sanity check
        check = f" The float ONNX export check failed: {failure(e, False)}."
    note = (f"all-MiniLM-L6-v2 (examples/minilm.py, mean-pooled), evaluated on "
            f"{len(held_out)} held-out sentences nobody here wrote "
            "(`examples.minilm.held_out_sentences()`: half from scikit-learn's bundled dataset "
            "descriptions, half from the Python language reference) in batches of "
            f"{SENTENCE_BATCH} padded to {TOKENS} tokens, and on the {len(EVAL_SENTENCES)} "
            f"EVAL_SENTENCES written for this project; calibration "
            f"{plural(len(calibration), 'batch', 'batches')} of {SENTENCE_BATCH} "
            f"CALIBRATION_SENTENCES.{check}")
    if "npu-int8" in REPORTS:
        note += ("\n\nWhat npu-int8's default pipeline did (`cm.report()`, pass notes):\n\n```\n"
                 + REPORTS["npu-int8"] + "\n```")
    return "\n".join(lines), note


def load_minilm() -> torch.nn.Module:
    from examples.minilm import load

    return load()


# ------------------------------------------------------------------------------------------------


def explanation(mobilequant_steps: int) -> str:
    best = peers.ORT_PRESETS["best"]
    shown = ", ".join(f"{k}={v}" for k, v in best.items())
    target = npuc.targets.get("npu-int8")
    defaults = ", ".join(f"{k}={v}" for k, v in getattr(target, "quantize", {}).items())
    return (
        "Rows. *npuc*: `npuc.compile(model, x, target=..., calibration=...)` and `cm.run`, "
        "integer-only between the input quantize and the output dequantize. *(npu-int8 "
        "default)* is the target's own pipeline, no `passes=` ("
        f"{', '.join(target.pipeline)}"
        + (f"; quantize defaults {defaults}" if defaults else "") + "): smoothquant with its "
        "alpha searched per LayerNorm group, the GELU input int16, MSE observers on LayerNorm "
        "and GELU outputs, bias correction measured (kept only where it lowers the output "
        "error); *npu-w4a8 default* the same with int4 weights (smoothquant's search then "
        "measures W4A8). *old default pipeline*: the pipeline these targets had before (no "
        "smoothquant, int16 only for softmax/LayerNorm/output operands, min-max everywhere, "
        "bias correction always on). *mobilequant* runs in smoothquant's place "
        f"({mobilequant_steps} steps, lr 1e-3, alpha 0.5, shared_norms); palettized 4-bit sets "
        "the default pipeline's `weights` to `palette4`; `npuc_variants()` in this script. "
        "*PT2E*: "
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
