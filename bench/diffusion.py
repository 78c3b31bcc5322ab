"""Attention-map reuse across DDIM sampling steps, end to end on a DiT trained on digits; writes
bench/RESULTS.md and a grid of samples per policy (bench/diffusion_<policy>.png).

    python -m bench.diffusion [--steps 20 50] [--images 64] [--retrain] [--quick]

The model: diffusers' DiTTransformer2DModel (3 layers, 2 heads of 16, patch size 1) trained here
to predict noise on scikit-learn's 8x8 digits upsampled to 16x16, so its 256 tokens give
attention a real share of the work (at 64 tokens it is a quarter of the MACs and reuse cannot
pay); the weights are cached in bench/diffusion_dit.pt (`--retrain` trains again: about 20 min
on 2 cores). A small CNN trained on the same digits scores the samples.

Sampling is diffusers' DDIMScheduler at 20 and 50 steps, every policy from the same noise. Per
policy (`reuse_attention` with "always", "late", "every", a searched per-layer policy; each in
mode "map", caching softmax(QK^T), and "output", caching the attention output as PAB does):
- simulated latency, energy and cache traffic per image on npu-int8 and soc (counted cycles, not
  wall time), and the cycles saved against the cache bytes kept and moved;
- quality against the float samples without reuse from the same noise: PSNR, SSIM, the digits
  classifier's agreement, and a Frechet distance on the classifier's features (to the real
  digits, beside the reference's own);
- the integer-only npu-int8 model with and without reuse;
- the baseline a user would try instead, fewer DDIM steps, at every step count down to the
  cheapest policy's cost;
- where reuse pays per target: `layer_savings` of every attention on each target, and on a
  target whose MACs per DRAM byte make reading a map dearer than recomputing it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import npuc  # noqa: E402
from bench.results import write_section  # noqa: E402
from npuc.targets import Target  # noqa: E402

HERE = Path(__file__).parent
WEIGHTS = HERE / "diffusion_dit.pt"
TRAIN_STEPS = 1000  # the noise schedule's timesteps
SIZE = 16


def digits16() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's digits in [-1, 1], upsampled to 16x16 (N, 1, 16, 16), and their labels."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32)[:, None] / 8 - 1
    return F.interpolate(x, size=SIZE, mode="bilinear", align_corners=False), \
        torch.tensor(data.target)


class Denoiser(nn.Module):
    """dit(x, t) -> the predicted noise (unconditional: one class label, always 0)."""

    def __init__(self) -> None:
        super().__init__()
        import diffusers

        torch.manual_seed(0)
        self.net = diffusers.DiTTransformer2DModel(
            num_attention_heads=2, attention_head_dim=16, in_channels=1, out_channels=1,
            num_layers=3, sample_size=SIZE, patch_size=1, num_embeds_ada_norm=1,
            norm_type="ada_norm_zero")

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(x, timestep=t, class_labels=torch.zeros_like(t)).sample


def trained_dit(retrain: bool = False, steps: int = 2500, batch: int = 64) -> Denoiser:
    """The DiT, trained on the digits to predict the noise of a DDPM forward process."""
    import diffusers

    model = Denoiser()
    if WEIGHTS.exists() and not retrain:
        model.net.load_state_dict(torch.load(WEIGHTS, weights_only=True))
        return model.eval()
    images, _ = digits16()
    noise_schedule = diffusers.DDPMScheduler(num_train_timesteps=TRAIN_STEPS)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    lr = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.05)
    gen = torch.Generator().manual_seed(0)
    start, running = time.time(), None
    for i in range(steps):
        x0 = images[torch.randint(0, len(images), (batch,), generator=gen)]
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, TRAIN_STEPS, (batch,), generator=gen)
        loss = F.mse_loss(model(noise_schedule.add_noise(x0, noise, t), t), noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
        lr.step()
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if i % 100 == 99:
            print(f"  DiT training step {i + 1}/{steps}: loss {running:.4f} "
                  f"({time.time() - start:.0f} s)", flush=True)
    torch.save(model.net.state_dict(), WEIGHTS)
    return model.eval()


class Classifier(nn.Module):
    """A small CNN on the 16x16 digits: its predictions score the samples, its 32 penultimate
    features give the Frechet distance."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(32 * 4 * 4, 32), nn.ReLU())
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(x)
        return self.head(features), features


def trained_classifier(epochs: int = 40) -> tuple[Classifier, float]:
    """The classifier trained on 1500 digits (seconds), and its accuracy on the other 297."""
    images, labels = digits16()
    torch.manual_seed(0)
    model = Classifier()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        for batch in torch.randperm(1500).split(100):
            loss = F.cross_entropy(model(images[batch])[0], labels[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(images[1500:])[0].argmax(1) == labels[1500:]).float().mean().item()
    return model, accuracy


@dataclass
class Scorer:
    """Quality of samples against the reference samples from the same noise."""

    classifier: Classifier
    real_features: np.ndarray  # of every real digit

    def features(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            logits, features = self.classifier(torch.from_numpy(np.clip(images, -1, 1)))
        return logits.argmax(1).numpy(), features.numpy()

    def __call__(self, images: np.ndarray, reference: np.ndarray) -> dict[str, float]:
        from skimage.metrics import structural_similarity

        classes, features = self.features(images)
        want, _ = self.features(reference)
        mse = float(np.mean((images - reference) ** 2))
        ssim = np.mean([structural_similarity(a[0], b[0], data_range=2.0)
                        for a, b in zip(images, reference, strict=True)])
        return {"psnr": psnr(images, reference), "mse": mse, "ssim": float(ssim),
                "agree": float(np.mean(classes == want)),
                "fd": frechet(features, self.real_features)}


def psnr(images: np.ndarray, reference: np.ndarray) -> float:
    """dB over the whole batch, images in [-1, 1] (a peak-to-peak range of 2)."""
    mse = float(np.mean((np.clip(images, -1, 1) - np.clip(reference, -1, 1)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(4.0 / mse)


def frechet(a: np.ndarray, b: np.ndarray) -> float:
    """The Frechet distance of two Gaussians fitted to feature sets (as FID does)."""
    from scipy import linalg

    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(cov_a @ cov_b).real
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a + cov_b - 2 * root))


def scheduler(steps: int):  # noqa: ANN201 - a diffusers DDIMScheduler
    import diffusers

    ddim = diffusers.DDIMScheduler(num_train_timesteps=TRAIN_STEPS)
    ddim.set_timesteps(steps)
    return ddim


def timesteps(steps: int) -> list[int]:
    return [int(t) for t in scheduler(steps).timesteps]


def sample(denoise, noise: np.ndarray, steps: int,  # noqa: ANN001 - (x, t) -> noise
           calls: list | None = None) -> np.ndarray:
    """DDIM from `noise`; `denoise(x, t)` predicts the noise (t: int64 of shape (1,)). `calls`,
    if given, collects the model's inputs of every call (calibration data)."""
    ddim = scheduler(steps)
    x = torch.from_numpy(noise)
    for t in ddim.timesteps:
        step = np.array([int(t)], np.int64)
        if calls is not None:
            calls.append((x.numpy().copy(), step))
        eps = torch.from_numpy(np.asarray(denoise(x.numpy(), step), np.float32))
        x = ddim.step(eps, t, x).prev_sample
    return x.numpy()


def torch_denoiser(model: Denoiser):  # noqa: ANN201
    def denoise(x: np.ndarray, t: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(x), torch.from_numpy(t).expand(len(x))).numpy()
    return denoise


def graph_denoiser(graph: npuc.Graph):  # noqa: ANN201
    """The interpreter on `graph`, its state carried from call to call of one loop."""
    state: dict[str, np.ndarray] = {}

    def denoise(x: np.ndarray, t: np.ndarray) -> np.ndarray:
        return npuc.interpret(graph, x, t, state=state)[0]
    return denoise


def compiled_denoiser(cm: npuc.CompiledModel):  # noqa: ANN201
    cm.reset()
    return cm.run


def big_npu() -> Target:
    """npu-int8 with a 128x128 array, a 1024-lane DSP and an x16 LPDDR4X channel: 2,000 MACs
    per DRAM byte, where reading a cached int8 map (16 MACs of QK^T per element at head_dim
    16) costs more than the work it saves."""
    base = npuc.targets.get("npu-int8")
    return replace(base, name="npu-big", description="128x128 int8 array, x16 DRAM",
                   npu=replace(base.npu, rows=128, cols=128),
                   dsp=replace(base.dsp, lanes=1024),
                   memory=replace(base.memory, dram_bytes_per_s=base.memory.dram_bytes_per_s / 2))


def macs_per_dram_byte(target: Target) -> float:
    npu = target.npu
    return npu.rows * npu.cols * (8 // npu.weight_bits) * npu.clock_hz / \
        target.memory.dram_bytes_per_s


def compiled(graph: npuc.Graph, target: str | Target, calibration: list,
             reuse: dict | None) -> npuc.CompiledModel:
    """`graph` for `target` with the timestep tabulated and attention reused as `reuse` says."""
    target = npuc.targets.get(target)
    steps = [("tabulate", {"inputs": {"t": TRAIN_STEPS}})]
    if reuse is not None:
        steps.append(("reuse_attention", reuse))
    return npuc.compile(graph, target=target, calibration=calibration,
                        passes=steps + list(target.pipeline))


def reused(graph: npuc.Graph, reuse: dict | None) -> npuc.Graph:
    return graph if reuse is None else npuc.passes.apply(graph, "reuse_attention", **reuse)


@dataclass
class Row:
    steps: int
    policy: str
    quality: dict[str, float]
    cost: dict[str, dict[str, float]]  # target -> latency_ms, energy_uj, cycles, cache bytes
    reuse: dict | None = None


def cost(cm: npuc.CompiledModel, ts: list[int]) -> dict[str, float]:
    calls = cm.simulate_calls(ts)
    return {"ms": calls.latency_s * 1e3, "uj": calls.energy_j * 1e6, "cycles": calls.cycles,
            "cache_b": calls.reports[0].state_bytes, "cache_dram_b": calls.state_dram_bytes}


def savings_table(graph1: npuc.Graph, calibration: list, ts: list[int]) -> tuple[str, dict]:
    """Per target and mode, what one reusing call of each attention saves (us)."""
    from npuc.passes.reuse_attention import layer_savings, probe_schedules

    probes = probe_schedules(graph1, len(ts))
    rows, per_target = [], {}
    for target in ("npu-int8", "soc", big_npu()):
        target = npuc.targets.get(target)
        for mode in ("map", "output"):
            cm = compiled(graph1, target, calibration,
                          {"timesteps": ts, "mode": mode, "layers": probes})
            saved = layer_savings(cm, ts)
            per_target[target.name, mode] = saved
            base = cm.simulate(step=ts[0]).latency_s
            cells = " | ".join(f"{saved[loc] * 1e6:+.1f}" for loc in probes)
            rows.append(f"| {target.name} | {macs_per_dram_byte(target):,.0f} | {mode} | "
                        f"{base * 1e6:.1f} | {cells} |")
    layers = " | ".join(loc.removeprefix("net.transformer_blocks.") for loc in probes)
    head = (f"| target | MACs per DRAM byte | mode | one call, us | saved per reusing call, "
            f"us: {layers} |\n|---|---:|---|---:|" + "---:|" * len(probes))
    return head + "\n" + "\n".join(rows), per_target


def grid(samples: dict[str, np.ndarray], path: Path, count: int = 12) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(samples), 1, figsize=(count * 0.55, len(samples) * 0.75))
    for ax, (name, images) in zip(np.atleast_1d(axes), samples.items(), strict=True):
        strip = np.concatenate([np.pad(np.clip(im[0], -1, 1), 1, constant_values=1)
                                for im in images[:count]], axis=1)
        ax.imshow(strip, cmap="gray_r", vmin=-1, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def fixed_policies(ts: list[int]) -> dict[str, dict | None]:
    late = {"timesteps": ts, "policy": "late", "reuse_after": 0.5, "every": 2}
    every = {"timesteps": ts, "policy": "every", "every": 2}
    return {"always (map)": {"timesteps": ts, "policy": "always"},
            "late 1/2, every 2 (map)": {**late, "mode": "map"},
            "every 2 (map)": {**every, "mode": "map"},
            "late 1/2, every 2 (output)": {**late, "mode": "output"},
            "every 2 (output, PAB-style)": {**every, "mode": "output"}}


def run_steps(steps: int, model: Denoiser, scorer: Scorer, graphs: dict[int, npuc.Graph],
              noise: np.ndarray, search_noise: np.ndarray, savings: dict | None,
              quick: bool) -> tuple[list[Row], dict[str, np.ndarray], dict]:
    """Every policy at `steps` DDIM steps: quality on `noise`, simulated cost per image."""
    from npuc.passes.reuse_attention import search_policy

    ts = timesteps(steps)
    calls: list = []
    ref = sample(torch_denoiser(model), noise, steps)
    search_ref = sample(torch_denoiser(model), search_noise, steps, calls)
    one = [(x[i:i + 1], t) for x, t in calls for i in range(2)]  # batch-1 calibration
    g_eval, g_search, g_one = graphs[len(noise)], graphs[len(search_noise)], graphs[1]
    if savings is None:
        _, savings = savings_table(g_one, one, ts)
    policies = fixed_policies(ts)
    plain = sample(graph_denoiser(g_eval), noise, steps)
    samples = {"float, no reuse": ref}
    rows = [Row(steps, "no reuse (float)", scorer(ref, ref),
                {t: cost(compiled(g_one, t, one, None), ts) for t in ("npu-int8", "soc")})]
    print(f"  {steps} steps: float, no reuse: {rows[0].cost['npu-int8']['ms']:.2f} ms "
          f"on npu-int8", flush=True)
    for mode in ("map", "output"):  # searched against the late policy's quality
        bound = psnr(sample(graph_denoiser(reused(g_search, {
            **policies[f"late 1/2, every 2 ({mode})"]})), search_noise, steps), search_ref)
        found = search_policy(g_search, ts,
                              lambda g: sample(graph_denoiser(g), search_noise, steps),
                              lambda s: psnr(s, search_ref), bound,
                              savings["npu-int8", mode], mode=mode, progress=not quick)
        print(f"  {steps} steps, {mode}: {found}", flush=True)
        policies[f"searched for npu-int8 ({mode})"] = {"timesteps": ts, "mode": mode,
                                                       "policy": "always",
                                                       "layers": found.layers}
    for name, reuse in policies.items():
        got = sample(graph_denoiser(reused(g_eval, reuse)), noise, steps)
        if reuse.get("policy") == "always" and "layers" not in reuse:
            assert np.array_equal(got, plain), "always must equal the graph without the pass"
        samples[name] = got
        rows.append(Row(steps, name, scorer(got, ref),
                        {t: cost(compiled(g_one, t, one, reuse), ts)
                         for t in ("npu-int8", "soc")}, reuse))
        print(f"  {steps} steps, {name}: PSNR {rows[-1].quality['psnr']:.1f} dB, "
              f"{rows[-1].cost['npu-int8']['ms']:.2f} ms on npu-int8", flush=True)
    # the integer-only model, with and without reuse, on the first images of the noise
    n_int = len(search_noise)
    for name in ("no reuse", "late 1/2, every 2 (output)", "searched for npu-int8 (output)"):
        reuse = policies.get(name)
        cm = compiled(g_search, "npu-int8", calls, reuse)
        got = sample(compiled_denoiser(cm), noise[:n_int], steps)
        samples[f"int8, {name}"] = got
        rows.append(Row(steps, f"int8, {name}", scorer(got, ref[:n_int]),
                        {t: cost(compiled(g_one, t, one, reuse), ts)
                         for t in ("npu-int8", "soc")}, reuse))
        print(f"  {steps} steps, int8 {name}: PSNR {rows[-1].quality['psnr']:.1f} dB", flush=True)
    return rows, samples, savings


def fewer_steps(steps: int, model: Denoiser, scorer: Scorer, noise: np.ndarray,
                ref: np.ndarray, rows: list[Row]) -> list[Row]:
    """DDIM with fewer steps at the cost of each policy (the cost is linear in the calls)."""
    per_call = {t: {k: v / steps for k, v in rows[0].cost[t].items()}
                for t in ("npu-int8", "soc")}
    ratios = [r.cost["npu-int8"]["ms"] / rows[0].cost["npu-int8"]["ms"] for r in rows[1:]]
    counts = sorted({max(1, int(steps * q)) for q in ratios if q < 1} | {steps // 2})
    out = []
    for k in counts:
        got = sample(torch_denoiser(model), noise, k)
        out.append(Row(steps, f"DDIM-{k}", scorer(got, ref),
                       {t: {key: v * k for key, v in per_call[t].items()}
                        for t in per_call}))
    return out


def table(rows: list[Row], ddim: list[Row], reference_fd: float) -> str:
    base = rows[0].cost
    head = ("| policy | PSNR dB | SSIM | agree | FD | npu-int8 ms | energy uJ | saved | "
            "cache B | cache DRAM B | soc ms | saved | DDIM steps at equal npu-int8 cost: "
            "PSNR |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    lines = [head]
    for r in rows + ddim:
        npu, soc = r.cost["npu-int8"], r.cost["soc"]
        q = r.quality
        peer = [d for d in ddim if d.cost["npu-int8"]["ms"] <= npu["ms"] * (1 + 1e-9)]
        equal = (f"DDIM-{peer[-1].policy.split('-')[1]}: {peer[-1].quality['psnr']:.1f}"
                 if peer and not r.policy.startswith("DDIM") else "")
        psnr_cell = "ref" if r is rows[0] else f"{q['psnr']:.1f}"
        lines.append(
            f"| {r.policy} | {psnr_cell} | {q['ssim']:.3f} | {q['agree']:.0%} | {q['fd']:.1f} | "
            f"{npu['ms']:.2f} | {npu['uj']:.0f} | {1 - npu['ms'] / base['npu-int8']['ms']:.1%} | "
            f"{int(npu['cache_b']):,} | {int(npu['cache_dram_b']):,} | {soc['ms']:.2f} | "
            f"{1 - soc['ms'] / base['soc']['ms']:.1%} | {equal} |")
    return "\n".join(lines) + f"\n\nFD of the real digits' own held-out features: " \
        f"{reference_fd:.1f}."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[20, 50])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--retrain", action="store_true")
    parser.add_argument("--quick", action="store_true", help="20 steps, 16 images, no writing")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.images = [20], 16
    torch.manual_seed(0)
    start = time.time()
    model = trained_dit(args.retrain)
    classifier, accuracy = trained_classifier()
    images, _ = digits16()
    real = Scorer(classifier, np.zeros(1))
    real.real_features = real.features(images[:1500].numpy())[1]
    held_out_fd = frechet(real.features(images[1500:].numpy())[1], real.real_features)
    rng = np.random.default_rng(1)
    noise = rng.normal(size=(args.images, 1, SIZE, SIZE)).astype(np.float32)
    search_noise = rng.normal(size=(16, 1, SIZE, SIZE)).astype(np.float32)
    graphs = {b: npuc.capture(model, (torch.zeros(b, 1, SIZE, SIZE), torch.tensor([0])))
              for b in {1, len(noise), len(search_noise)}}
    sections, savings, record = [], None, []
    for steps in args.steps:
        print(f"DDIM {steps} steps, {len(noise)} images", flush=True)
        if savings is None:
            ts = timesteps(steps)
            calls: list = []
            sample(torch_denoiser(model), search_noise, steps, calls)
            crossover, savings = savings_table(
                graphs[1], [(x[i:i + 1], t) for x, t in calls for i in range(2)], ts)
        rows, samples, savings = run_steps(steps, model, real, graphs, noise,
                                           search_noise, savings, args.quick)
        ddim = fewer_steps(steps, model, real, noise, samples["float, no reuse"], rows)
        for d in ddim:
            samples[d.policy] = sample(torch_denoiser(model), noise, int(d.policy[5:]))
        grid(samples, HERE / f"diffusion_{steps}.png")
        sections.append(f"### DDIM {steps} steps\n\n{table(rows, ddim, held_out_fd)}\n\n"
                        f"![samples](diffusion_{steps}.png)")
        record += [vars(r) for r in rows + ddim]
    text = "\n\n".join(sections)
    note = (f"A DiT (3 layers, 2 heads of 16, patch 1: 256 tokens; "
            f"{sum(p.numel() for p in model.parameters()):,} parameters) trained here on the "
            f"digits at 16x16, sampled from the same {len(noise)} noises by every policy; "
            f"quality against the float samples without reuse (the integer rows on the first "
            f"{len(search_noise)}): PSNR, SSIM, the digits classifier's agreement (it scores "
            f"{accuracy:.1%} on held-out real digits) and the Frechet distance of its 32 "
            f"features to the real digits'. Cost per image, simulated (counted cycles, not wall "
            f"time), with the timestep tabulated; 'saved' against no reuse; cache bytes kept "
            f"between calls and moved to and from DRAM over the loop. Searched policies: "
            f"`search_policy` on 16 other noises, bound by the late policy's PSNR there, "
            f"savings measured on npu-int8 by `layer_savings`. Where reuse pays, per target "
            f"(one reusing call of each attention, 20 steps; positive = it pays):\n\n"
            f"{crossover}\n\nTotal run {time.time() - start:.0f} s.")
    print(note + "\n\n" + text)
    if not args.quick:
        (HERE / "diffusion.json").write_text(json.dumps(record, indent=1, default=str))
        write_section("Attention-map reuse across DDIM steps: a DiT on digits",
                      "bench/diffusion.py", text, note)


if __name__ == "__main__":
    main()
