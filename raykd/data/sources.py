"""A user's own data: an ``.npz`` file, an ImageFolder-style directory, or a ``package.module:function``.

Files a user names are only read. An image folder is decoded once and cached under the cache
folder by a digest of its content, so editing, adding or renaming an image gives a new entry.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from raykd.data.arrays import Arrays, as_array, cached_arrays, check_arrays
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


def _split_files(root: Path, split: str) -> list[tuple[str, Path]]:
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


def _decode(files: list[tuple[str, Path]], size: int) -> np.ndarray:
    """RGB images resized to ``size`` x ``size``, as float32 (N, 3, size, size) in [0, 1]."""
    images = []
    for _, path in files:
        try:
            with Image.open(path) as image:
                images.append(np.asarray(image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)))
        except (OSError, UnidentifiedImageError) as err:
            raise ConfigError(f"data.root: cannot read image {path} ({type(err).__name__}: {err})") from None
    return (np.stack(images).astype(np.float32) / 255.0).transpose(0, 3, 1, 2)


def _build_folder(root: Path, train: list[tuple[str, Path]], test: list[tuple[str, Path]], size: int) -> Arrays:
    """Decode both splits; classes are the sorted train class folders (torchvision ImageFolder's order)."""
    classes = {name: i for i, name in enumerate(sorted({name for name, _ in train}))}
    unknown = sorted({name for name, _ in test} - set(classes))
    if unknown:
        raise ConfigError(f"data.root: {root}/test/{unknown[0]}/ is a class that {root}/train/ does not have")
    x, x_test = _decode(train, size), _decode(test, size)
    mean, std = x.mean(axis=(0, 2, 3), keepdims=True), x.std(axis=(0, 2, 3), keepdims=True) + 1e-6
    labels = [np.array([classes[name] for name, _ in files], dtype=np.int64) for files in (train, test)]
    arrays = Arrays((x - mean) / std, labels[0], (x_test - mean) / std, labels[1])
    return check_arrays(arrays, f"data.root: {root} holds")


def load_image_folder(root: Path, size: int, cache_dir: Path) -> Arrays:
    """``root/train/<class>/*`` and ``root/test/<class>/*`` as standardised arrays (train's channel statistics)."""
    if not root.is_dir():
        raise ConfigError(f"data.root: {root} is not a folder; imagefolder needs train/<class>/* and test/<class>/*")
    train, test = _split_files(root, "train"), _split_files(root, "test")
    key = folder_digest(root, train + test)[:24]
    path = cache_dir / "datasets" / f"imagefolder-{key}-{size}px.npz"
    return cached_arrays(path, lambda: _build_folder(root, train, test, size))


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
