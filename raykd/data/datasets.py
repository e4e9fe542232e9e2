"""Datasets as in-memory tensors, and the seeded global splits every experiment starts from.

Embedded datasets need no download: scikit-learn's ``digits``, ``mnist1d`` (generated offline from
the templates inside the package) and torchvision's ``fake``. CIFAR-10/100 load from a local folder.
The test split is fixed per dataset (independent of the seed); the validation split and the shared
pool are drawn from the training split with the experiment's seed, before partitioning.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch import Tensor

from raykd.config import DataConfig
from raykd.errors import ConfigError


@dataclass(frozen=True)
class Dataset:
    """A dataset's fixed train/test tensors; ``x`` is float32 (N, *shape), ``y`` int64 (N,)."""

    name: str
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])


@dataclass(frozen=True)
class Splits:
    """Indices into the training tensors: what gets partitioned, global validation, shared pool."""

    partitioned: np.ndarray
    val: np.ndarray
    pool: np.ndarray


def _tensors(x: np.ndarray, y: np.ndarray) -> tuple[Tensor, Tensor]:
    return torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.int64)


def _digits() -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]
    return tuple(train_test_split(x, digits.target, test_size=0.2, random_state=0, stratify=digits.target))


def _mnist1d(cache_dir: Path) -> tuple[np.ndarray, ...]:
    """MNIST-1D built offline (never ``get_dataset``, which downloads); cached as .npz after the first build."""
    path = cache_dir / "datasets" / "mnist1d.npz"
    if path.exists():
        try:
            with np.load(path) as saved:
                return saved["x"], saved["x_test"], saved["y"], saved["y_test"]
        except (OSError, ValueError, KeyError):
            pass  # a truncated file from an interrupted write: build it again
    from mnist1d.data import get_dataset_args, make_dataset

    data = make_dataset(get_dataset_args())
    arrays = {k: np.asarray(data[k]) for k in ("x", "x_test", "y", "y_test")}
    arrays["x"], arrays["x_test"] = (
        arrays["x"][:, None].astype(np.float32),
        arrays["x_test"][:, None].astype(np.float32),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    return arrays["x"], arrays["x_test"], arrays["y"], arrays["y_test"]


def _cifar(name: str, root: Path) -> tuple[np.ndarray, ...]:
    import torchvision

    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    check_cifar_folder(name, root)
    mean, std = np.array([0.4914, 0.4822, 0.4465]), np.array([0.2470, 0.2435, 0.2616])
    out = []
    for train in (True, False):
        try:
            ds = cls(str(root), train=train, download=False)
        except RuntimeError as err:  # torchvision's integrity check: missing or corrupted batch files
            raise ConfigError(f"data.root: {name} files in {root} are incomplete or corrupted ({err})") from None
        x = ((ds.data / 255.0 - mean) / std).transpose(0, 3, 1, 2).astype(np.float32)
        out.append((x, np.asarray(ds.targets)))
    return out[0][0], out[1][0], out[0][1], out[1][1]


def check_cifar_folder(name: str, root: Path | None) -> None:
    """Fail early, with how to get the data, when a CIFAR folder is missing or incomplete."""
    folder = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}[name]
    if root is None or not (Path(root) / folder).is_dir():
        cls = "CIFAR10" if name == "cifar10" else "CIFAR100"
        raise ConfigError(
            f"data.root: {root} has no {folder}/ folder; on a machine with internet run "
            f"python -c \"import torchvision; torchvision.datasets.{cls}('{root}', download=True)\" and copy it here"
        )


def _fake(samples: int, classes: int) -> tuple[np.ndarray, ...]:
    import torchvision

    total = samples + samples // 4
    fake = torchvision.datasets.FakeData(
        size=total,
        image_size=(3, 16, 16),
        num_classes=classes,
        random_offset=0,
        transform=torchvision.transforms.ToTensor(),
    )
    x = np.stack([fake[i][0].numpy() for i in range(total)])
    y = np.array([int(fake[i][1]) for i in range(total)])
    return x[:samples], x[samples:], y[:samples], y[samples:]


def load_dataset(cfg: DataConfig, cache_dir: Path) -> Dataset:
    """Load ``cfg.dataset`` as tensors (CIFAR from ``cfg.root``; the rest need no download)."""
    if cfg.dataset == "digits":
        arrays = _digits()
    elif cfg.dataset == "mnist1d":
        arrays = _mnist1d(cache_dir)
    elif cfg.dataset == "fake":
        arrays = _fake(cfg.fake_samples, cfg.fake_classes)
    else:
        arrays = _cifar(cfg.dataset, cfg.root)  # type: ignore[arg-type]
    train_x, test_x, train_y, test_y = arrays
    tx, ty = _tensors(train_x, train_y)
    vx, vy = _tensors(test_x, test_y)
    return Dataset(cfg.dataset, tx, ty, vx, vy, cfg.num_classes)


def make_splits(labels: np.ndarray, cfg: DataConfig, seed: int) -> Splits:
    """Seeded, stratified: global validation first, then the shared unlabelled pool, rest partitioned."""
    index = np.arange(len(labels))
    rest, val = train_test_split(index, test_size=cfg.val_fraction, random_state=seed, stratify=labels)
    if cfg.pool_fraction == 0:
        return Splits(np.sort(rest), np.sort(val), np.array([], dtype=np.int64))
    rest, pool = train_test_split(
        rest, test_size=cfg.pool_fraction / (1 - cfg.val_fraction), random_state=seed + 1, stratify=labels[rest]
    )
    return Splits(np.sort(rest), np.sort(val), np.sort(pool))
