"""A user's own project, as raykd sees it: a dataset function and a model class, nothing raykd-specific.

``distil_your_own.py`` and ``distil_your_own.yaml`` name them as ``my_project:make_data`` and
``my_project:SmallNet``; raykd imports them from the working folder (run from ``examples/``).
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import make_classification
from torch import nn


def make_data(samples: int = 3000, features: int = 20, classes: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    """A tabular classification problem: 80% train, 20% test, integer labels 0..classes-1."""
    x, y = make_classification(
        n_samples=samples,
        n_features=features,
        n_informative=features // 2,
        n_classes=classes,
        n_clusters_per_class=2,
        class_sep=1.2,
        random_state=seed,
    )
    x = x.astype(np.float32)
    cut = int(0.8 * samples)
    return {"x": x[:cut], "y": y[:cut], "x_test": x[cut:], "y_test": y[cut:]}


class SmallNet(nn.Module):
    """An MLP of the user's own: raykd passes ``num_classes`` and ``input_shape``, the YAML the rest."""

    def __init__(self, num_classes: int, input_shape: tuple[int, ...], hidden: int = 32) -> None:
        super().__init__()
        features = int(np.prod(input_shape))
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def pretrain(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int = 30, seed: int = 0) -> nn.Module:
    """Training done elsewhere, by someone else: what produces the checkpoint a node arrives with."""
    torch.manual_seed(seed)
    inputs, targets = torch.from_numpy(x), torch.from_numpy(y).long()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(epochs):
        for rows in torch.randperm(len(x)).split(64):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(inputs[rows]), targets[rows]).backward()
            optimizer.step()
    return model.eval()
