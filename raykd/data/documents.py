"""Splits and node shares of a text dataset, whole documents at a time.

A language model's rows are tokens of sequences cut from documents; splitting sequences would put
neighbouring text of one document on both sides of a split. So the validation and pool splits and
each node's share are drawn over documents (per seed), and each node's documents are chosen by the
configured partitioner over their topics: ``iid`` deals documents at random, ``dirichlet`` skews each
node towards a few topics (natural non-IID text), ``pathological`` gives each node
``classes_per_node`` topics. ``partition.min_samples`` counts documents here.
"""

from __future__ import annotations

import numpy as np

from raykd.config import DataConfig, PartitionConfig
from raykd.data.datasets import Dataset, Splits
from raykd.data.partition import NodeData, local_val_count, partition


def _rows(documents: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """The training rows of the ``chosen`` documents, in order."""
    return np.flatnonzero(np.isin(documents, chosen))


def document_splits(dataset: Dataset, data: DataConfig, seed: int) -> tuple[Splits, np.ndarray]:
    """Validation and pool rows from whole documents (a seeded draw); also the documents left to partition."""
    assert dataset.documents is not None and dataset.topics is not None
    order = np.random.default_rng(seed).permutation(len(dataset.topics))
    n_val = max(1, round(data.val_fraction * len(order)))
    n_pool = round(data.pool_fraction * len(order))
    val, pool, rest = np.split(order, [n_val, n_val + n_pool])
    rows = [_rows(dataset.documents, docs) for docs in (rest, val, pool)]
    return Splits(*rows), np.sort(rest)


def document_nodes(dataset: Dataset, rest: np.ndarray, cfg: PartitionConfig, seed: int) -> list[NodeData]:
    """Each node's training and local-validation rows: its documents by the partitioner over their topics."""
    assert dataset.documents is not None and dataset.topics is not None
    rng = np.random.default_rng(seed + 7)
    nodes = []
    for part in partition(dataset.topics[rest], cfg, seed):
        docs = rng.permutation(rest[part])
        n_val = local_val_count(len(docs), cfg.local_val_fraction)
        nodes.append(NodeData(_rows(dataset.documents, docs[n_val:]), _rows(dataset.documents, docs[:n_val])))
    return nodes
