"""A small CNN trained on scikit-learn's bundled digits data (8x8 images, 10 classes).

Training takes a few seconds on a CPU, so the example needs no download and no stored weights:
    npuc compile examples/digits_cnn.py:build --show --check
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn


class DigitsCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.BatchNorm2d(32), nn.ReLU6(),
        )
        self.classifier = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean(dim=(2, 3)))


def digits_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train images, train labels, test images, test labels); images scaled to [0, 1]."""
    digits = load_digits()
    images = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)
    labels = torch.tensor(digits.target)
    order = torch.from_numpy(np.random.default_rng(0).permutation(len(labels)))
    images, labels = images[order], labels[order]
    split = int(0.8 * len(labels))
    return images[:split], labels[:split], images[split:], labels[split:]


def train(epochs: int = 8, seed: int = 0) -> tuple[DigitsCNN, float]:
    """Train the CNN; returns the model in eval mode and its test accuracy."""
    torch.manual_seed(seed)
    x_train, y_train, x_test, y_test = digits_data()
    model = DigitsCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        for batch in torch.randperm(len(y_train)).split(64):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(x_train[batch]), y_train[batch])
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
    return model, accuracy


def build() -> tuple[nn.Module, tuple[torch.Tensor]]:
    """The factory `npuc compile` calls: the trained model and a batch of 8 test images."""
    model, accuracy = train()
    print(f"digits CNN trained: test accuracy {accuracy:.3f}")
    return model, (digits_data()[2][:8],)
