"""Datasets, global splits and partitioners: the properties the study relies on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from raykd.config import DataConfig, PartitionConfig
from raykd.data import label_skew, load_dataset, make_splits, partition, split_nodes
from raykd.data.stratify import stratified_split
from raykd.errors import ConfigError

LABELS = np.random.default_rng(0).integers(0, 10, size=3000)


@pytest.mark.parametrize(
    ("name", "shape", "train", "test"),
    [("digits", (1, 8, 8), 1437, 360), ("mnist1d", (1, 40), 4000, 1000), ("fake", (3, 16, 16), 200, 50)],
)
def test_embedded_datasets_load_without_download(
    name: str, shape: tuple, train: int, test: int, cache_dir: Path
) -> None:
    data = load_dataset(DataConfig(dataset=name, fake_samples=200), cache_dir)
    assert data.input_shape == shape and len(data.train_y) == train and len(data.test_y) == test
    assert set(data.train_y.unique().tolist()) == set(range(10))


def test_missing_cifar_folder_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"data.root: .* no cifar-10-batches-py/ .*download=True"):
        load_dataset(DataConfig(dataset="cifar10", root=tmp_path / "nope"), tmp_path)


def test_splits_are_disjoint_seeded_and_stratified() -> None:
    cfg = DataConfig(val_fraction=0.1, pool_fraction=0.25)
    a, b, c = make_splits(LABELS, cfg, 0), make_splits(LABELS, cfg, 0), make_splits(LABELS, cfg, 1)
    assert np.array_equal(a.val, b.val) and not np.array_equal(a.val, c.val)
    parts = [a.partitioned, a.val, a.pool]
    assert sum(map(len, parts)) == len(LABELS) and len(np.unique(np.concatenate(parts))) == len(LABELS)
    assert abs(len(a.pool) / len(LABELS) - 0.25) < 0.01
    overall, in_val = np.bincount(LABELS) / len(LABELS), np.bincount(LABELS[a.val]) / len(a.val)
    assert np.abs(overall - in_val).max() < 0.02


@pytest.mark.parametrize("case", range(40))
def test_stratified_split_draws_what_scikit_learn_draws(case: int) -> None:
    """raykd's splits (and so every trained model and table) are scikit-learn's ``train_test_split`` draws."""
    from sklearn.model_selection import train_test_split

    rng = np.random.default_rng(case)
    classes = int(rng.integers(2, 12))
    labels = np.repeat(np.arange(classes), rng.integers(2, 60, size=classes))  # uneven classes: remainder ties
    labels = rng.permutation(labels)
    fraction = float(rng.choice([0.1, 0.15, 0.2, 0.25, 1 / 3, 0.5, float(rng.uniform(0.05, 0.6))]))
    seed = int(rng.integers(0, 2**32))
    index = np.arange(len(labels))
    try:
        expected = train_test_split(index, test_size=fraction, random_state=seed, stratify=labels)
    except ValueError:
        with pytest.raises(ValueError):
            stratified_split(labels, fraction, seed)
        return
    got = stratified_split(labels, fraction, seed)
    assert all(np.array_equal(e, g) for e, g in zip(expected, got, strict=True))


def test_stratified_split_refuses_a_class_of_one() -> None:
    with pytest.raises(ValueError, match="class 2 has only 1 member"):
        stratified_split(np.array([0, 0, 1, 1, 2]), 0.4, 0)


@pytest.mark.parametrize("scheme", ["iid", "dirichlet"])
def test_partitions_are_disjoint_covering_and_reproducible(scheme: str) -> None:
    cfg = PartitionConfig(scheme=scheme, num_nodes=5, alpha=0.3, min_samples=30)
    parts = partition(LABELS, cfg, seed=3)
    joined = np.concatenate(parts)
    assert len(joined) == len(LABELS) and len(np.unique(joined)) == len(LABELS)
    assert min(map(len, parts)) >= 30
    assert all(np.array_equal(x, y) for x, y in zip(parts, partition(LABELS, cfg, seed=3), strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(parts, partition(LABELS, cfg, seed=4), strict=True))


def test_dirichlet_skew_grows_as_alpha_shrinks() -> None:
    def skew(alpha: float) -> float:
        cfg = PartitionConfig(scheme="dirichlet", num_nodes=5, alpha=alpha, min_samples=10)
        return float(np.mean([label_skew(LABELS, partition(LABELS, cfg, s), 10) for s in range(5)]))

    iid_cfg = PartitionConfig(scheme="iid", num_nodes=5)
    iid = float(np.mean([label_skew(LABELS, partition(LABELS, iid_cfg, s), 10) for s in range(5)]))
    skews = [skew(a) for a in (10.0, 1.0, 0.3, 0.05)]
    assert skews == sorted(skews) and iid < skews[1]


def test_dirichlet_that_cannot_meet_min_samples_names_the_field() -> None:
    cfg = PartitionConfig(scheme="dirichlet", num_nodes=10, alpha=0.01, min_samples=290)
    with pytest.raises(ConfigError, match="partition.min_samples"):
        partition(LABELS, cfg, seed=0)


@pytest.mark.parametrize(("nodes", "k"), [(5, 2), (4, 3), (3, 10)])
def test_pathological_gives_each_node_k_classes_and_covers_all(nodes: int, k: int) -> None:
    parts = partition(LABELS, PartitionConfig(scheme="pathological", num_nodes=nodes, classes_per_node=k), seed=1)
    assert all(len(np.unique(LABELS[p])) == k for p in parts)
    joined = np.concatenate(parts)
    assert len(np.unique(joined)) == len(joined) == len(LABELS)


def test_pathological_with_fewer_slots_than_classes_leaves_the_rest_unheld() -> None:
    parts = partition(LABELS, PartitionConfig(scheme="pathological", num_nodes=4, classes_per_node=2), seed=0)
    held = [set(np.unique(LABELS[p]).tolist()) for p in parts]
    assert all(len(h) == 2 for h in held) and len(set().union(*held)) == 8  # 4 nodes x 2 slots of 10 classes
    joined = np.concatenate(parts)
    assert len(np.unique(joined)) == len(joined) == np.isin(LABELS, list(set().union(*held))).sum()


def test_node_split_into_local_train_and_validation() -> None:
    cfg = PartitionConfig(num_nodes=3, local_val_fraction=0.2)
    index = np.arange(100, 2100)
    nodes = split_nodes(index, LABELS, cfg, seed=0)
    for node in nodes:
        assert len(np.intersect1d(node.train, node.val)) == 0
        assert abs(len(node.val) / (len(node.train) + len(node.val)) - 0.2) < 0.01
    joined = np.concatenate([np.concatenate([n.train, n.val]) for n in nodes])
    assert np.array_equal(np.sort(joined), index)
