"""The "pre-trained" node models: one per node, trained on that node's partition, cached on disk.

The cache key covers everything that shapes the model: dataset settings, partition, seed, node,
architecture and training budget (plus a format version), so changing any of them trains anew,
and every trial and later run with the same settings reuses the file.

A node may arrive pre-trained: ``checkpoint`` (its model is that file, only evaluated) or ``init``
(trained from those weights). Either way the cache entry is written in raykd's format, keyed by the
file's content hash, so the teacher server and the logit cache read every node the same way.
Entries are ``raykd.files.cached`` entries: checked against their SHA-256 on every read (flipped bytes
are retrained, never used), and built by one process while a concurrent one waits and reuses them.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from raykd.config import DataConfig, ExperimentConfig, ModelSpec, TrainConfig
from raykd.data import Dataset, NodeData, Splits, build_augment, check_dataset, load_dataset, make_splits, split_nodes
from raykd.data.documents import document_nodes, document_splits
from raykd.engine import CPU, TransferBatches, accuracy, fit, seed_everything, token_scores
from raykd.errors import ConfigError
from raykd.files import cached, file_digest, held_writes, read_checked
from raykd.lm.hf import content_digest, is_pretrained
from raykd.methods.ce import CrossEntropy
from raykd.models import InputShape, build_model
from raykd.students import fit_weights, read_weights

CACHE_FORMAT = 3  # 3: entries carry a SHA-256 beside them
#: Weights used as they are (a checkpoint file, or a pre-trained hf:/gguf: model): such a node is evaluated only.
FROZEN_STARTS = ("checkpoint", "pretrained")
#: A file changed this recently may change again within the clock's resolution: hash it every time.
RACY_SECONDS = 2.0


@dataclass(frozen=True)
class Setup:
    """What one seed of an experiment sees: the data, its global splits, and each node's share."""

    dataset: Dataset
    splits: Splits
    nodes: list[NodeData]


#: Datasets whose content is fixed by their name and settings (the user's own are keyed by their content).
FIXED_DATASETS = ("digits", "mnist1d", "mnist", "fake", "cifar10", "cifar100")
#: A version of a user's data files: (path, size, mtime) of each.
Version = tuple[tuple[str, int, int], ...]


def source_version(data: DataConfig) -> Version:
    """What a user's data files under ``data.root`` are now, so an edit between two runs in one process is seen;
    empty for the embedded datasets, and for a function's data (fixed once Python has imported its module)."""
    if data.dataset in FIXED_DATASETS or data.root is None or not data.root.exists():
        return ()
    files = [data.root] if data.root.is_file() else sorted(p for p in data.root.rglob("*") if p.is_file())
    return tuple((str(p), s.st_size, s.st_mtime_ns) for p, s in ((p, p.stat()) for p in files))


def _dataset(data: DataConfig, cache_dir: Path) -> Dataset:
    return _loaded(data, cache_dir, source_version(data))


@lru_cache(maxsize=32)
def _loaded(data: DataConfig, cache_dir: Path, version: Version) -> Dataset:
    """A pure memo: a data config and the version of the files it reads fix the arrays, so the runs and trials of a
    process share one load (a worker loads the same dataset many times)."""
    return load_dataset(data, cache_dir)


@lru_cache(maxsize=32)
def _content_digest(data: DataConfig, cache_dir: Path, version: Version) -> str:
    digest = hashlib.sha256()
    dataset = _loaded(data, cache_dir, version)
    for tensor in (dataset.train_x, dataset.train_y, dataset.test_x, dataset.test_y):
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def data_digest(cfg: ExperimentConfig) -> str | None:
    """The content of a user's dataset (an .npz, an image folder, a callable's arrays): editing it retrains."""
    if cfg.data.dataset in FIXED_DATASETS:
        return None
    return _content_digest(cfg.data, cfg.nodes.cache_dir, source_version(cfg.data))


@dataclass(frozen=True)
class ConfigKey:
    """A config as a memo key: equal and hashed by ``key``, what the memo depends on (its JSON, part of it, a file it
    names), since an ``ExperimentConfig`` holds lists and is not hashable itself."""

    cfg: ExperimentConfig = dataclass_field(compare=False, hash=False)
    key: str


@lru_cache(maxsize=64)
def _checked(config: ConfigKey) -> None:
    """Check the config's dataset against it once per config and version of its data files (workers load the same
    dataset many times).

    A pure memo: a config is immutable, and with its files' version (in the key) it fixes the dataset, so a pass
    stays true; a failure raises and is not remembered."""
    cfg = config.cfg
    dataset = _dataset(cfg.data, cfg.nodes.cache_dir)
    check_dataset(cfg, dataset)
    check_checkpoints(cfg, dataset.input_shape, dataset.num_classes, dataset.tokens)


def dataset_of(cfg: ExperimentConfig) -> Dataset:
    """The experiment's dataset, loaded once per process and checked against all of ``cfg`` that depends on it:
    splits and partitions (``check_dataset``), every node's model and weights file (``check_checkpoints``).

    A dataset built here is cached on disk only once those checks pass, so a config the data cannot
    serve leaves no cache entry behind.
    """
    with held_writes():
        dataset = _dataset(cfg.data, cfg.nodes.cache_dir)
        try:
            _checked(ConfigKey(cfg, f"{cfg.model_dump_json()} {source_version(cfg.data)}"))
        except ConfigError:
            _loaded.cache_clear()  # its cache entry was dropped: a later load builds (and writes) it again
            raise
    return dataset


def prepare(cfg: ExperimentConfig, seed: int) -> Setup:
    """Load the dataset (cached per process), draw the seed's splits and partition the rest (text: by document)."""
    dataset = dataset_of(cfg)
    if dataset.tokens:
        splits, rest = document_splits(dataset, cfg.data, seed)
        return Setup(dataset, splits, document_nodes(dataset, rest, cfg.partition, seed))
    labels = dataset.train_y.numpy()
    splits = make_splits(labels, cfg.data, seed)
    return Setup(dataset, splits, split_nodes(splits.partitioned, labels, cfg.partition, seed))


def node_key(cfg: ExperimentConfig, node: int, seed: int) -> str:
    """Content key of a node model: any change to what shapes it gives a new key."""
    share = {"partition": cfg.partition.model_dump(mode="json"), "node": node}
    return model_key(cfg, cfg.nodes.model_of(node), node_field(cfg, node), seed, share)


def model_key(cfg: ExperimentConfig, spec: ModelSpec, field: str, seed: int, share: dict[str, Any]) -> str:
    """Content key of a model trained on ``share`` of the data (a node's partition, or the public pool).

    A model from a ``checkpoint`` is keyed by the file's content instead of a training budget; one
    fine-tuned from ``init`` by both. Paths are left out: a moved file is the same model.
    """
    start, path = weights_start(spec)
    fields: dict[str, Any] = {
        "format": CACHE_FORMAT,
        "data": cfg.data.model_dump(mode="json", exclude={"root"}),
        "data_content": data_digest(cfg),
        **share,
        "seed": seed,
        "model": spec.model_dump(mode="json", exclude={"checkpoint", "init"}),
        "weights": [start, weights_digest(path) if path else None],
        "pretrained": content_digest(spec.name, field) if start == "pretrained" else None,
        "train": None if start in FROZEN_STARTS else train_key(cfg.nodes.train),
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:20]


def train_key(budget: TrainConfig) -> dict[str, Any]:
    """The budget's part of a node's key; the default fp32 precision is left out, so caches from before
    ``train.precision`` existed stay valid (any other precision trains a different model and keys apart)."""
    return budget.model_dump(mode="json", exclude={"precision"} if budget.precision == "fp32" else None)


def weights_start(spec: ModelSpec) -> tuple[str, Path | None]:
    """Where a node's weights start: ("checkpoint", file), ("init", file), ("pretrained", None) for an ``hf:`` or
    ``gguf:`` model (its weights come with it) or ("scratch", None)."""
    if is_pretrained(spec.name) and spec.checkpoint is None and spec.init is None:
        return "pretrained", None
    if spec.checkpoint is not None:
        return "checkpoint", spec.checkpoint
    return ("init", spec.init) if spec.init is not None else ("scratch", None)


def weights_digest(path: Path) -> str:
    """The file's SHA-256, remembered per (path, size, mtime, inode) so keys stay cheap for large files.

    As in git's "racy clean" rule, a digest taken within RACY_SECONDS of the file's mtime is not
    remembered: an edit inside the clock's resolution would keep the same mtime.
    """
    stat = path.stat()
    if time.time() - stat.st_mtime <= RACY_SECONDS:
        return file_digest(path)
    return _settled_digest(str(path), stat.st_size, stat.st_mtime_ns, stat.st_ino)


@lru_cache(maxsize=1024)
def _settled_digest(path: str, size: int, mtime_ns: int, inode: int) -> str:
    """A pure memo: the arguments name one version of a file that has not changed since its clock tick passed
    (any edit changes its size, mtime or inode), so its digest is a fact every run in the process may share."""
    return file_digest(Path(path))


def node_path(cfg: ExperimentConfig, node: int, seed: int) -> Path:
    return cfg.nodes.cache_dir / "nodes" / f"node{node}-seed{seed}-{node_key(cfg, node, seed)}.pt"


def node_field(cfg: ExperimentConfig, node: int) -> str:
    """The config key that describes ``node``'s model (for error lines)."""
    return f"nodes.models.{node}" if node in cfg.nodes.models else "nodes.model"


def new_model(cfg: ExperimentConfig, setup: Setup, node: int) -> nn.Module:
    """The node's architecture with fresh weights (no checkpoint or init applied)."""
    data = setup.dataset
    spec, field = cfg.nodes.model_of(node), node_field(cfg, node)
    return build_model(spec, data.input_shape, data.num_classes, field, data.tokens, data.pixels)


def start_model(
    spec: ModelSpec,
    shape: InputShape,
    classes: int,
    field: str,
    tokens: bool = False,
    pixels: dict[str, Any] | None = None,
) -> nn.Module:
    """``spec`` built (``build_model``), with its checkpoint or init weights loaded; a file that does not fit is one
    line."""
    model = build_model(spec, shape, classes, field, tokens, pixels)
    start, path = weights_start(spec)
    if path is not None:
        fit_weights(model, read_weights(path, f"{field}.{start}"), path, f"{field}.{start}")
    return model


def check_checkpoints(cfg: ExperimentConfig, input_shape: InputShape, num_classes: int, tokens: bool = False) -> None:
    """Preflight: every node's architecture builds for the data, and its checkpoint or init file is readable
    and fits it."""
    fields = {node_field(cfg, node): cfg.nodes.model_of(node) for node in range(cfg.partition.num_nodes)}
    for field, spec in fields.items():
        start_model(spec, input_shape, num_classes, field, tokens)


def train_node(cfg: ExperimentConfig, setup: Setup, node: int, seed: int, device: torch.device = CPU) -> dict[str, Any]:
    """Train node ``node`` on its local data with cross-entropy; returns its cache record (weights and meta).

    A ``checkpoint`` node is only evaluated; an ``init`` node trains from its file's weights. It trains on
    ``device`` (its caller's choice: a shell that reserved a GPU passes CUDA); the file holds CPU tensors.
    """
    local = setup.nodes[node]
    spec, field = cfg.nodes.model_of(node), node_field(cfg, node)
    record = train_record(cfg, setup, spec, field, (local.train, local.val), seed, node, device)
    record["meta"] = {"node": node, "seed": seed, **record["meta"]}
    return record


def train_record(
    cfg: ExperimentConfig,
    setup: Setup,
    spec: ModelSpec,
    field: str,
    rows: tuple[np.ndarray, np.ndarray],
    seed: int,
    salt: int,
    device: torch.device = CPU,
) -> dict[str, Any]:
    """``spec`` trained with cross-entropy on ``device`` on the training ``rows`` (nodes.train's budget) unless its
    weights are used as they are; its cache record: CPU weights and meta (validation on the second ``rows``, test
    scores, where the weights came from). ``salt`` (a node id) makes its random draws its own."""
    seed_everything(seed * 1000 + salt)
    (train, val), data, budget = rows, setup.dataset, cfg.nodes.train
    model = start_model(spec, data.input_shape, data.num_classes, field, data.tokens, data.pixels)
    model = model.to(device)
    start, path = weights_start(spec)
    started = time.perf_counter()
    if start not in FROZEN_STARTS:
        augment = build_augment(cfg.data.augment, seed + salt)
        batches = TransferBatches(
            data.train_x, data.train_y, train, None, budget.batch_size, False, seed + salt, augment
        )
        fit([model], CrossEntropy(), batches, budget.epochs, budget.lr, budget.weight_decay, precision=budget.precision)
    meta = {
        "train_samples": len(train),
        "local_val_acc": accuracy(model, data.train_x[val], data.train_y[val]),
        **test_scores(model, data),
        "train_seconds": time.perf_counter() - started,
        "weights_from": start,
        "weights_file": str(path) if path else None,
        "weights_digest": weights_digest(path) if path else None,
    }
    return {"state_dict": {k: v.cpu() for k, v in model.state_dict().items()}, "meta": meta}


def test_scores(model: nn.Module, data: Dataset) -> dict[str, float]:
    """A node's test accuracy and, for a language model, its test perplexity: one pass over the test split."""
    if not data.tokens:
        return {"test_acc": accuracy(model, data.test_x, data.test_y)}
    acc, nll = token_scores(model, data.test_x, data.test_y)
    return {"test_acc": acc, "test_ppl": math.exp(nll)}


def _load_record(path: Path) -> dict[str, Any]:
    return torch.load(path, weights_only=True)


def read_node(path: Path) -> dict[str, Any] | None:
    """A cached node record, or None when it is missing or fails its check (truncated, flipped bytes)."""
    return read_checked(path, _load_record)[0]


def load_node(cfg: ExperimentConfig, setup: Setup, node: int, seed: int, device: torch.device = CPU) -> nn.Module:
    """The node's pre-trained model from the cache, on ``device``, training (and caching) it there first if needed."""
    build = lambda: train_node(cfg, setup, node, seed, device)  # noqa: E731
    return _cached_model(node_path(cfg, node, seed), new_model(cfg, setup, node), build).to(device)


#: The config key of the federated kd teacher (for error lines and its cache key).
TEACHER_FIELD = "federated.teacher"
#: The public-pool teacher's draws differ from every node's (a node's salt is its id).
TEACHER_SALT = 999_983


def teacher_path(cfg: ExperimentConfig, seed: int) -> Path:
    """The cache file of ``federated.teacher``: trained once on the public pool (or its own weights, as they are)."""
    assert cfg.federated.teacher is not None
    key = model_key(cfg, cfg.federated.teacher, TEACHER_FIELD, seed, {"public": "pool"})
    return cfg.nodes.cache_dir / "nodes" / f"teacher-seed{seed}-{key}.pt"


def load_teacher(cfg: ExperimentConfig, setup: Setup, seed: int, device: torch.device = CPU) -> nn.Module:
    """``federated.teacher`` from the cache, on ``device``, first trained there on the public pool with nodes.train
    when it has no weights of its own (a checkpoint, an hf:/gguf: model): the teacher a server holds, having seen no
    client's private data."""
    spec, data = cfg.federated.teacher, setup.dataset
    assert spec is not None
    model = build_model(spec, data.input_shape, data.num_classes, TEACHER_FIELD, data.tokens, data.pixels)
    rows = (setup.splits.pool, setup.splits.val)
    build = lambda: train_record(cfg, setup, spec, TEACHER_FIELD, rows, seed, TEACHER_SALT, device)  # noqa: E731
    return _cached_model(teacher_path(cfg, seed), model, build).to(device)


def _cached_model(path: Path, model: nn.Module, build: Callable[[], dict[str, Any]]) -> nn.Module:
    """``model`` with the weights of the cache record at ``path``, built (and cached) first when missing."""
    saved, _ = cached(path, _load_record, build, lambda tmp, record: torch.save(record, tmp))
    model.load_state_dict(saved["state_dict"])
    return model
