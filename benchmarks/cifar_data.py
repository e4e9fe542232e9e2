"""Synthetic CIFAR-shaped images for the speed benchmarks: 32x32x3, 10 classes, nothing downloaded.

    data: {dataset: "benchmarks.cifar_data:synthetic"}   # run from the repository root

Each class is a smooth random colour pattern; a sample is its class's pattern shifted by up to 4 pixels
(so random crops matter), blended with a weaker pattern of another class (so the teacher's soft labels
carry something) and buried in pixel noise, then standardised per channel like CIFAR. Accuracy on it
means something (neither chance nor 100%) while it costs nothing to make.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

SHAPE = (3, 32, 32)


def _templates(rng: np.random.Generator, classes: int) -> np.ndarray:
    """One smooth unit-variance pattern per class: 3x6x6 Gaussian noise, bilinearly upsampled to 32x32."""
    coarse = torch.as_tensor(rng.normal(size=(classes, 3, 6, 6)), dtype=torch.float32)
    smooth = F.interpolate(coarse, size=SHAPE[1:], mode="bilinear", align_corners=False).numpy()
    return smooth / smooth.std(axis=(1, 2, 3), keepdims=True)


def _draw(rng: np.random.Generator, templates: np.ndarray, rows: int, noise: float) -> tuple[np.ndarray, np.ndarray]:
    classes = len(templates)
    y = rng.permutation(np.arange(rows) % classes)
    other = (y + rng.integers(1, classes, rows)) % classes
    x = templates[y] + 0.6 * templates[other]
    shifts = rng.integers(-4, 5, (rows, 2))
    x = np.stack([np.roll(image, tuple(shift), axis=(1, 2)) for image, shift in zip(x, shifts, strict=True)])
    x = x + rng.normal(0.0, noise, x.shape)
    return x.astype(np.float32), y


def synthetic(
    train: int = 2_000, test: int = 1_000, classes: int = 10, noise: float = 2.5, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x, y, x_test, y_test)``, images (N, 3, 32, 32) float32 standardised per channel, balanced labels."""
    rng = np.random.default_rng(seed)
    templates = _templates(rng, classes)
    x, y = _draw(rng, templates, train, noise)
    x_test, y_test = _draw(rng, templates, test, noise)
    mean, std = x.mean(axis=(0, 2, 3), keepdims=True), x.std(axis=(0, 2, 3), keepdims=True)
    return (x - mean) / std, y, (x_test - mean) / std, y_test
