"""Plain PyTorch training and evaluation. Knows nothing of Ray, Flower or any particular method.

``fit`` trains a list of models (one student, or K mutual-learning peers) with one method's loss,
asking a ``teacher`` (``raykd.teacher.protocol.TeacherLogits``) for frozen logits (teachers, initial student) for
each batch; whether those come from an in-process teacher, a server or a cache is the caller's business.
``fit`` first moves the batches' data to the models' device (``Batches.use_device``): on a GPU the inputs
live there for the whole run and each step's batch is gathered and augmented there, so only the index
table crosses the bus, once per epoch. ``precision`` (``train.precision``) picks autocast, grad scaling and
memory layout (``raykd.precision``); the default fp32 step is plain PyTorch.

Language models: a token position is a row. A model's (batch, seq, vocab) logits flatten to rows
(``rows``), a batch's targets are the next tokens, its distill mask the real (non-padding) positions
and its ``index`` each token's global position (sequence * seq_len + offset), so every method, the
logit cache and the teacher server handle tokens exactly as they handle samples.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from raykd.data.augment import Augment
from raykd.methods.base import UNLABELLED, Context, Method, StepLogits, as_stored
from raykd.precision import Precision
from raykd.teacher.protocol import NoTeacher, TeacherLogits


@dataclass(frozen=True)
class Batch:
    """Rows of one step: inputs, targets (``UNLABELLED`` for pool rows), distill mask, global indices."""

    x: Tensor
    targets: Tensor
    distill: Tensor
    index: Tensor


def rows(logits: Tensor) -> Tensor:
    """Logits as (rows, classes): a classifier's (batch, classes) unchanged, an LM's (batch, seq, vocab) flattened."""
    return logits if logits.ndim == 2 else logits.reshape(-1, logits.shape[-1])


def token_rows(y: Tensor, index: Tensor, targets: Tensor, distill: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sequence tables (steps, batch) as per-token tables (steps, batch * seq_len): targets, the distill
    mask (only real positions: padding targets are ``UNLABELLED`` in ``y``) and each token's global index."""
    seq_len = y.shape[1]
    real = y[index] != UNLABELLED
    tokens = index[..., None] * seq_len + torch.arange(seq_len)
    return targets.flatten(1), (distill[..., None] & real).flatten(1), tokens.flatten(1)


#: ``fit``'s per-epoch hook: the epoch (from 0) and its mean loss terms.
OnEpoch = Callable[[int, dict[str, float]], None]
#: A mutual-learning peer's step: its own logits in, every peer's out (see ``fit``).
Exchange = Callable[[list[Tensor]], list[Tensor]]


class Batches(Protocol):
    """An epoch's batches: ``TransferBatches``, or a wrapper such as ``raykd.lm.onpolicy.OnPolicyBatches``."""

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[Batch]: ...

    def use_device(self, device: torch.device) -> None:
        """Hold the data on ``device`` from now on (a wrapper that builds batches on the CPU may ignore it)."""


class NonFiniteLoss(RuntimeError):
    """A loss term became NaN or infinite; names the epoch and the term."""


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch; derived seeds (``seed * 1000 + node``) may pass NumPy's 2**32, so it wraps."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class TransferBatches:
    """Shuffled batches over a labelled set and, optionally, an unlabelled pool.

    With a pool, each step pairs a labelled batch with a pool batch (the smaller set cycles) and an
    epoch is one pass over the larger. ``distill_labelled`` says whether distillation terms also
    apply to the labelled rows (pool rows always get them). ``augment`` (e.g. ``build_augment``)
    transforms each batch's inputs, so a teacher handed ``Batch.x`` sees the student's augmented view.

    A ``batch_size`` above the larger set's size is capped there: the batch is then the whole set (full-batch
    training), where filling it by repeating rows would only reweight them and could allocate without bound
    (``batch_size: 10000000`` would copy the data thousands of times).
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        labelled: np.ndarray,
        pool: np.ndarray | None,
        batch_size: int,
        distill_labelled: bool,
        seed: int,
        augment: Augment | None = None,
    ) -> None:
        self.x, self.y, self.augment = x, y, augment
        self.device = x.device
        self.labelled = torch.as_tensor(labelled, dtype=torch.int64)
        self.pool = torch.as_tensor(pool if pool is not None else [], dtype=torch.int64)
        self.batch_size = max(1, min(batch_size, max(len(self.labelled), len(self.pool))))
        self.distill_labelled = distill_labelled
        self.generator = torch.Generator().manual_seed(seed)

    def _chunks(self, index: Tensor, steps: int) -> Tensor:
        """A (steps, batch) table of ``index``: shuffled passes, cycled until every step has a full batch."""
        if len(index) == 0:
            return index.reshape(steps, 0)
        order = torch.cat(
            [
                index[torch.randperm(len(index), generator=self.generator)]
                for _ in range(math.ceil(steps * self.batch_size / len(index)))
            ]
        )
        return order[: steps * self.batch_size].view(steps, self.batch_size)

    def __len__(self) -> int:
        return math.ceil(max(len(self.labelled), len(self.pool)) / self.batch_size)

    def use_device(self, device: torch.device) -> None:
        """Inputs (and the augmentation's random draws) on ``device`` for the rest of the run; one copy, not one a step.

        Index tables stay drawn on the CPU from the same generator, so a run's batches do not depend on the device;
        ``Batch.index`` stays on the CPU too, for whatever looks rows up on the host (the logit cache, method tables).
        """
        self.x, self.device = self.x.to(device), torch.device(device)
        if self.augment is not None:
            self.augment.use_device(self.device)

    @property
    def rows_per_epoch(self) -> int:
        """Rows the model sees per epoch (labelled and pool batches are both full-sized)."""
        return len(self) * self.batch_size * ((len(self.labelled) > 0) + (len(self.pool) > 0))

    def __iter__(self) -> Iterator[Batch]:
        # One table per epoch for indices, targets and masks (a few ops, not a few per step); each step
        # gathers only its own inputs, so a batch sent to a teacher server carries just its rows.
        steps = len(self)
        lab, unl = self._chunks(self.labelled, steps), self._chunks(self.pool, steps)
        index = torch.cat([lab, unl], dim=1)
        pool_targets = torch.full((*unl.shape, *self.y.shape[1:]), UNLABELLED, dtype=torch.int64)
        targets = torch.cat([self.y[lab], pool_targets], dim=1)
        distill = torch.cat([torch.full(lab.shape, self.distill_labelled), torch.ones(unl.shape, dtype=torch.bool)], 1)
        row_index = index
        if self.y.ndim > 1:  # a language model's sequences: one row per token
            targets, distill, row_index = token_rows(self.y, index, targets, distill)
        gather = index.to(self.device, non_blocking=True)
        targets, distill = targets.to(self.device, non_blocking=True), distill.to(self.device, non_blocking=True)
        for rows, step_targets, step_distill, step_index in zip(gather, targets, distill, row_index, strict=True):
            x = self.x[rows]  # iterating the tables unbinds each once (one op), not one indexing op per table a step
            yield Batch(self.augment(x) if self.augment else x, step_targets, step_distill, step_index)


def device_of(model: nn.Module) -> torch.device:
    """Where a model's weights are (the CPU for a model without any)."""
    return next(model.parameters(), torch.empty(0)).device


#: Where the core trains unless its caller (a shell that reserved GPUs) passes another device.
CPU = torch.device("cpu")


def pick_device(gpus: float) -> torch.device:
    """CUDA when the caller reserved GPUs (``gpus`` > 0) and this process sees one, else the CPU."""
    return torch.device("cuda" if gpus > 0 and torch.cuda.is_available() else "cpu")


def lookahead(batches: Iterable[Batch], ahead: int) -> Iterator[tuple[Batch, list[Batch]]]:
    """Each batch with the next ``ahead`` ones, built lazily (an on-policy batch samples the student as it is)."""
    stream = iter(batches)
    window = deque(islice(stream, ahead + 1))
    while window:
        yield window[0], list(window)[1:]
        window.popleft()
        window.extend(islice(stream, 1))


def fit(
    models: list[nn.Module],
    method: Method,
    batches: Batches,
    epochs: int,
    lr: float,
    weight_decay: float = 0.0,
    teacher: TeacherLogits | None = None,
    on_epoch: OnEpoch = lambda epoch, losses: None,
    precision: str = "fp32",
    exchange: Exchange | None = None,
) -> None:
    """Train ``models`` jointly on ``method``'s loss; ``on_epoch`` gets each epoch's mean loss terms.

    ``exchange`` is a mutual-learning peer's meeting point: its own models' logits in, every peer's out (its own in
    place, the others' as constants), so peers on different machines train exactly as ``models`` trained together.
    """
    teacher = teacher or NoTeacher()
    device = device_of(models[0])
    teacher.use_device(device)
    batches.use_device(device)
    mixed = Precision(precision, device)
    mixed.layout(models)
    params = [p for m in models for p in m.parameters()]
    optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    for epoch in range(epochs):
        method.start_epoch(epoch, epochs)
        for model in models:
            model.train()
        totals: dict[str, Tensor] = {}  # summed on the device: no host sync per step, one per epoch
        for batch, upcoming in lookahead(batches, teacher.ahead):
            for later in upcoming:
                teacher.prefetch(later)  # a source ignores batches it has already asked for
            terms = step_losses(models, method, teacher, batch, mixed, exchange)
            mixed.step(terms["loss"], optimizer)
            for name, value in terms.items():
                totals[name] = totals[name] + value.detach() if name in totals else value.detach()
        means = {name: float(total) / len(batches) for name, total in totals.items()}
        bad = [name for name, value in means.items() if not math.isfinite(value)]
        if bad:
            raise NonFiniteLoss(f"epoch {epoch + 1}: loss term {bad[0]!r} is {means[bad[0]]} (try a lower lr)")
        on_epoch(epoch, means)


def step_losses(
    models: list[nn.Module],
    method: Method,
    teacher: TeacherLogits,
    batch: Batch,
    mixed: Precision,
    exchange: Exchange | None = None,
) -> dict[str, Tensor]:
    """One step's loss terms: reference logits and the models' forwards under ``mixed``'s autocast, the method's
    loss on float32 logits, so every method computes in full precision."""
    device, full = mixed.device, mixed.full
    with mixed.autocast():
        teachers, initial = teacher(batch)
        x = mixed.inputs(batch.x.to(device, non_blocking=True))
        students = [full(rows(m(x))) for m in models]
    logits = StepLogits(
        exchange(students) if exchange else students,
        [full(rows(t.to(device))) for t in teachers],
        full(rows(initial.to(device))) if initial is not None else None,
        batch.index,
    )
    return method.losses(logits, batch.targets.to(device), batch.distill.to(device))


def method_context(
    batches: TransferBatches,
    teachers: Callable[[], list[nn.Module]],
    num_classes: int,
    seed: int,
    teacher_logits: Callable[[], list[Tensor]] | None = None,
    view: Callable[[Tensor], Tensor] = as_stored,
) -> Context:
    """What ``Method.prepare`` sees of a transfer run; teacher logits default to one forward pass each.

    ``teachers`` is called only by a method that needs the models themselves, so a run whose logits
    are cached loads no teacher for the methods that read logits alone. ``view``: how the stored inputs become
    what the models see (``Dataset.model_view``; uint8 pixels are standardised).
    """
    return Context(
        batches.x,
        batches.y,
        batches.labelled,
        batches.pool,
        num_classes,
        teachers,
        teacher_logits or (lambda: [predict(t, batches.x) for t in teachers()]),
        seed,
        view,
    )


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, batch_size: int = 1024) -> Tensor:
    """Logits of ``model`` on ``x`` (on the CPU, whatever the model's device), in eval mode, batched."""
    model.eval()
    device = device_of(model)
    return torch.cat([model(x[i : i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)])


def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """Top-1 accuracy in [0, 1] (a language model's: next-token accuracy over real positions); 0 for an empty set."""
    if len(y) == 0:
        return 0.0
    if y.ndim > 1:
        return token_scores(model, x, y)[0]
    return float((predict(model, x).argmax(1) == y).float().mean())


@torch.no_grad()
def token_scores(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 64) -> tuple[float, float]:
    """A language model's next-token accuracy and mean cross-entropy (nats per token) over the real positions.

    Batched, so a vocabulary's logits exist for ``batch_size`` sequences at a time; (0, 0) for no real position.
    """
    model.eval()
    device, hits, nll, count = device_of(model), 0.0, 0.0, 0
    for i in range(0, len(x), batch_size):
        logits, targets = rows(model(x[i : i + batch_size].to(device))), y[i : i + batch_size].reshape(-1).to(device)
        real = targets != UNLABELLED
        hits += float((logits.argmax(1) == targets)[real].sum())
        nll += float(F.cross_entropy(logits, targets, ignore_index=UNLABELLED, reduction="sum"))
        count += int(real.sum())
    return (hits / count, nll / count) if count else (0.0, 0.0)
