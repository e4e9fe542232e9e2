"""The method interface and the loss pieces every method shares.

In each step a method is a function of logits: it never sees models, data loaders or where the
teacher logits came from (an in-process teacher, a server or a cache); the engine hands them over.

Rows of a batch carry two labels of their own: ``targets`` (the class id, or ``UNLABELLED`` for
rows from an unlabelled transfer pool) and ``distill`` (whether the distillation terms apply).
Cross-entropy is averaged over labelled rows, distillation terms over ``distill`` rows.

Some methods also learn something once before training (a class-similarity matrix, per-sample scores,
an autoencoder) or follow the epoch (a temperature schedule): ``Method.prepare`` and
``Method.start_epoch`` are their optional hooks. The knobs stay frozen dataclass fields (they are the
YAML schema); what the hooks learn is per-run state kept beside them with ``Method.keep``.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

UNLABELLED = -1


@dataclass(frozen=True)
class StepLogits:
    """Everything a method may use in one step.

    ``students`` are the trainable models' logits (one for KD, K peers for DML; gradients flow);
    ``teachers`` are frozen references; ``initial`` is a frozen copy of the student as it was
    before transfer (only for methods that ask for it); ``index`` holds the rows' global training
    indices, so a prepared method can look up per-sample values it computed in ``prepare``.
    """

    students: list[Tensor]
    teachers: list[Tensor]
    initial: Tensor | None = None
    index: Tensor | None = None


def as_stored(x: Tensor) -> Tensor:
    """Inputs the models take as they are stored (``Context.view``'s default)."""
    return x


@dataclass(frozen=True)
class Context:
    """What a method may learn from once, before training (``Method.prepare``).

    ``x``, ``y`` are the whole training split (``StepLogits.index`` points into it), ``x`` as the models see it
    (``view`` of the ``stored`` inputs: uint8 pixels are standardised on first read); ``labelled`` and
    ``pool`` are the global indices of the transfer set's labelled and unlabelled rows;
    ``teacher_models()`` are the frozen teacher models (loaded on first call: a cached run needs
    none) and ``teacher_logits()`` their logits on ``x``, read from the offline logit cache when the
    run uses it, else computed by one forward pass.
    """

    stored: Tensor
    y: Tensor
    labelled: Tensor
    pool: Tensor
    num_classes: int
    teacher_models: Callable[[], list[nn.Module]]
    teacher_logits: Callable[[], list[Tensor]]
    seed: int
    view: Callable[[Tensor], Tensor] = field(default=as_stored)

    @cached_property
    def x(self) -> Tensor:
        """The training split as the models see it, made when a method first reads it (most never do)."""
        return self.view(self.stored)

    def rows(self) -> tuple[Tensor, Tensor]:
        """The transfer rows' global indices (labelled, then pool) and targets (``UNLABELLED`` on the pool)."""
        unlabelled = torch.full((len(self.pool),), UNLABELLED, dtype=torch.int64)
        return torch.cat([self.labelled, self.pool]), torch.cat([self.y[self.labelled], unlabelled])

    def select(self, scores: Tensor, fraction: float) -> Tensor:
        """A bool table over the training rows: the top ``fraction`` by score (in ``rows()`` order) of the
        labelled rows and, separately, of the pool rows, so the fraction holds whichever rows are distilled."""
        n, size = len(self.labelled), len(self.stored)
        return top_fraction(scores[:n], self.labelled, fraction, size) | top_fraction(
            scores[n:], self.pool, fraction, size
        )


class Method(ABC):
    """A distillation method: turns one step's logits into named loss terms.

    Subclasses are frozen dataclasses whose fields are the method's knobs; each field's
    ``Annotated[..., pydantic.Field(...)]`` metadata becomes the validation rule of the YAML config,
    and a list in the YAML becomes a Ray Tune grid axis.
    """

    name: ClassVar[str]
    #: What the teacher nodes' models are: frozen references, trainable peers (DML), or unused (no KD).
    teachers: ClassVar[Literal["frozen", "peers", "unused"]] = "frozen"
    #: DP-KD-style methods need a frozen copy of the student as it was before transfer.
    uses_initial_student: ClassVar[bool] = False

    @abstractmethod
    def losses(self, logits: StepLogits, targets: Tensor, distill: Tensor) -> dict[str, Tensor]:
        """Return named loss terms; ``"loss"`` is the one that is minimised."""

    def prepare(self, context: Context) -> dict[str, float]:
        """Called once before training; returns what preparing cost (recorded with the run's metrics)."""
        return {}

    def start_epoch(self, epoch: int, epochs: int) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Called by the engine before each epoch (0-based) of ``epochs``; schedules override it."""

    def keep(self, **state: Any) -> None:
        """Store per-run state beside the frozen knobs: plain attributes, never dataclass fields (knobs)."""
        for name, value in state.items():
            object.__setattr__(self, name, value)

    def kept(self, name: str) -> Any:
        """Per-run state stored by ``keep``; a clear error when the hook that makes it was not called."""
        if name not in self.__dict__:
            raise RuntimeError(f"method {self.name!r} has no {name!r}: call prepare()/start_epoch() before losses()")
        return self.__dict__[name]


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of the per-row ``values`` over the rows in ``mask``; zero (not NaN) when no row is selected.

    One ``dot`` instead of a multiply and a sum: every method calls this once or twice per step, and at
    small batches the step's cost is mostly the number of ops, not their size.
    """
    mask = mask.to(values.dtype)
    return values.dot(mask) / mask.sum().clamp_min(1.0)


def labelled_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy averaged over labelled rows only; zero (not NaN) when there are none.

    ``ignore_index`` drops the ``UNLABELLED`` rows inside the fused loss (no per-row losses, mask or clamp);
    the sum is divided here because a ``"mean"`` over no rows would be NaN.
    """
    total = F.cross_entropy(logits, targets, ignore_index=UNLABELLED, reduction="sum")
    return total / (targets != UNLABELLED).sum().clamp_min(1)


def soft_probabilities(logits: list[Tensor], temperature: float) -> Tensor:
    """Softened class probabilities of one model, or the mean of an ensemble's.

    One model skips the stack and mean, which would copy its probabilities only to give them back unchanged.
    """
    if len(logits) == 1:
        return F.softmax(logits[0] / temperature, dim=1)
    return torch.stack([F.softmax(z / temperature, dim=1) for z in logits]).mean(0)


def softened_kl(target_probs: Tensor, student_logits: Tensor, temperature: float) -> Tensor:
    """Per-row KL(target || softmax(student / T)), summed over classes, without the T^2 factor."""
    log_student = F.log_softmax(student_logits / temperature, dim=1)
    return F.kl_div(log_student, target_probs, reduction="none").sum(dim=1)


def distillation_kl(target_probs: Tensor, student_logits: Tensor, temperature: float) -> Tensor:
    """Per-row T^2 * KL(target || softmax(student / T)), summed over classes.

    The T^2 factor keeps the gradient scale of the soft term independent of T (Hinton et al. 2015).
    """
    return softened_kl(target_probs, student_logits, temperature) * temperature**2


def pseudo_targets(targets: Tensor, teacher_probs: Tensor) -> Tensor:
    """Class ids: the label where there is one, the teacher's top class on unlabelled rows."""
    return torch.where(targets == UNLABELLED, teacher_probs.argmax(dim=1), targets)


def top_fraction(scores: Tensor, index: Tensor, fraction: float, size: int) -> Tensor:
    """A bool table over ``size`` global rows: True for the ``fraction`` of ``index`` with the highest scores."""
    keep = index[scores.argsort(descending=True)[: round(fraction * len(index))]]
    table = torch.zeros(size, dtype=torch.bool)
    table[keep] = True
    return table


def train_helper(
    build: Callable[[], nn.Module],
    x: Tensor,
    target: Tensor,
    loss: Callable[[Tensor, Tensor], Tensor],
    epochs: int,
    seed: int,
) -> tuple[nn.Module, float]:
    """Build and briefly train a method's own helper model (an autoencoder, a reference model) with Adam.

    Seeded by ``seed`` alone (initialisation and order), so a prepared method is the same in every run
    with that seed, whatever ran before it. Returns the frozen model and its training seconds.
    """
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = build()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(epochs):
        for rows in torch.randperm(len(x), generator=generator).split(128):
            optimizer.zero_grad(set_to_none=True)
            loss(model(x[rows]), target[rows]).backward()
            optimizer.step()
    model.eval().requires_grad_(False)
    return model, time.perf_counter() - started


def kd_terms(
    student: Tensor, target: Tensor, targets: Tensor, rows: Tensor, temperature: float, alpha: float
) -> dict[str, Tensor]:
    """KD's loss with any soft target: (1 - alpha) * CE + alpha * T^2 * KL(target || p_s^T), KL over ``rows``.

    The same terms as ``masked_mean(distillation_kl(...), rows)`` and ``(1 - alpha) * ce + alpha * kd``, in fewer ops
    (this runs every step of KD and its variants, and at small batches a step costs by its op count): T^2 and the
    row count go into the rows' weights, which need no gradient, and one ``lerp`` mixes the two terms. The values
    differ from the longer form at float rounding only.
    """
    ce = labelled_cross_entropy(student, targets)
    mask = rows.to(student.dtype)
    weights = mask * (temperature**2 / mask.sum().clamp_min(1.0))
    kd = softened_kl(target, student, temperature).dot(weights)
    return {"loss": torch.lerp(ce, kd, alpha), "ce": ce, "kd": kd}


def per_row(table: Tensor, logits: StepLogits) -> Tensor:
    """The rows' entries of a table over global training indices that a method built in ``prepare``.

    Tables live where ``prepare`` built them (the CPU); the entries move to the students' device.
    """
    if logits.index is None:
        raise ValueError("this method looks per-sample values up by the rows' global indices (StepLogits.index)")
    return table[logits.index.to(table.device)].to(logits.students[0].device)
