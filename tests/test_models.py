"""The model registry builds every architecture for its data, and refuses shapes it cannot take."""

from __future__ import annotations

import pytest
import torch

from raykd.config import ModelSpec
from raykd.errors import ConfigError
from raykd.models import build_model


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("mlp", (1, 40)),
        ("mlp", (1, 8, 8)),
        ("cnn1d", (1, 40)),
        ("cnn2d", (1, 8, 8)),
        ("cnn2d", (3, 32, 32)),
        ("resnet", (3, 32, 32)),
        ("resnet18", (3, 32, 32)),
    ],
)
def test_models_give_class_logits(name: str, shape: tuple[int, ...]) -> None:
    model = build_model(ModelSpec(name=name), shape, 7)
    assert model(torch.zeros(3, *shape)).shape == (3, 7)


def test_resnet_depth_and_width_are_honoured() -> None:
    small = build_model(ModelSpec(name="resnet", depth=8, width=8), (3, 32, 32), 10)
    big = build_model(ModelSpec(name="resnet", depth=20, width=16), (3, 32, 32), 10)
    assert sum(p.numel() for p in small.parameters()) * 10 < sum(p.numel() for p in big.parameters())
    with pytest.raises(ConfigError, match="6n\\+2"):
        build_model(ModelSpec(name="resnet", depth=10), (3, 32, 32), 10)


def test_wrong_input_rank_names_the_field_and_the_models_that_fit() -> None:
    with pytest.raises(ConfigError, match=r"nodes.models.1: model 'cnn1d' needs 1-D .* allowed: mlp, cnn2d, resnet"):
        build_model(ModelSpec(name="cnn1d"), (1, 8, 8), 10, field="nodes.models.1")
