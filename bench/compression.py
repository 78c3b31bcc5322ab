"""What pruning and low-rank compression buy, npuc beside its peers; writes bench/RESULTS.md.

    python -m bench.compression [--only digits|resnet18|minilm] [--no-c] [--quick] [--replot]
                                [--retry]

For each model and method (unstructured magnitude 50/75/90%, N:M 2:4 and 1:4, channels 25/50%,
low-rank at 1/2 and 1/4 of the MACs; each with int8 and int4 weights) npuc compiles the model
for npu-int8 with the compression pass before smoothquant and quantize in the target's own
pipeline, and the table gives:
- accuracy: the test accuracy on 360 held-out digits of the digits CNN and of a ResNet-18 trained
  here on the digits upsampled to 64x64 (`trained_resnet18`: no trained ResNet-18 ships in a
  package, and a random one computes a nearly constant function); all-MiniLM-L6-v2's mean
  cosine to fp32 over held-out sentences;
- weight bytes as stored (the encoding quantize chose: dense, sparse bitmap, nm, int4, ...),
  MACs (of the lowered graph: channel pruning and low rank shrink them, zeros do not);
- simulated cycles and energy on npu-int8 under its own sparsity mode and under the ideal one
  (which zeros a perfect engine would skip), and on soc;
- the generated C's latency on this CPU (one thread, median of runs).

Peers on the same models in the same run: torch.ao.pruning's WeightNormSparsifier (magnitude and
N:M, masks squashed into the weights) and Torch-Pruning 1.6's MagnitudePruner (L1 channel
pruning through its dependency graph); npuc then compiles each peer's pruned torch model
unchanged, so accuracy is compared at equal sparsity and at equal simulated latency (for each
peer, npuc's most accurate row at no more npu-int8 latency). The rows are kept in
bench/compression_<model>.json; the plot of accuracy against simulated latency goes to
bench/compression_<model>.png (`--replot` redraws it and the section from the JSON).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import npuc  # noqa: E402
from bench.results import write_section  # noqa: E402

TARGET = "npu-int8"


@dataclass
class Case:
    """A model, its calibration inputs and an accuracy measure of a compiled model."""

    name: str
    model: nn.Module
    calibration: list[tuple[torch.Tensor, ...]]
    accuracy: Callable[[Callable], float]  # of a function from inputs to outputs
    metric: str
    example: tuple[torch.Tensor, ...]
    higher_is_better: bool = True


def digits() -> Case:
    from examples.digits_cnn import train

    return digits_case("digits CNN", train()[0], lambda x: x)


WEIGHTS = ROOT / "bench" / ".cache" / "resnet18_digits64.pt"  # trained here, not shipped


def upsampled(x: torch.Tensor, size: int = 64) -> torch.Tensor:
    """8x8 grey digits as size x size RGB images (bilinear)."""
    return nn.functional.interpolate(x, size=(size, size), mode="bilinear",
                                     align_corners=False).repeat(1, 3, 1, 1)


def trained_resnet18(epochs: int = 6) -> nn.Module:
    """torchvision's ResNet-18 layout (tests/models.py) trained on the digits upsampled to 64x64:
    no trained ResNet-18 ships in a package here, a randomly initialised one computes a nearly
    constant function (its logits vary by 0.4% across inputs), and at 224x224 training takes
    hours on 2 cores. About 10 minutes here (97.8% test accuracy); cached in bench/.cache/."""
    from examples.digits_cnn import digits_data
    from tests.models import ResNet18

    model = ResNet18(classes=10)
    if WEIGHTS.exists():
        model.load_state_dict(torch.load(WEIGHTS))
        return model.eval()
    torch.manual_seed(0)
    x_train, y_train, _, _ = digits_data()
    images = upsampled(x_train)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    for epoch in range(epochs):
        print(f"training ResNet-18 on digits: epoch {epoch + 1}/{epochs}", flush=True)
        model.train()
        for batch in torch.randperm(len(y_train)).split(64):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(images[batch]), y_train[batch]).backward()
            optimizer.step()
    WEIGHTS.parent.mkdir(exist_ok=True)
    torch.save(model.state_dict(), WEIGHTS)
    return model.eval()


def digits_case(name: str, model: nn.Module, prepare: Callable) -> Case:
    """Test accuracy on the 360 held-out digits, in batches of 32, images through `prepare`."""
    from examples.digits_cnn import digits_data

    x_train, _, x_test, y_test = digits_data()
    calibration = [(prepare(x_train[i:i + 32]),) for i in range(0, 256, 32)]

    def accuracy(run: Callable) -> float:
        right = 0
        for i in range(0, len(y_test), 32):
            batch = x_test[i:i + 32]
            pad = 32 - len(batch)
            padded = torch.cat([batch, batch.new_zeros((pad,) + batch.shape[1:])]) if pad else batch
            logits = np.asarray(run(prepare(padded)))[:len(batch)]
            right += int((logits.argmax(1) == y_test[i:i + 32].numpy()).sum())
        return 100.0 * right / len(y_test)

    return Case(name, model, calibration, accuracy, "test accuracy %", calibration[0])


def resnet18() -> Case:
    return digits_case("ResNet-18 (digits, 64x64)", trained_resnet18(), upsampled)


def minilm(sentences: int = 16) -> Case:
    from examples import minilm as lm

    model = lm.load()
    calibration = [lm.encode(lm.CALIBRATION_SENTENCES[i:i + 16])
                   for i in range(0, len(lm.CALIBRATION_SENTENCES), 16)]
    held = lm.held_out_sentences()[:sentences]
    batches = [lm.encode(held[i:i + 16]) for i in range(0, len(held), 16)]
    with torch.no_grad():
        wants = [model(*b).numpy() for b in batches]

    def accuracy(run: Callable) -> float:
        cos = []
        for b, want in zip(batches, wants, strict=True):
            got = np.asarray(run(*b))
            cos += list((got * want).sum(1) / np.linalg.norm(got, axis=1)
                        / np.linalg.norm(want, axis=1))
        return float(np.mean(cos))

    return Case("all-MiniLM-L6-v2", model, calibration, accuracy, "mean cosine to fp32",
                calibration[0])


NOTE = ("The target's pipeline with the compression step before smoothquant and quantize, "
        "post-training (no finetune=); weights `auto-sparse` (each layer in the smallest of "
        "int8, sparse bitmap, nm) or int4. Cycles: npu-int8 under its own sparsity mode "
        "(gating: zeros save energy, not cycles) and under the ideal one; soc under its own "
        "(ideal). C: make's defaults on this CPU; a sparse layer below 10% density with 64+ rows "
        "runs the zero-skipping kernel, other encoded weights are decoded each call. Peers "
        "prune the torch model; npuc then compiles it unchanged.")

CASES = {"digits": digits, "resnet18": resnet18, "minilm": minilm}

# (label, the compression step inserted into the target pipeline or None)
METHODS: list[tuple[str, tuple[str, dict] | None]] = [
    ("dense", None),
    ("magnitude 50%", ("prune_magnitude", {"sparsity": 0.5})),
    ("magnitude 75%", ("prune_magnitude", {"sparsity": 0.75})),
    ("magnitude 90%", ("prune_magnitude", {"sparsity": 0.9})),
    ("2:4", ("prune_nm", {"n": 2, "m": 4})),
    ("1:4", ("prune_nm", {"n": 1, "m": 4})),
    ("channels 25%", ("prune_channels", {"sparsity": 0.25})),
    ("channels 50%", ("prune_channels", {"sparsity": 0.5})),
    ("low rank 1/2 MACs", ("lowrank", {"budget": 0.5, "progress": False})),
    ("low rank 1/4 MACs", ("lowrank", {"budget": 0.25, "progress": False})),
]


def pipeline(step: tuple[str, dict] | None, weights: str, target: str = TARGET) -> list:
    """The target's pipeline with `step` before its equivalent transforms and quantize."""
    steps: list = list(npuc.targets.get(target).pipeline)
    at = steps.index("smoothquant")
    if step is not None:
        steps.insert(at, step)
    steps[steps.index("quantize")] = ("quantize", {"weights": weights})
    return steps


def c_latency(cm: npuc.CompiledModel, inputs: tuple) -> float:
    """Median µs of the generated C (make's defaults) over 5 batches of 10 runs."""
    with tempfile.TemporaryDirectory() as tmp:
        project = cm.emit_c(Path(tmp) / "c")
        subprocess.run(["make", "-s", "-C", str(project)], check=True)
        np.concatenate([np.asarray(x, dtype="<f4").ravel() for x in inputs]).tofile(
            project / "in.bin")
        means = []
        for _ in range(5):
            done = subprocess.run([str(project / "model"), str(project / "in.bin"),
                                   str(project / "out.bin"), "10"], check=True,
                                  capture_output=True, text=True)
            means.append(float((done.stdout + done.stderr).split("mean")[1].split()[0]))
        return statistics.median(means)


def lowers_alike(a: str, b: str) -> bool:
    """Targets whose pipeline and quantize table agree lower a model to the same graph."""
    ta, tb = npuc.targets.get(a), npuc.targets.get(b)
    return ta.pipeline == tb.pipeline and ta.quantize == tb.quantize


def measure(case: Case, model: nn.Module, step: tuple[str, dict] | None, weights: str,
            with_c: bool) -> dict:
    t0 = time.perf_counter()
    cm = npuc.compile(model, case.example, target=TARGET, calibration=case.calibration,
                      passes=pipeline(step, weights))
    seconds = time.perf_counter() - t0
    report = cm.simulate()
    summary = cm.summary()
    if lowers_alike(TARGET, "soc"):  # the same integer graph: only the simulation differs
        soc = npuc.simulator.simulate(cm.ir, "soc")
    else:
        soc = npuc.compile(model, case.example, target="soc", calibration=case.calibration,
                           passes=pipeline(step, weights, "soc")).simulate()
    ideal = report.by_sparsity["ideal"]
    return {"accuracy": case.accuracy(cm.run), "bytes": summary.weight_bytes,
            "macs": summary.macs, "cycles": report.total_cycles, "energy": report.energy_j,
            "latency_s": report.latency_s, "ideal": ideal.cycles, "ideal_s": ideal.latency_s,
            "soc_s": soc.latency_s, "compile_s": seconds,
            "c_us": c_latency(cm, tuple(x.numpy() for x in case.example)) if with_c else None}


def peers(case: Case) -> list[tuple[str, nn.Module | str]]:
    """The peers' pruned copies of the model (or why a peer could not prune it):
    torch.nn.utils.prune (magnitude), torch.ao.pruning (N:M) and Torch-Pruning (channels)."""
    import copy

    from torch.ao.pruning import WeightNormSparsifier
    from torch.nn.utils import prune

    def layers(model: nn.Module, kinds: tuple = (nn.Conv2d, nn.Linear)) -> list[nn.Module]:
        return [m for m in model.modules() if isinstance(m, kinds)]

    out: list[tuple[str, nn.Module | str]] = []
    model = copy.deepcopy(case.model)
    for m in layers(model):
        prune.l1_unstructured(m, "weight", amount=0.75)
        prune.remove(m, "weight")
    out.append(("torch.nn.utils.prune L1 75% per layer", model))
    model = copy.deepcopy(case.model)
    names = {id(m): n for n, m in model.named_modules()}
    try:  # its N:M blocks are over 2-D weights: linears only
        sparsifier = WeightNormSparsifier(sparsity_level=1.0, sparse_block_shape=(1, 4),
                                          zeros_per_block=2)
        sparsifier.prepare(model, [{"tensor_fqn": f"{names[id(m)]}.weight"}
                                   for m in layers(model, (nn.Linear,))])
        sparsifier.step()
        sparsifier.squash_mask()
        out.append(("torch.ao.pruning 2:4 (linears only)", model))
    except Exception as e:  # noqa: BLE001
        out.append(("torch.ao.pruning 2:4", f"n/a ({type(e).__name__}: {e})"[:100]))
    try:
        import torch_pruning as tp

        def pruned(ignored: Callable[[nn.Module], list[nn.Module]]) -> nn.Module:
            model = copy.deepcopy(case.model)
            pruner = tp.pruner.MagnitudePruner(model, case.example,
                                               importance=tp.importance.MagnitudeImportance(p=1),
                                               pruning_ratio=0.25, ignored_layers=ignored(model))
            pruner.step()
            with torch.no_grad():
                model(*case.example)  # Torch-Pruning can leave a model that no longer runs
            return model

        try:  # its default: every layer but the head
            out.append(("Torch-Pruning L1 channels 25%",
                        pruned(lambda m: layers(m, (nn.Linear,))[-1:])))
        except RuntimeError as e:
            # on MiniLM its dependency graph prunes the residual stream and leaves a model that
            # fails in torch ("mat1 and mat2 shapes cannot be multiplied"): prune only the
            # FFNs' inner channels, as npuc's prune_channels does there
            def ffn_only(m: nn.Module) -> list[nn.Module]:
                return [x for n, x in m.named_modules()
                        if isinstance(x, nn.Linear | nn.Embedding | nn.LayerNorm)
                        and not n.endswith("intermediate.dense")]

            print(f"Torch-Pruning's default pruning broke the model ({e}); FFN channels only")
            out.append(("Torch-Pruning L1 FFN channels 25% (its default broke the model)",
                        pruned(ffn_only)))
    except Exception as e:  # noqa: BLE001
        out.append(("Torch-Pruning channels 25%", f"n/a ({type(e).__name__}: {e})"[:100]))
    return out


def table(case: Case, rows: list[tuple[str, str, dict]]) -> str:
    head = (f"| method | weights | {case.metric} | weight KB | MMACs | npu-int8 cycles (own mode) "
            "| npu-int8 cycles (ideal) | npu-int8 µJ | soc µs | C µs |")
    lines = [head, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for label, weights, r in rows:
        if "error" in r:
            lines.append(f"| {label} | {weights} | pending: {r['error']} | | | | | | | |")
            continue
        c = f"{r['c_us']:,.0f}" if r.get("c_us") is not None else "-"
        lines.append(f"| {label} | {weights} | {r['accuracy']:.4f} | {r['bytes'] / 1024:,.1f} | "
                     f"{r['macs'] / 1e6:,.1f} | {r['cycles']:,} | {r['ideal']:,} | "
                     f"{r['energy'] * 1e6:,.1f} | {r['soc_s'] * 1e6:,.0f} | {c} |")
    return "\n".join(lines)


def equal_latency(case: Case, rows: list[tuple[str, str, dict]]) -> str:
    """Per peer: npuc's most accurate row at no more simulated latency than the peer's, on
    npu-int8 (zeros gated: only fewer MACs are faster) and on soc (zeros skipped)."""
    def better(a: float, b: float) -> bool:
        return a > b if case.higher_is_better else a < b

    def best_within(key: str, budget: float) -> str:
        best = None
        for label, weights, r in rows:
            if label in LABELS and "error" not in r and r[key] <= budget * 1.0001 and (
                    best is None or better(r["accuracy"], best[2]["accuracy"])):
                best = (label, weights, r)
        if best is None:
            return "none that fast | |"
        return f"{best[0]} ({best[1]}) | {best[2]['accuracy']:.4f} | {best[2][key] * 1e6:,.1f}"

    lines = ["| peer | its accuracy | npu-int8 µs | npuc's best within it | accuracy | µs "
             "| soc µs | npuc's best within it | accuracy | µs |",
             "|---|---:|---:|---|---:|---:|---:|---|---:|---:|"]
    for label, _, r in rows:
        if label in LABELS or "error" in r:
            continue
        lines.append(f"| {label} | {r['accuracy']:.4f} | {r['latency_s'] * 1e6:,.1f} | "
                     f"{best_within('latency_s', r['latency_s'])} | {r['soc_s'] * 1e6:,.1f} | "
                     f"{best_within('soc_s', r['soc_s'])} |")
    return "\n".join(lines)


def plot(case: Case, rows: list[tuple[str, str, dict]], path: Path) -> None:
    """Accuracy against simulated npu-int8 latency: each row under the target's own sparsity
    mode (filled) and, where zeros would be skipped, under the ideal one (hollow)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    styles = {"auto-sparse": ("tab:blue", "o"), "int4": ("tab:orange", "s")}
    for label, weights, r in rows:
        if "error" in r:
            continue
        peer = label not in LABELS
        color, marker = ("tab:green", "^") if peer else styles[weights]
        x, y = r["latency_s"] * 1e6, r["accuracy"]
        ax.scatter(x, y, color=color, marker=marker, zorder=3)
        if r["ideal_s"] < r["latency_s"] * 0.98:
            ax.scatter(r["ideal_s"] * 1e6, y, facecolors="none", edgecolors=color,
                       marker=marker, zorder=3)
            ax.plot([r["ideal_s"] * 1e6, x], [y, y], color=color, lw=0.6, ls=":")
        ax.annotate(label if weights == "auto-sparse" else f"{label}, int4", (x, y),
                    fontsize=6.5, xytext=(3, 3), textcoords="offset points")
    for name, (color, marker) in {"npuc, int8/sparse weights": styles["auto-sparse"],
                                  "npuc, int4 weights": styles["int4"],
                                  "peer-pruned model": ("tab:green", "^")}.items():
        ax.scatter([], [], color=color, marker=marker, label=name)
    ax.scatter([], [], facecolors="none", edgecolors="gray", label="same, ideal zero skipping")
    ax.set_xlabel("simulated npu-int8 latency (µs)")
    ax.set_ylabel(case.metric)
    if not case.higher_is_better:
        ax.set_yscale("log")
        ax.invert_yaxis()  # up is better either way
    ax.set_title(f"{case.name}: accuracy vs simulated latency (npuc {TARGET})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


LABELS = {label for label, _ in METHODS}


def report(key: str, case: Case, rows: list[tuple[str, str, dict]], write: bool) -> None:
    text = table(case, rows)
    at_latency = equal_latency(case, rows)
    print(text, at_latency, sep="\n\n", flush=True)
    if write:
        image = ROOT / "bench" / f"compression_{key}.png"
        plot(case, rows, image)
        write_section(f"Compression trade-offs: {case.name}", "python -m bench.compression",
                      f"{text}\n\nAt equal simulated latency:"
                      f"\n\n{at_latency}\n\n![accuracy vs latency]({image.name})", NOTE)


def retried(case: Case, rows: list[tuple[str, str, dict]], with_c: bool
            ) -> list[tuple[str, str, dict]]:
    """`rows` with each failed one measured again (a method by its label, a peer rebuilt); a
    failed peer row whose peer is now labelled otherwise gives way to the peer's new row."""
    steps = dict(METHODS)
    failed = any("error" in r and label not in steps for label, _, r in rows)
    models = dict(peers(case)) if failed else {}
    stored = {label for label, _, _ in rows}
    rows = rows + [(label, "auto-sparse", {"error": "new"}) for label in models
                   if label not in stored]
    out = []
    for label, weights, r in rows:
        if "error" in r:
            if label not in steps and label not in models:
                continue
            print(f"{case.name}: {label}, {weights} (again)", flush=True)
            model = case.model if label in steps else models[label]
            try:
                if isinstance(model, str):
                    raise RuntimeError(model)
                r = measure(case, model, steps.get(label), weights, with_c)
            except Exception as e:  # noqa: BLE001 - still failing: recorded again
                r = {"error": f"{type(e).__name__}: {e}"[:120]}
        out.append((label, weights, r))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=sorted(CASES))
    parser.add_argument("--no-c", action="store_true", help="skip building and timing the C")
    parser.add_argument("--quick", action="store_true", help="int8 only, print, do not write")
    parser.add_argument("--replot", action="store_true",
                        help="redraw the plot and the section from the stored rows")
    parser.add_argument("--retry", action="store_true",
                        help="measure again only the stored rows that failed")
    args = parser.parse_args()
    for key in [args.only] if args.only else list(CASES):
        stored = ROOT / "bench" / f"compression_{key}.json"
        if args.replot:
            saved = json.loads(stored.read_text())
            case = Case(saved["name"], nn.Identity(), [], lambda run: 0.0, saved["metric"], (),
                        saved["higher_is_better"])
            report(key, case, [tuple(r) for r in saved["rows"]], True)
            continue
        case = CASES[key]()
        if args.retry:
            rows = retried(case, [tuple(r) for r in json.loads(stored.read_text())["rows"]],
                           not args.no_c)
            stored.write_text(json.dumps({"name": case.name, "metric": case.metric,
                                          "higher_is_better": case.higher_is_better,
                                          "rows": rows}, indent=1))
            report(key, case, rows, True)
            continue
        rows = []
        started = time.perf_counter()
        for weights in ["auto-sparse"] if args.quick else ["auto-sparse", "int4"]:
            for label, step in METHODS:
                print(f"{case.name}: {label}, {weights} "
                      f"({time.perf_counter() - started:.0f} s)", flush=True)
                try:
                    rows.append((label, weights, measure(case, case.model, step, weights,
                                                         not args.no_c)))
                except Exception as e:  # a failing row is recorded, not fatal
                    rows.append((label, weights, {"error": f"{type(e).__name__}: {e}"[:120]}))
        for label, model in peers(case):
            print(f"{case.name}: {label}", flush=True)
            if isinstance(model, str):
                rows.append((label, "auto-sparse", {"error": model}))
                continue
            try:
                rows.append((label, "auto-sparse", measure(case, model, None, "auto-sparse",
                                                           not args.no_c)))
            except Exception as e:
                rows.append((label, "auto-sparse", {"error": f"{type(e).__name__}: {e}"[:120]}))
        if not args.quick:
            stored.write_text(json.dumps({"name": case.name, "metric": case.metric,
                                          "higher_is_better": case.higher_is_better,
                                          "rows": rows}, indent=1))
        report(key, case, rows, not args.quick)


if __name__ == "__main__":
    main()
