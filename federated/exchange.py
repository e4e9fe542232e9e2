"""Strategy logit-exchange (FedMD, DS-FL): clients share what they predict on public rows, never their weights.

Each round a client distils the server's consensus on the public rows (its method row: the KD term on the public
rows beside cross-entropy on its own), then sends its own top-k log-probabilities on those rows; the server merges
the clients' into the next consensus (the mean of their probabilities, or DS-FL's entropy-reduction averaging).
Only predictions on common rows meet, so client models may differ (``nodes.models``). A message holds, per public
row (a token, for text), K log-probabilities (float16), their class ids (the smallest integer type that holds the
vocabulary) and the row's dropped log-mass (float32): ``rows x (K x (2 + id bytes) + 4)`` bytes each way, whatever
the size of the models.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from flwr.app import Array, ArrayRecord
from torch import Tensor, nn

from raykd.config import ExperimentConfig
from raykd.engine import Batch, device_of, rows
from raykd.nodes import Setup
from raykd.teacher.cache import dense_logits, top_k_rows
from raykd.teacher.protocol import FrozenLogits, TeacherLogits

#: Public rows whose full (vocabulary-wide) logits exist at once, on a client or on the server.
CHUNK_ROWS = 4096
FIELDS = ("values", "ids", "tail")


def public_rows(cfg: ExperimentConfig, setup: Setup) -> np.ndarray:
    """The shared public rows (pool samples, or pool sequences of a text): the pool, or its first
    ``federated.exchange.public_rows``."""
    return setup.splits.pool[: cfg.federated.exchange.public_rows]


def _item_chunks(x: Tensor) -> Iterator[Tensor]:
    """``x`` in slices whose logit rows number about CHUNK_ROWS (a sequence holds seq_len rows)."""
    per_item = x.shape[1] if x.ndim == 2 and not x.is_floating_point() else 1
    step = max(1, CHUNK_ROWS // per_item)
    yield from (x[i : i + step] for i in range(0, len(x), step))


def pack(log_probs: Tensor, k: int) -> ArrayRecord:
    """Rows of log-probabilities as a message: each row's top K (all classes when K >= them) and its dropped mass."""
    records = top_k_rows(log_probs, min(k, log_probs.shape[1] - 1), "float16", "mass")
    return ArrayRecord({name: Array(np.ascontiguousarray(records[name])) for name in FIELDS})


def unpack(record: ArrayRecord, classes: int, device: torch.device | None = None) -> Tensor:
    """A message's rows as full log-probability rows (the dropped mass spread evenly over the dropped classes)."""
    values, ids, tail = (torch.from_numpy(record[name].numpy().astype(np.float32 if name != "ids" else np.int64))
                         for name in FIELDS)  # fmt: skip
    dense = dense_logits(values.to(device), ids.to(device), classes, tail.to(device))
    return dense.log_softmax(dim=1)


@torch.no_grad()
def predictions(model: nn.Module, x: Tensor, k: int) -> ArrayRecord:
    """A client's message: its top-k log-probabilities on the public inputs ``x``, row by row."""
    model.eval()
    device = device_of(model)
    parts = [rows(model(chunk.to(device))).float().log_softmax(dim=1).cpu() for chunk in _item_chunks(x)]
    return pack(torch.cat(parts), k)


def consensus(records: list[ArrayRecord], classes: int, k: int, aggregate: str, temperature: float) -> ArrayRecord:
    """The server's merge of the clients' messages, in chunks of rows: the mean of their probabilities, sharpened
    at ``temperature`` for ``era`` (DS-FL: an average of non-IID clients is flat; sharpening restores its entropy)."""
    total, parts = len(records[0]["values"].numpy()), []
    for start in range(0, total, CHUNK_ROWS):
        part = [_rows_of(r, start, start + CHUNK_ROWS) for r in records]
        probs = torch.stack([unpack(p, classes).exp() for p in part]).mean(dim=0)
        merged = probs.clamp_min(1e-30).log()
        if aggregate == "era":
            merged = (merged / temperature).log_softmax(dim=1)
        parts.append(merged)
    return pack(torch.cat(parts), k)


def _rows_of(record: ArrayRecord, start: int, stop: int) -> ArrayRecord:
    return ArrayRecord({name: Array(record[name].numpy()[start:stop]) for name in FIELDS})


class ConsensusTeacher(TeacherLogits):
    """The consensus as a frozen teacher's logits, looked up by each batch row's global index.

    ``public`` are the public items (samples, or sequences of ``seq_len`` tokens) in the consensus's order; a row
    that is not public (a client's own) reads as uniform, and its distill mask is off.
    """

    def __init__(self, record: ArrayRecord, public: np.ndarray, seq_len: int, classes: int) -> None:
        self.logits = unpack(record, classes)
        self.seq_len, self.classes = seq_len, classes
        self.position = np.full(int(public.max()) + 1 if len(public) else 0, -1, dtype=np.int64)
        self.position[public] = np.arange(len(public))

    def __call__(self, batch: Batch) -> FrozenLogits:
        index = batch.index.numpy()
        item, offset = index // self.seq_len, index % self.seq_len
        known = item < len(self.position)
        slot = np.where(known, self.position[np.minimum(item, max(len(self.position) - 1, 0))], -1)
        rows_at = torch.from_numpy(np.where(slot >= 0, slot * self.seq_len + offset, 0))
        logits = self.logits[rows_at].clone()
        logits[torch.from_numpy(slot < 0)] = 0.0
        return [logits], None
