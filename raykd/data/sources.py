"""A user's own data: an ``.npz`` file, an ImageFolder-style directory, or a ``package.module:function``.

Files a user names are only read. An image folder is decoded once (``data.channels``, ``data.image_size``) and
its raw pixels cached under the cache folder by a digest of its content, so editing, adding or renaming an image
gives a new entry; the pixels stay uint8 and ``data.normalize`` is recorded, for the models to apply
(``raykd.data.preprocess``). An ``.npz`` and a callable's arrays are used as they are (uint8 ones stay uint8).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from raykd.config.data import Normalize
from raykd.data.arrays import Arrays, as_array, cached_arrays, check_arrays
from raykd.data.preprocess import decode_images, folder_channels, image_record, statistics
from raykd.errors import ConfigError
from raykd.references import resolve

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def load_npz(path: Path) -> Arrays:
    """Arrays x, y, x_test, y_test from a NumPy ``.npz`` file (no pickled objects)."""
    if not path.is_file():
        raise ConfigError(f"data.root: {path} is not a file; npz needs a .npz file with x, y, x_test, y_test")
    try:
        with np.load(path, allow_pickle=False) as saved:
            found = {name: saved[name] for name in saved.files if name in Arrays._fields}
            names = saved.files
    except Exception as err:  # noqa: BLE001 - BadZipFile (flipped bytes), zlib.error, TypeError (a plain .npy), ...
        first = (str(err).strip().splitlines() or [""])[0][:200]
        raise ConfigError(f"data.root: {path} is not a readable .npz file ({type(err).__name__}: {first})") from None
    missing = [name for name in Arrays._fields if name not in found]
    if missing:
        raise ConfigError(
            f"data.root: {path} has no array {missing[0]!r}; expected x, y, x_test, y_test (found: {', '.join(names)})"
        )
    arrays = Arrays(*(found[name] for name in Arrays._fields))
    return check_arrays(arrays, f"data.root: {path} holds")


def split_files(root: Path, split: str) -> list[tuple[str, Path]]:
    """(class name, image path) pairs of ``root/split/<class>/*``, sorted, so the order never depends on the OS."""
    folder = root / split
    if not folder.is_dir():
        raise ConfigError(f"data.root: {root} has no {split}/ folder; imagefolder needs {split}/<class>/*.png|jpg")
    files = [
        (item.parent.name, item)
        for item in sorted(folder.glob("*/*"))
        if item.is_file() and item.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not files:
        raise ConfigError(f"data.root: {folder} holds no images; expected {split}/<class>/*.png|jpg")
    return files


def folder_digest(root: Path, files: list[tuple[str, Path]]) -> str:
    """A digest over every image's path relative to ``root`` and its bytes: the image folder's identity."""
    digest = hashlib.sha256()
    for _, path in files:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _build_folder(
    root: Path, train: list[tuple[str, Path]], test: list[tuple[str, Path]], size: int, channels: int
) -> Arrays:
    """Both splits as raw pixels; classes are the sorted train class folders (torchvision ImageFolder's order)."""
    classes = class_names(train)
    unknown = sorted({name for name, _ in test} - set(classes))
    if unknown:
        raise ConfigError(f"data.root: {root}/test/{unknown[0]}/ is a class that {root}/train/ does not have")
    x, x_test = (decode_images([path for _, path in files], channels, size) for files in (train, test))
    labels = [np.array([classes.index(name) for name, _ in files], dtype=np.int64) for files in (train, test)]
    return check_arrays(Arrays(x, labels[0], x_test, labels[1]), f"data.root: {root} holds")


def class_names(train: list[tuple[str, Path]]) -> list[str]:
    return sorted({name for name, _ in train})


def load_image_folder(
    root: Path, size: int, channels: int | str, normalize: str | Normalize, cache_dir: Path
) -> tuple[Arrays, dict[str, Any]]:
    """``root/train/<class>/*`` and ``root/test/<class>/*`` as uint8 pixels, and the preprocessing record the models
    standardise them by (``data.channels``, ``data.normalize``). The raw pixels are cached."""
    if not root.is_dir():
        raise ConfigError(f"data.root: {root} is not a folder; imagefolder needs train/<class>/* and test/<class>/*")
    train, test = split_files(root, "train"), split_files(root, "test")
    depth = folder_channels([path for _, path in train + test]) if channels == "keep" else int(channels)
    key = folder_digest(root, train + test)[:24]
    path = cache_dir / "datasets" / f"imagefolder-{key}-{size}px-{depth}ch.npz"
    raw = cached_arrays(path, lambda: _build_folder(root, train, test, size, depth))
    x, x_test = (a.astype(np.uint8, copy=False) for a in (raw.x, raw.x_test))  # entries of older raykd are float32
    mean, std = statistics(x, normalize)
    return Arrays(x, raw.y, x_test, raw.y_test), image_record(depth, size, mean, std, class_names(train))


def _unpack(result: Any, reference: str) -> Arrays:
    """The four arrays of a user callable's result: a mapping x, y, x_test, y_test or a 4-tuple."""
    where = f"data.dataset: {reference} returned"
    if isinstance(result, Mapping):
        missing = [name for name in Arrays._fields if name not in result]
        if missing:
            raise ConfigError(f"{where} a mapping without {missing[0]!r}; expected keys x, y, x_test, y_test")
        return Arrays(*(as_array(result[name]) for name in Arrays._fields))
    if isinstance(result, (tuple, list)) and len(result) == len(Arrays._fields):
        return Arrays(*(as_array(item) for item in result))
    shown = f"a {len(result)}-tuple" if isinstance(result, (tuple, list)) else type(result).__name__
    raise ConfigError(f"{where} {shown}; expected a mapping with keys x, y, x_test, y_test or a 4-tuple")


def load_reference(reference: str, kwargs: Mapping[str, Any]) -> Arrays:
    """Call a user's ``package.module:function`` with ``data.kwargs`` and check what it returns."""
    function = resolve(reference, "data.dataset")
    if not callable(function):
        raise ConfigError(f"data.dataset: {reference} is a {type(function).__name__}, not a callable")
    try:
        result = function(**kwargs)
    except Exception as err:  # noqa: BLE001 - user code may fail in any way; report it in one line
        raise ConfigError(f"data.dataset: {reference} raised {type(err).__name__}: {err}") from None
    return check_arrays(_unpack(result, reference), f"data.dataset: {reference} returned")
