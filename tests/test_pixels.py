"""Pixels kept as uint8 (4x smaller in memory, on a GPU and on the way to a teacher server) and standardised by the
models themselves (``raykd.data.preprocess.Standardise`` as a forward pre-hook): every model raykd builds for pixel
data sees what it saw when the data was stored as floats."""

from __future__ import annotations

import copy
import csv
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import raykd
from raykd.config import DataConfig, ModelSpec
from raykd.data import build_augment, load_dataset
from raykd.data.augment import random_crop
from raykd.data.preprocess import IDENTITY, Standardise
from raykd.engine import TransferBatches, fit, seed_everything
from raykd.methods.kd import KnowledgeDistillation
from raykd.models import build_model
from raykd.teacher.inline import InlineTeacher
from raykd.teacher.server import Carried, narrowed
from tests.conftest import tiny_raw

RECORD = {"inputs": "image", "scale": 1 / 255, "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.3, 0.25]}
SHAPE = (3, 8, 8)


def _pixels(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random images whose class is their brightest channel (learnable), as uint8."""
    x = np.random.default_rng(seed).integers(0, 256, size=(rows, *SHAPE), dtype=np.uint8)
    return x, x.reshape(rows, 3, -1).mean(axis=2).argmax(axis=1)


def test_a_model_built_for_pixels_standardises_uint8_and_takes_floats_as_they_are() -> None:
    torch.manual_seed(0)
    plain = build_model(ModelSpec(name="cnn2d", width=4), SHAPE, 3).eval()
    for_pixels = copy.deepcopy(plain)
    for_pixels.register_forward_pre_hook(Standardise(RECORD).hook)
    built = build_model(ModelSpec(name="cnn2d", width=4), SHAPE, 3, pixels=RECORD).eval()
    built.load_state_dict(plain.state_dict())  # the hook adds nothing to the weights
    x = torch.as_tensor(_pixels(5, 0)[0])
    standardised = Standardise(RECORD)(x)
    assert standardised.dtype == torch.float32
    assert torch.equal(built(x), plain(standardised)) and torch.equal(for_pixels(x), plain(standardised))
    assert torch.equal(built(standardised), plain(standardised))  # floats pass through untouched
    shipped = pickle.loads(pickle.dumps(built))  # the hook travels with a pickled model (Ray, MLflow)
    assert torch.equal(shipped(x), plain(standardised))


def test_pixels_and_the_same_values_as_floats_train_identically_with_augmentation() -> None:
    """Identity preprocessing (an .npz of uint8): a KD run on uint8 rows equals the run on their float32 copies,
    random crops (zero padding) and flips included."""
    x, y = _pixels(96, 1)

    def run(inputs: torch.Tensor, pixels: dict[str, Any] | None) -> tuple[list[dict[str, float]], list[torch.Tensor]]:
        seed_everything(3)
        teacher, student = (build_model(ModelSpec(name="cnn2d", width=4), SHAPE, 3, pixels=pixels) for _ in "ts")
        augment = build_augment(DataConfig(augment=["random_crop", "horizontal_flip"]).augment, 5)
        batches = TransferBatches(inputs, torch.as_tensor(y), np.arange(40), np.arange(40, 96), 16, True, 7, augment)
        losses: list[dict[str, float]] = []
        on_epoch = lambda epoch, means: losses.append(means)  # noqa: E731
        fit([student], KnowledgeDistillation(), batches, 2, 1e-2, 0.0, InlineTeacher([teacher]), on_epoch)
        return losses, [p.detach().clone() for p in student.parameters()]

    (losses, weights), (pixel_losses, pixel_weights) = (
        run(torch.as_tensor(x).float(), None),
        run(torch.as_tensor(x), IDENTITY),
    )
    assert pixel_losses == losses
    assert all(torch.equal(a, b) for a, b in zip(weights, pixel_weights, strict=True))


def test_a_random_crop_of_pixels_pads_black_as_torchvisions_crop_before_normalize() -> None:
    x = torch.full((1, *SHAPE), 200, dtype=torch.uint8)
    crop = random_crop(x, 2, torch.Generator().manual_seed(0))
    black = crop == 0
    assert crop.dtype == torch.uint8 and black.any()  # this draw moved the crop off the centre
    border = Standardise(RECORD)(crop)[black]
    assert border.unique().numel() <= 3 and (border < 0).all()  # (0 - mean) / std per channel


def test_pixel_datasets_stay_uint8_and_travel_to_the_server_in_a_quarter_of_the_bytes(tmp_path: Path) -> None:
    x, y = _pixels(60, 2)
    np.savez(tmp_path / "pixels.npz", x=x, y=y, x_test=x[:12], y_test=y[:12])
    data = load_dataset(DataConfig(dataset="npz", root=tmp_path / "pixels.npz"), tmp_path / "cache")
    assert data.train_x.dtype == torch.uint8 and data.pixels == IDENTITY
    assert torch.equal(data.model_view(data.train_x), torch.as_tensor(x).float())
    request = lambda rows: len(pickle.dumps(Carried(narrowed(rows), as_dtype=rows.dtype), protocol=5))  # noqa: E731
    assert request(data.train_x) * 3.5 < request(data.train_x.float())
    arrived = pickle.loads(pickle.dumps(Carried(narrowed(data.train_x), as_dtype=torch.uint8), protocol=5))
    assert arrived.dtype == torch.uint8 and torch.equal(arrived, data.train_x)


def _trials(study: Any) -> list[dict[str, str]]:
    with open(study.out / "trials.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_a_sweep_on_uint8_images_equals_the_sweep_on_their_float_copies(
    tmp_path: Path, cache_dir: Path, ray_session: object
) -> None:
    """End to end (nodes trained, KD through a teacher server, students scored): the same images stored as uint8 and
    as float32 give the same table, while the uint8 copy is what every process holds and sends."""
    x, y = _pixels(240, 3)
    x_test, y_test = _pixels(60, 4)
    tables = []
    for dtype in (np.uint8, np.float32):
        folder = tmp_path / np.dtype(dtype).name
        folder.mkdir()
        np.savez(folder / "data.npz", x=x.astype(dtype), y=y, x_test=x_test.astype(dtype), y_test=y_test)
        raw = tiny_raw(
            folder,
            folder / "cache",
            data={"dataset": "npz", "root": str(folder / "data.npz"), "augment": ["random_crop", "horizontal_flip"]},
        )
        raw["partition"] = {"scheme": "iid", "num_nodes": 2}
        raw["nodes"] |= {"model": {"name": "cnn2d", "width": 4}, "train": {"epochs": 2, "batch_size": 32}}
        raw["transfer"]["train"]["batch_size"] = 32
        raw["teacher"] = {"mode": "server", "max_batch_rows": 32}
        tables.append([{k: v for k, v in row.items() if "acc" in k} for row in _trials(raykd.run(raw))])
    assert len(tables[0]) == 3 and all(row["test_acc"] and row["test_acc_before"] for row in tables[0])
    assert tables[0] == tables[1]
