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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import npuc  # noqa: E402
from bench.results import write_section  # noqa: E402

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
