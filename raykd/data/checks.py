"""Every check that needs the loaded data as well as the config: one ConfigError line each.

The config alone cannot know a user's class count or input shape, so these run where the data is
first loaded (``raykd.tune`` preflight, before Ray starts), not at config validation.
"""

from __future__ import annotations

import numpy as np

from raykd.config import ExperimentConfig
from raykd.data.arrays import Arrays, check_arrays
from raykd.data.datasets import Dataset, make_splits
from raykd.data.partition import partition, smallest_node
from raykd.errors import ConfigError


def _check_splits(cfg: ExperimentConfig, labels: np.ndarray) -> None:
    """The seeded stratified validation and pool splits can be drawn for every seed."""
    counts = np.bincount(labels)
    fewest = f"fewest: {counts.min()} of class {counts.argmin()}"
    val_only = cfg.data.model_copy(update={"pool_fraction": 0.0})
    stages = (("data.val_fraction", val_only), ("data.pool_fraction", cfg.data))
    for field, data in stages:
        for seed in cfg.seeds:
            try:
                make_splits(labels, data, seed)
            except ValueError as err:
                raise ConfigError(
                    f"{field}: {len(labels)} training samples in {len(counts)} classes ({fewest}) are too few "
                    f"for a stratified split ({err}); allowed: more samples per class or another fraction"
                ) from None


def _check_partition(cfg: ExperimentConfig, labels: np.ndarray, classes: int) -> None:
    """Every scheme leaves each node ``partition.min_samples``, and a local validation sample when that split is
    asked for (Dirichlet redraws for min_samples and raises on its own)."""
    part = cfg.partition
    if part.scheme == "pathological" and part.classes_per_node > classes:
        raise ConfigError(
            f"partition.classes_per_node: {part.classes_per_node} is more than the {classes} classes of "
            f"{cfg.data.dataset}; allowed: 1..{classes}"
        )
    needed = smallest_node(part)
    for seed in cfg.seeds:
        partitioned = labels[make_splits(labels, cfg.data, seed).partitioned]
        sizes = [len(p) for p in partition(partitioned, part, seed)]
        if min(sizes) < needed:
            fits = len(partitioned) // needed
            advice = (
                f"{len(partitioned)} samples fit at most {fits} nodes; allowed: num_nodes <= {fits}, a lower "
                "min_samples or more data"
                if fits < part.num_nodes
                else "allowed: a lower min_samples, a more even split or more data"
            )
            raise ConfigError(
                f"partition.num_nodes: {part.scheme} over {part.num_nodes} nodes gives node {int(np.argmin(sizes))} "
                f"only {min(sizes)} samples at seed {seed}, but each needs {needed} (partition.min_samples "
                f"{part.min_samples}, and a local validation sample at local_val_fraction "
                f"{part.local_val_fraction:g}); {advice}"
            )


def _check_augment(cfg: ExperimentConfig, data: Dataset) -> None:
    if cfg.data.augment and len(data.input_shape) != 3:
        names = ", ".join(spec.name for spec in cfg.data.augment)
        raise ConfigError(
            f"data.augment: {names} needs images (C, H, W) but {cfg.data.dataset} has inputs of shape "
            f"{data.input_shape}; allowed: [] for non-image data"
        )


def _check_top_k(cfg: ExperimentConfig, classes: int) -> None:
    k = cfg.teacher.top_k
    if k is not None and k >= classes:
        raise ConfigError(
            f"teacher.top_k: {k} would keep every one of the {classes} classes of {cfg.data.dataset}; "
            f"allowed: 1..{classes - 1}, or unset for full logits"
        )


def _check_documents(cfg: ExperimentConfig, data: Dataset) -> None:
    """Text: every node gets training text for every seed (whole documents are dealt out, not rows)."""
    from raykd.data.documents import document_nodes, document_splits

    for seed in cfg.seeds:
        _, rest = document_splits(data, cfg.data, seed)
        empty = next(
            (i for i, n in enumerate(document_nodes(data, rest, cfg.partition, seed)) if not len(n.train)), None
        )
        if empty is not None:
            raise ConfigError(
                f"partition.num_nodes: {cfg.partition.scheme} over {cfg.partition.num_nodes} nodes leaves node {empty} "
                f"no training document at seed {seed} ({len(rest)} documents to share); allowed: fewer nodes, "
                "another scheme, a smaller data.doc_chars or more text"
            )


def check_dataset(cfg: ExperimentConfig, data: Dataset) -> None:
    """Refuse, in one line naming the field, a config that ``data`` cannot serve (before any training)."""
    if data.tokens:
        _check_documents(cfg, data)
        _check_augment(cfg, data)
        _check_top_k(cfg, data.num_classes)
        return
    check_arrays(
        Arrays(data.train_x.numpy(), data.train_y.numpy(), data.test_x.numpy(), data.test_y.numpy()),
        f"data.dataset: {cfg.data.dataset} gave",
    )
    _check_splits(cfg, data.train_y.numpy())
    _check_partition(cfg, data.train_y.numpy(), data.num_classes)
    _check_augment(cfg, data)
    _check_top_k(cfg, data.num_classes)
