"""Seeded stratified splits in NumPy: the same draws as scikit-learn's ``train_test_split(rows, test_size=f,
random_state=seed, stratify=labels)``, row for row (a test checks it), without importing scikit-learn,
which took 1.5-2.5 s of CPU in the driver and in every Ray worker that draws a split.
"""

from __future__ import annotations

import math

import numpy as np


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, test): ``ceil(test_fraction * n)`` test rows, each class split in proportion;
    a ValueError when a class has one row or either side could not hold one row of every class."""
    n = len(labels)
    if not 0 < test_fraction < 1:
        raise ValueError(f"test fraction {test_fraction} is not in (0, 1)")
    n_test = math.ceil(test_fraction * n)
    n_train = n - n_test
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    if counts.min() < 2:
        raise ValueError(f"class {classes[counts.argmin()]} has only 1 member; a stratified split needs 2")
    if min(n_train, n_test) < len(classes):
        raise ValueError(f"{n_train} train and {n_test} test rows cannot each hold all {len(classes)} classes")
    by_class = np.split(np.argsort(inverse, kind="stable"), np.cumsum(counts)[:-1])
    rng = np.random.RandomState(seed)
    train_counts = _approximate_mode(counts, n_train, rng)
    test_counts = _approximate_mode(counts - train_counts, n_test, rng)
    train: list[int] = []
    test: list[int] = []
    for rows, k, t in zip(by_class, train_counts, test_counts, strict=True):
        shuffled = rows.take(rng.permutation(len(rows)), mode="clip")
        train.extend(shuffled[:k])
        test.extend(shuffled[k : k + t])
    return rng.permutation(train), rng.permutation(test)


def _approximate_mode(counts: np.ndarray, draws: int, rng: np.random.RandomState) -> np.ndarray:
    """Rows per class out of ``draws``: the floor of each class's share, then one more for the largest remainders,
    ties broken at random (scikit-learn's ``_approximate_mode``)."""
    continuous = counts / counts.sum() * draws
    floored = np.floor(continuous)
    need = int(draws - floored.sum())
    if need > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (tied,) = np.where(remainder == value)
            add = min(len(tied), need)
            floored[rng.choice(tied, size=add, replace=False)] += 1
            need -= add
            if need == 0:
                break
    return floored.astype(int)
