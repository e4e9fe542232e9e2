"""Offline teacher-logit cache: one forward pass per teacher and split, shared by every trial and run.

Logits of a frozen model on the whole training split are stored as a ``.npy`` file (memory-mapped
on read) named by a key over the checkpoint's content hash, the dataset settings, the split, the
input transform and the dtype: a retrained or edited teacher, or another transform, never reads
stale logits. Each array is a ``raykd.files.cached`` entry: its SHA-256 beside it, so a truncated or
corrupted file fails the check and is rebuilt; written atomically, and built once when processes race.

Augmented views: the cache holds logits of the un-augmented inputs only (transform ``"none"``);
raykd's transfer sets are not augmented. A run that augments its inputs must use ``inline`` or
``server`` mode, where the teacher sees the same augmented batch as the student.

Many classes (``teacher.top_k: K``): each row keeps only its K largest logits and their class
ids, K x (4 + 2) bytes instead of C x 4 at float32 (ids are int32 above 32,767 classes), in one
structured ``.npy`` with the same checksum. The key includes K, so full and top-k entries never meet.
Each step's rows are expanded back to dense logits on the training device (``dense_logits``), so no
method knows the cache was cut. What the dropped classes read as is ``teacher.top_k_fill``: ``min``,
the row's smallest kept logit (nothing more stored), or ``mass``, the teacher's own tail probability
spread evenly over them (each record also holds the logsumexp of its dropped logits, 4 bytes; the key
names the fill, so the two never meet either, and ``min`` entries keep the key they always had).
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from raykd.config import ExperimentConfig, TeacherConfig
from raykd.engine import CPU, Batch, predict, rows
from raykd.files import cached, file_digest, read_checked
from raykd.nodes import Setup, data_digest, load_node, node_path, read_node
from raykd.teacher.protocol import FrozenLogits, TeacherLogits

TRANSFORM = "none"
Fill = Literal["min", "mass"]  # ``teacher.top_k_fill``: what a top-k row's dropped classes read as
TOKEN_CHUNK = 64  # text sequences per forward pass when building a cache: (64 x seq_len) rows of the vocabulary


class LogitCache:
    """A folder of logit arrays keyed by (teacher content, dataset, split, transform, dtype)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    @staticmethod
    def key(
        checkpoint: Path, dataset: str, split: str, dtype: str, top_k: int | None = None, fill: Fill = "min"
    ) -> str:
        parts = [file_digest(checkpoint), dataset, split, TRANSFORM, dtype]
        parts += [f"top_k={top_k}"] if top_k is not None else []  # full-logit keys stay as they were
        parts += ["fill=mass"] if top_k is not None and fill == "mass" else []  # and so do min-fill ones
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:24]

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.npy"

    def load(self, key: str) -> np.ndarray | None:
        """The cached array (memory-mapped), or None when missing or failing its checksum."""
        return read_checked(self.path(key), _memory_map)[0]

    def get_or_build(self, key: str, compute: Callable[[], np.ndarray]) -> tuple[np.ndarray, bool]:
        """The cached logits (memory-mapped), computing and storing them first on a miss; also says whether it built."""
        path = self.path(key)
        logits, built = cached(path, _memory_map, compute, lambda tmp, a: np.save(tmp, a))
        return (_memory_map(path) if built else logits), built


def _memory_map(path: Path) -> np.ndarray:
    return np.load(path, mmap_mode="r")


def top_k_rows(logits: Tensor, k: int, dtype: str, fill: Fill = "min") -> np.ndarray:
    """Each row's ``k`` largest logits (in ``dtype``, largest first) and their class ids, as one packed record; with
    the ``mass`` fill also the logsumexp of the row's dropped logits (``tail_logsumexp``, float32), which only
    here, where the whole row exists, can be taken."""
    full = logits.float()
    values, ids = full.topk(k, dim=1)
    id_type = next(t for t in (np.int16, np.uint16, np.int32) if logits.shape[1] <= np.iinfo(t).max + 1)
    tail = [("tail", np.float32)] if fill == "mass" else []
    rows = np.empty(len(logits), np.dtype([("values", dtype, (k,)), ("ids", id_type, (k,)), *tail]))
    rows["values"], rows["ids"] = values.numpy(), ids.numpy()
    if fill == "mass":
        rows["tail"] = tail_logsumexp(full, ids).numpy()
    return rows


def tail_logsumexp(logits: Tensor, ids: Tensor) -> Tensor:
    """logsumexp over the last dimension of the logits not in ``ids``: log(Z * tail mass at T = 1).

    Why this and not the full row's logsumexp: the tail mass from that is 1 - sum(kept probabilities), a
    difference of numbers near 1 that float32 resolves only to about 1e-6 of the row (a sure teacher's tail
    would read as 1e-6 where it was 1e-40); the dropped logits' own logsumexp keeps it to float32's relative
    precision, and the full one is still one ``logaddexp`` away.
    """
    return logits.float().scatter(-1, ids.long(), float("-inf")).logsumexp(dim=-1)


def dense_logits(values: Tensor, ids: Tensor, classes: int, tail: Tensor | None = None) -> Tensor:
    """Full rows from their top K: the kept logits in place, every other class at one fill value per row.

    The fill is ``teacher.top_k_fill``: without ``tail`` (``min``) the row's smallest kept logit; with each row's
    ``tail_logsumexp`` (``mass``) the value that spreads the dropped classes' own probability mass evenly over
    them (``mass_fill``).

    Why the smallest kept one: it is the tightest bound on the dropped logits that the K pairs alone give (each
    dropped logit is at most that), it never lifts a dropped class above a kept one, and it needs nothing more
    stored. It over-states the tail: at temperature T the dropped classes get more mass than they had, by at
    most (C - K) * exp(min_kept / T) / sum_j exp(z_j / T), a bound that falls as K grows or T falls (the KD
    term's error need not: ``benchmarks/topk_cache.py``); at K = 1 every class ties and the row reads as uniform.
    Over a language model's vocabulary (C - K in the thousands) that over-statement is large, hence ``mass``.
    """
    fill = values.amin(dim=1) if tail is None else mass_fill(values, tail, classes)
    rows = fill[:, None].expand(len(values), classes).contiguous()
    return rows.scatter_(1, ids.long(), values)


def mass_fill(values: Tensor, tail: Tensor, classes: int) -> Tensor:
    """Per row, the logit that spreads the tail mass (1 - the kept classes' probabilities, at T = 1) evenly over
    the C - K dropped classes: log(mean exp(dropped logits)) = ``tail`` - log(C - K). A softmax at T = 1 then gives
    the kept classes exactly their probabilities and the dropped ones, together, exactly theirs (DistillKit's and
    Megatron's tail), however small: a tail near 0 is a very negative but finite logit, not log(0).

    A mean is never above the largest dropped logit, so the fill is never above the smallest kept one; the
    ``minimum`` only holds that where the kept values were rounded (float16 records).
    """
    fill = tail.float() - math.log(classes - values.shape[1])
    return torch.minimum(fill, values.amin(dim=1))


def read_rows(array: np.ndarray, index: np.ndarray, classes: int, device: torch.device) -> Tensor:
    """Rows of a cached array as float32 logits on ``device``; top-k records move there compact, then expand."""
    rows = array[index]
    if rows.dtype.names is None:
        return torch.from_numpy(np.asarray(rows)).to(device).float()
    # Copies of the record fields: a field is a strided view (torch refuses it), and uint16 ids widen here.
    values = torch.from_numpy(np.array(rows["values"])).to(device)
    ids = torch.from_numpy(rows["ids"].astype(np.int64)).to(device)
    tail = torch.from_numpy(np.array(rows["tail"])).to(device) if "tail" in rows.dtype.names else None
    return dense_logits(values.float(), ids, classes, tail)  # a record with a tail was stored for ``mass``


def dense_table(array: np.ndarray) -> Tensor | None:
    """A dense cached array as a CPU tensor over the same memory (no copy); None for top-k records (``read_rows``).

    Why: a step's lookup is then one indexing op on the batch's index tensor, where NumPy's fancy indexing of the
    memory map and the conversions back to torch take about twice as long. The tensor is only read (indexed into
    new tensors), so the memory map being read-only, which ``torch.from_numpy`` warns about, does not matter.
    """
    if array.dtype.names is not None:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)


class CachedTeacher(TeacherLogits):
    """``teacher.mode: cache``: teacher (and initial-student) logits looked up by the batch's global sample indices.

    ``classes`` is the dataset's class count: what top-k arrays expand back to.
    """

    def __init__(self, teachers: list[np.ndarray], initial: np.ndarray | None = None, *, classes: int) -> None:
        self.teachers, self.initial, self.classes = teachers, initial, classes
        self.tables = [dense_table(t) for t in teachers]
        self.initial_table = dense_table(initial) if initial is not None else None
        self.device = torch.device("cpu")

    def use_device(self, device: torch.device) -> None:
        self.device = device

    def _rows(self, array: np.ndarray, table: Tensor | None, batch: Batch) -> Tensor:
        if table is None:
            return read_rows(array, batch.index.numpy(), self.classes, self.device)
        return table[batch.index].to(self.device).float()

    def __call__(self, batch: Batch) -> FrozenLogits:
        initial = self._rows(self.initial, self.initial_table, batch) if self.initial is not None else None
        return [self._rows(t, table, batch) for t, table in zip(self.teachers, self.tables, strict=True)], initial

    def train_logits(self) -> list[Tensor]:
        cpu = torch.device("cpu")
        return [read_rows(array, np.arange(len(array)), self.classes, cpu) for array in self.teachers]


def node_logits(
    cfg: ExperimentConfig, setup: Setup, node: int, seed: int, device: torch.device = CPU
) -> tuple[np.ndarray, bool]:
    """A pre-trained node model's logits on the whole training split, from the cache or built once (on ``device``).

    The model is loaded only on a miss: a cached run reads no teacher checkpoint. With ``teacher.top_k``
    the array holds top-k records (``top_k_rows``), not dense logits.
    """
    if read_node(node_path(cfg, node, seed)) is None:
        load_node(cfg, setup, node, seed, device)  # trains and caches it: the key is over the checkpoint's content
    cache, key, teacher = LogitCache(cfg.nodes.cache_dir / "logits"), logits_key(cfg, node, seed), cfg.teacher

    def compute() -> np.ndarray:
        model = load_node(cfg, setup, node, seed, device)
        x = setup.dataset.train_x
        step = TOKEN_CHUNK if setup.dataset.tokens else max(len(x), 1)  # a vocabulary's logits, a chunk at a time
        return np.concatenate(
            [stored_rows(rows(predict(model, x[i : i + step])), teacher) for i in range(0, len(x), step)]
        )

    return cache.get_or_build(key, compute)


def logits_key(cfg: ExperimentConfig, node: int, seed: int) -> str:
    """The cache key of a node's training-split logits (its cached model file must exist: the key is over it)."""
    data, teacher = json.dumps(cache_identity(cfg)), cfg.teacher
    path = node_path(cfg, node, seed)
    return LogitCache.key(path, data, "train", teacher.dtype, teacher.top_k, teacher.top_k_fill)


def stored_rows(logits: Tensor, teacher: TeacherConfig) -> np.ndarray:
    """Logit rows as the cache stores them: top-k records with ``teacher.top_k``, else dense in ``teacher.dtype``."""
    if teacher.top_k is not None:
        return top_k_rows(logits, teacher.top_k, teacher.dtype, teacher.top_k_fill)
    return logits.to(getattr(torch, teacher.dtype)).numpy()


def cache_identity(cfg: ExperimentConfig) -> dict[str, Any]:
    """What the cached logits depend on besides the teacher's weights: the data's settings (text: all of them,
    tokenizer and seq_len included, and the corpus's content)."""
    if cfg.data.task == "lm":
        return {**cfg.data.model_dump(mode="json", exclude={"root"}), "content": data_digest(cfg)}
    return cfg.data.model_dump(mode="json", include={"dataset", "fake_samples", "fake_classes"})
