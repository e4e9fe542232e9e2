"""Offline teacher-logit cache: one forward pass per teacher and split, shared by every trial and run.

Logits of a frozen model on the whole training split are stored as a ``.npy`` file (memory-mapped
on read) named by a key over the checkpoint's content hash, the dataset settings, the split, the
input transform and the dtype: a retrained or edited teacher, or another transform, never reads
stale logits. Each array is a ``raykd.files.cached`` entry: its SHA-256 beside it, so a truncated or
corrupted file fails the check and is rebuilt; written atomically, and built once when processes race.

Augmented views: the cache holds logits of the un-augmented inputs only (transform ``"none"``);
raykd's transfer sets are not augmented. A run that augments its inputs must use ``inline`` or
``server`` mode, where the teacher sees the same augmented batch as the student.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from raykd.config import ExperimentConfig
from raykd.engine import Batch, ReferenceLogits, References, pick_device, predict
from raykd.experiment import LoadNode
from raykd.files import cached, file_digest, read_checked
from raykd.nodes import Setup, load_node, node_path, read_node

TRANSFORM = "none"


class LogitCache:
    """A folder of logit arrays keyed by (teacher content, dataset, split, transform, dtype)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def key(self, checkpoint: Path, dataset: str, split: str, dtype: str) -> str:
        parts = [file_digest(checkpoint), dataset, split, TRANSFORM, dtype]
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:24]

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.npy"

    def load(self, key: str) -> np.ndarray | None:
        """The cached array (memory-mapped), or None when missing or failing its checksum."""
        return read_checked(self.path(key), _memory_map)[0]

    def get_or_build(self, key: str, compute: Callable[[], Tensor]) -> tuple[np.ndarray, bool]:
        """The cached logits (memory-mapped), computing and storing them first on a miss; also says whether it built."""
        path = self.path(key)
        logits, built = cached(path, _memory_map, lambda: compute().numpy(), lambda tmp, a: np.save(tmp, a))
        return (_memory_map(path) if built else logits), built


def _memory_map(path: Path) -> np.ndarray:
    return np.load(path, mmap_mode="r")


class CachedReferences(References):
    """Teacher (and initial-student) logits looked up by the batch's global sample indices."""

    def __init__(self, teachers: list[np.ndarray], initial: np.ndarray | None = None) -> None:
        self.teachers, self.initial = teachers, initial

    @staticmethod
    def _rows(array: np.ndarray, batch: Batch) -> Tensor:
        return torch.from_numpy(np.asarray(array[batch.index.numpy()])).float()

    def __call__(self, batch: Batch) -> ReferenceLogits:
        initial = self._rows(self.initial, batch) if self.initial is not None else None
        return [self._rows(t, batch) for t in self.teachers], initial


def node_logits(cfg: ExperimentConfig, setup: Setup, node: int, seed: int) -> tuple[np.ndarray, bool]:
    """A pre-trained node model's logits on the whole training split, from the cache or built once.

    The model is loaded only on a miss: a cached run reads no teacher checkpoint.
    """
    if read_node(node_path(cfg, node, seed)) is None:
        load_node(cfg, setup, node, seed)  # trains and caches it: the key is over the checkpoint's content
    data = json.dumps(cfg.data.model_dump(mode="json", include={"dataset", "fake_samples", "fake_classes"}))
    cache = LogitCache(cfg.nodes.cache_dir / "logits")
    key = cache.key(node_path(cfg, node, seed), data, "train", cfg.teacher.dtype)
    dtype = getattr(torch, cfg.teacher.dtype)

    def compute() -> Tensor:
        model = load_node(cfg, setup, node, seed).to(pick_device(cfg.tune.gpus_per_trial))
        return predict(model, setup.dataset.train_x).to(dtype)

    return cache.get_or_build(key, compute)


class CachedLogits:
    """A trial's frozen logits from the offline cache (a ``raykd.experiment.LogitSource``)."""

    def __init__(self, cfg: ExperimentConfig, setup: Setup, seed: int) -> None:
        self.cfg, self.setup, self.seed = cfg, setup, seed

    def _logits(self, node: int) -> np.ndarray:
        return node_logits(self.cfg, self.setup, node, self.seed)[0]

    def references(self, frozen: list[int], initial: int | None, load: LoadNode) -> References:
        return CachedReferences(
            [self._logits(n) for n in frozen], self._logits(initial) if initial is not None else None
        )

    def train_logits(self, nodes: list[int], load: LoadNode) -> list[Tensor]:
        return [torch.from_numpy(np.array(self._logits(n), dtype=np.float32)) for n in nodes]
