"""The method interface and the loss pieces every method shares.

A method is a pure function of logits: it never sees models, data loaders or where the teacher
logits came from (an in-process teacher, a server or a cache); the engine hands them over.

Rows of a batch carry two labels of their own: ``targets`` (the class id, or ``UNLABELLED`` for
rows from an unlabelled transfer pool) and ``distill`` (whether the distillation terms apply).
Cross-entropy is averaged over labelled rows, distillation terms over ``distill`` rows.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

UNLABELLED = -1


@dataclass(frozen=True)
class StepLogits:
    """Everything a method may use in one step.

    ``students`` are the trainable models' logits (one for KD, K peers for DML; gradients flow);
    ``teachers`` are frozen references; ``initial`` is a frozen copy of the student as it was
    before transfer (only for methods that ask for it).
    """

    students: list[Tensor]
    teachers: list[Tensor]
    initial: Tensor | None = None


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


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean over the rows in ``mask``; zero (not NaN) when no row is selected."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


def labelled_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy averaged over labelled rows only."""
    labelled = targets != UNLABELLED
    per_row = F.cross_entropy(logits, targets.clamp_min(0), reduction="none")
    return masked_mean(per_row, labelled)


def soft_probabilities(logits: list[Tensor], temperature: float) -> Tensor:
    """Softened class probabilities of one model, or the mean of an ensemble's."""
    return torch.stack([F.softmax(z / temperature, dim=1) for z in logits]).mean(0)


def distillation_kl(target_probs: Tensor, student_logits: Tensor, temperature: float) -> Tensor:
    """Per-row T^2 * KL(target || softmax(student / T)), summed over classes.

    The T^2 factor keeps the gradient scale of the soft term independent of T (Hinton et al. 2015).
    """
    log_student = F.log_softmax(student_logits / temperature, dim=1)
    kl = F.kl_div(log_student, target_probs, reduction="none").sum(dim=1)
    return kl * temperature**2
