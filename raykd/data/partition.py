"""Seeded label partitioners: ``iid``, ``dirichlet`` (alpha, minimum size) and ``pathological``.

Written here rather than taken from Flower Datasets because raykd partitions in-memory label
arrays many times per sweep; Flower's partitioners need a Hugging Face ``datasets.Dataset`` round
trip. The rules match theirs: Dirichlet redraws until every node holds ``min_samples``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from raykd.config import PartitionConfig
from raykd.errors import ConfigError

MAX_DIRICHLET_DRAWS = 100


@dataclass(frozen=True)
class NodeData:
    """One node's indices (into the global training tensors): local train and local validation."""

    train: np.ndarray
    val: np.ndarray


def iid(labels: np.ndarray, nodes: int, rng: np.random.Generator) -> list[np.ndarray]:
    return [np.sort(p) for p in np.array_split(rng.permutation(len(labels)), nodes)]


def dirichlet(
    labels: np.ndarray, nodes: int, alpha: float, min_samples: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Per class, split its samples across nodes in Dir(alpha) proportions; redraw until all are big enough."""
    for _ in range(MAX_DIRICHLET_DRAWS):
        parts: list[list[int]] = [[] for _ in range(nodes)]
        for c in np.unique(labels):
            members = rng.permutation(np.flatnonzero(labels == c))
            cuts = (np.cumsum(rng.dirichlet([alpha] * nodes))[:-1] * len(members)).astype(int)
            for node, chunk in enumerate(np.split(members, cuts)):
                parts[node].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_samples:
            return [np.sort(np.array(p, dtype=np.int64)) for p in parts]
    raise ConfigError(
        f"partition.min_samples: no Dirichlet(alpha={alpha}) split of {len(labels)} samples over {nodes} nodes "
        f"gave every node {min_samples} samples in {MAX_DIRICHLET_DRAWS} draws; lower min_samples or raise alpha"
    )


def pathological(labels: np.ndarray, nodes: int, classes_per_node: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Each node holds ``classes_per_node`` classes; classes are dealt round-robin so all are covered
    when nodes * classes_per_node >= classes (else the classes left over belong to no node), and each
    class's samples are shared evenly by its holders."""
    classes = rng.permutation(np.unique(labels))
    slots = np.resize(classes, nodes * classes_per_node).reshape(nodes, classes_per_node)
    parts: list[list[int]] = [[] for _ in range(nodes)]
    for c in classes:
        holders = np.flatnonzero((slots == c).any(axis=1))
        if len(holders) == 0:
            continue
        members = rng.permutation(np.flatnonzero(labels == c))
        for node, chunk in zip(holders, np.array_split(members, len(holders)), strict=True):
            parts[node].extend(chunk.tolist())
    return [np.sort(np.array(p, dtype=np.int64)) for p in parts]


def partition(labels: np.ndarray, cfg: PartitionConfig, seed: int) -> list[np.ndarray]:
    """Positions into ``labels`` for each node; disjoint, and covering every sample (pathological:
    every sample of a held class)."""
    rng = np.random.default_rng(seed)
    if cfg.scheme == "iid":
        return iid(labels, cfg.num_nodes, rng)
    if cfg.scheme == "dirichlet":
        return dirichlet(labels, cfg.num_nodes, cfg.alpha, cfg.min_samples, rng)
    return pathological(labels, cfg.num_nodes, cfg.classes_per_node, rng)


def local_val_count(samples: int, fraction: float) -> int:
    """How many of a node's ``samples`` its local validation split holds."""
    return int(round(fraction * samples))


def smallest_node(cfg: PartitionConfig) -> int:
    """The fewest samples a node may hold: ``min_samples``, and enough that its local validation split
    (when asked for) and its training split each keep at least one sample."""
    size = cfg.min_samples
    while cfg.local_val_fraction > 0 and not 0 < local_val_count(size, cfg.local_val_fraction) < size:
        size += 1
    return size


def split_nodes(index: np.ndarray, labels: np.ndarray, cfg: PartitionConfig, seed: int) -> list[NodeData]:
    """Partition the samples ``index`` (global indices) and split each node into local train/validation."""
    rng = np.random.default_rng(seed + 7)
    nodes = []
    for part in partition(labels[index], cfg, seed):
        members = rng.permutation(index[part])
        n_val = local_val_count(len(members), cfg.local_val_fraction)
        nodes.append(NodeData(train=np.sort(members[n_val:]), val=np.sort(members[:n_val])))
    return nodes


def label_skew(labels: np.ndarray, parts: list[np.ndarray], num_classes: int) -> float:
    """Mean total-variation distance between each node's label distribution and the global one."""
    overall = np.bincount(labels, minlength=num_classes) / len(labels)
    tv = [0.5 * np.abs(np.bincount(labels[p], minlength=num_classes) / max(len(p), 1) - overall).sum() for p in parts]
    return float(np.mean(tv))
