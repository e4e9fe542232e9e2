"""The "pre-trained" node models: one per node, trained on that node's partition, cached on disk.

The cache key covers everything that shapes the model: dataset settings, partition, seed, node,
architecture and training budget (plus a format version), so changing any of them trains anew,
and every trial and later run with the same settings reuses the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from raykd.config import DataConfig, ExperimentConfig
from raykd.data import Dataset, NodeData, Splits, load_dataset, make_splits, split_nodes
from raykd.engine import TransferBatches, accuracy, fit, pick_device, seed_everything
from raykd.methods.ce import CrossEntropy
from raykd.models import build_model

CACHE_FORMAT = 1


@dataclass(frozen=True)
class Setup:
    """What one seed of an experiment sees: the data, its global splits, and each node's share."""

    dataset: Dataset
    splits: Splits
    nodes: list[NodeData]


@cache
def _dataset(data: DataConfig, cache_dir: Path) -> Dataset:
    return load_dataset(data, cache_dir)


def dataset_of(cfg: ExperimentConfig) -> Dataset:
    """The experiment's dataset, loaded once per process."""
    return _dataset(cfg.data, cfg.nodes.cache_dir)


def prepare(cfg: ExperimentConfig, seed: int) -> Setup:
    """Load the dataset (cached per process), draw the seed's splits and partition the rest."""
    dataset = dataset_of(cfg)
    labels = dataset.train_y.numpy()
    splits = make_splits(labels, cfg.data, seed)
    return Setup(dataset, splits, split_nodes(splits.partitioned, labels, cfg.partition, seed))


def node_key(cfg: ExperimentConfig, node: int, seed: int) -> str:
    """Content key of a node model: any change to what shapes it gives a new key."""
    fields: dict[str, Any] = {
        "format": CACHE_FORMAT,
        "data": cfg.data.model_dump(mode="json", exclude={"root"}),
        "partition": cfg.partition.model_dump(mode="json"),
        "seed": seed,
        "node": node,
        "model": cfg.nodes.model_of(node).model_dump(mode="json"),
        "train": cfg.nodes.train.model_dump(mode="json"),
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:20]


def node_path(cfg: ExperimentConfig, node: int, seed: int) -> Path:
    return cfg.nodes.cache_dir / "nodes" / f"node{node}-seed{seed}-{node_key(cfg, node, seed)}.pt"


def new_model(cfg: ExperimentConfig, setup: Setup, node: int) -> nn.Module:
    field = f"nodes.models.{node}" if node in cfg.nodes.models else "nodes.model"
    return build_model(cfg.nodes.model_of(node), setup.dataset.input_shape, setup.dataset.num_classes, field)


def train_node(cfg: ExperimentConfig, setup: Setup, node: int, seed: int) -> dict[str, float]:
    """Train node ``node`` on its local data with cross-entropy and write it to the cache atomically.

    It trains on CUDA when the sweep reserves GPUs (``tune.gpus_per_trial``); the file holds CPU tensors.
    """
    seed_everything(seed * 1000 + node)
    model = new_model(cfg, setup, node).to(pick_device(cfg.tune.gpus_per_trial))
    data, local, budget = setup.dataset, setup.nodes[node], cfg.nodes.train
    started = time.perf_counter()
    batches = TransferBatches(data.train_x, data.train_y, local.train, None, budget.batch_size, False, seed + node)
    fit([model], CrossEntropy(), batches, budget.epochs, budget.lr, budget.weight_decay)
    meta = {
        "node": node,
        "seed": seed,
        "train_samples": len(local.train),
        "local_val_acc": accuracy(model, data.train_x[local.val], data.train_y[local.val]),
        "test_acc": accuracy(model, data.test_x, data.test_y),
        "train_seconds": time.perf_counter() - started,
    }
    path = node_path(cfg, node, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save({"state_dict": {k: v.cpu() for k, v in model.state_dict().items()}, "meta": meta}, tmp)
    os.replace(tmp, path)
    return meta


def read_node(path: Path) -> dict[str, Any] | None:
    """A cached node checkpoint, or None when it is missing or unreadable (truncated, corrupted)."""
    try:
        return torch.load(path, weights_only=True)
    except FileNotFoundError:
        return None
    except Exception:  # noqa: BLE001 - any unpickling failure means the file cannot be trusted
        return None


def load_node(cfg: ExperimentConfig, setup: Setup, node: int, seed: int) -> nn.Module:
    """The node's pre-trained model from the cache, training (and caching) it first if needed."""
    path = node_path(cfg, node, seed)
    saved = read_node(path)
    if saved is None:
        train_node(cfg, setup, node, seed)
        saved = read_node(path)
        assert saved is not None, f"node model was just written to {path} but cannot be read back"
    model = new_model(cfg, setup, node)
    model.load_state_dict(saved["state_dict"])
    return model
