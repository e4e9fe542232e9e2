"""The four arrays every dataset source yields, their validation, and their checksummed on-disk cache.

Sources (built-in, ``.npz``, image folders, user callables) all end in ``check_arrays`` before
anything is cached or trained, so a bad input is one ConfigError line and never a cache entry.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from raykd.errors import ConfigError
from raykd.files import cached


class Arrays(NamedTuple):
    """Train inputs and labels, test inputs and labels; inputs are (N, *shape), labels (N,)."""

    x: np.ndarray
    y: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def as_array(value: Any) -> np.ndarray:
    """A NumPy view of an array-like (tensors on any device, with or without gradients)."""
    return np.asarray(value.detach().cpu() if isinstance(value, torch.Tensor) else value)


def _check_inputs(x: np.ndarray, x_test: np.ndarray, where: str) -> None:
    for name, value in (("x", x), ("x_test", x_test)):
        if value.ndim < 2 or len(value) == 0:
            raise ConfigError(f"{where} {name} of shape {value.shape}; expected (N, *sample_shape) with N >= 1")
        if not (np.issubdtype(value.dtype, np.number) or value.dtype == bool):
            raise ConfigError(f"{where} {name} of dtype {value.dtype}; expected numbers")
        if not np.isfinite(value).all():
            raise ConfigError(f"{where} {name} with non-finite values (NaN or inf)")
    if x.shape[1:] != x_test.shape[1:]:
        raise ConfigError(f"{where} x of per-sample shape {x.shape[1:]} but x_test of {x_test.shape[1:]}")


def _check_labels(y: np.ndarray, y_test: np.ndarray, where: str) -> None:
    for name, value in (("y", y), ("y_test", y_test)):
        if value.ndim != 1:
            raise ConfigError(f"{where} {name} of shape {value.shape}; expected one integer label per row (N,)")
        if not np.issubdtype(value.dtype, np.integer):
            raise ConfigError(f"{where} {name} of dtype {value.dtype}; expected integer class labels 0..C-1")
    if y.min() < 0:
        raise ConfigError(f"{where} y with label {y.min()}; expected class labels 0..C-1")
    classes = int(y.max()) + 1
    if classes < 2:
        raise ConfigError(f"{where} y with a single class; expected at least 2 classes")
    missing = np.flatnonzero(np.bincount(y, minlength=classes) == 0)
    if len(missing):
        counted_from_1 = "; labels counted from 1? subtract 1" if y.min() == 1 else ""
        raise ConfigError(
            f"{where} y with no sample of class {missing[0]} (labels span {y.min()}..{y.max()}); "
            f"expected every class 0..C-1 in the training split{counted_from_1}"
        )
    outside = y_test[(y_test < 0) | (y_test >= classes)]
    if len(outside):
        raise ConfigError(f"{where} y_test with label {outside[0]} outside the classes 0..{classes - 1} of y")


def check_arrays(arrays: Arrays, where: str) -> Arrays:
    """Validated inputs (uint8 kept, else float32) and int64 labels; ``where`` starts each error
    (``data.dataset: X returned``)."""
    x, y, x_test, y_test = (as_array(a) for a in arrays)
    _check_inputs(x, x_test, where)
    for inputs, labels, split in ((x, y, ""), (x_test, y_test, "_test")):
        if len(inputs) != len(labels):
            raise ConfigError(f"{where} x{split} with {len(inputs)} rows but y{split} with {len(labels)}")
    _check_labels(y, y_test, where)
    return Arrays(_stored(x), y.astype(np.int64, copy=False), _stored(x_test), y_test.astype(np.int64, copy=False))


def _stored(x: np.ndarray) -> np.ndarray:
    """Inputs as they are kept: uint8 (pixels) as they are, 4x smaller than float32 (the models standardise them:
    ``raykd.data.preprocess.Standardise``), anything else as float32."""
    return x if x.dtype == np.uint8 else x.astype(np.float32, copy=False)


def num_classes(arrays: Arrays) -> int:
    """Classes of a checked dataset: its training labels span 0..C-1."""
    return int(arrays.y.max()) + 1


def _read_npz(path: Path) -> Arrays:
    with np.load(path, allow_pickle=False) as saved:
        return Arrays(*(saved[name] for name in Arrays._fields))


def cached_arrays(path: Path, build: Callable[[], Arrays]) -> Arrays:
    """Arrays read from ``path``, or built (already checked by ``build``) and written there once.

    A ``raykd.files.cached`` entry: a corrupted one is rebuilt, not read; concurrent builders wait for one.
    """
    return cached(path, _read_npz, build, lambda tmp, arrays: np.savez(tmp, **arrays._asdict()))[0]
