"""Data-partitioning KD (Roth et al., ICLR 2024, "Fantastic Gains and Where to Find Them").

Per row, the soft target comes from the teacher where the teacher is more confident on the true
class than a frozen copy of the initial student, and from that frozen copy otherwise, so the
student keeps what it already knew. loss = (1 - alpha) * CE + alpha * T^2 * KL(target^T || p_s^T).
On unlabelled rows (a shared pool) no true class is known; there confidence is the top-class
probability.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch
from pydantic import Field
from torch import Tensor

from raykd.methods.base import (
    UNLABELLED,
    Method,
    StepLogits,
    distillation_kl,
    labelled_cross_entropy,
    masked_mean,
    soft_probabilities,
)


def true_class_confidence(probs: Tensor, targets: Tensor) -> Tensor:
    """Probability on the true class; the top-class probability on unlabelled rows."""
    on_target = probs.gather(1, targets.clamp_min(0).unsqueeze(1)).squeeze(1)
    return torch.where(targets == UNLABELLED, probs.max(dim=1).values, on_target)


def teacher_mask(teacher_probs: Tensor, initial_probs: Tensor, targets: Tensor) -> Tensor:
    """True where the teacher is strictly more confident on the true class than the initial student."""
    return true_class_confidence(teacher_probs, targets) > true_class_confidence(initial_probs, targets)


@dataclass(frozen=True)
class DataPartitioningKD(Method):
    """KD whose target switches per sample between teacher and initial student."""

    name = "dpkd"
    uses_initial_student = True
    temperature: Annotated[float, Field(gt=0, description="softening temperature T (> 0)")] = 4.0
    alpha: Annotated[float, Field(ge=0, le=1, description="weight of the KD term, in [0, 1]")] = 0.5

    def losses(self, logits: StepLogits, targets: Tensor, distill: Tensor) -> dict[str, Tensor]:
        if logits.initial is None:
            raise ValueError("DP-KD needs the initial student's logits")
        student = logits.students[0]
        use_teacher = teacher_mask(
            soft_probabilities(logits.teachers, 1.0), soft_probabilities([logits.initial], 1.0), targets
        )
        target = torch.where(
            use_teacher.unsqueeze(1),
            soft_probabilities(logits.teachers, self.temperature),
            soft_probabilities([logits.initial], self.temperature),
        )
        ce = labelled_cross_entropy(student, targets)
        kd = masked_mean(distillation_kl(target, student, self.temperature), distill)
        return {
            "loss": (1 - self.alpha) * ce + self.alpha * kd,
            "ce": ce,
            "kd": kd,
            "teacher_fraction": masked_mean(use_teacher.float(), distill),
        }
