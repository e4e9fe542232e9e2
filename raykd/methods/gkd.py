"""Generalised knowledge distillation (GKD, Agarwal et al. ICLR 2024): the generalised Jensen-Shannon divergence.

With teacher p = p_t^T, student q = p_s^T and the mixture m = beta p + (1 - beta) q:
  JSD(beta) = beta KL(p || m) + (1 - beta) KL(q || m),
and at the ends, as TRL's GKDTrainer: beta = 0 is forward KL(p || q), beta = 1 reverse KL(q || p).
loss = (1 - alpha) * CE + alpha * T^2 * JSD(beta). ``on_policy`` (GKD's lambda) is the fraction of each
batch's sequences the student writes itself (``raykd.lm.onpolicy``); 0 distils on the corpus only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from raykd.methods.base import Method, StepLogits, labelled_cross_entropy, masked_mean, soft_probabilities
from raykd.methods.skew import skew_kl


def generalised_jsd(log_teacher: Tensor, log_student: Tensor, beta: float) -> Tensor:
    """Per-row JSD(beta) between teacher and student log-probabilities (forward / reverse KL at beta 0 / 1)."""
    if beta == 0:
        return skew_kl(log_teacher, log_student, 0.0)
    if beta == 1:
        return skew_kl(log_student, log_teacher, 0.0)
    return beta * skew_kl(log_teacher, log_student, beta) + (1 - beta) * skew_kl(log_student, log_teacher, 1 - beta)


@dataclass(frozen=True)
class GeneralisedKD(Method):
    """GKD: generalised JSD(beta) to the teacher, on the corpus and (``on_policy`` > 0) on the student's own text."""

    name = "gkd"
    beta: Annotated[float, Field(ge=0, le=1, description="JSD interpolation: 0 forward KL, 1 reverse KL")] = 0.5
    temperature: Annotated[float, Field(gt=0, description="softening temperature T (> 0)")] = 1.0
    alpha: Annotated[float, Field(ge=0, le=1, description="weight of the divergence term, in [0, 1]")] = 0.9
    on_policy: Annotated[
        float, Field(ge=0, le=1, description="lm: fraction lambda of sequences the student samples itself")
    ] = 0.0

    def losses(self, logits: StepLogits, targets: Tensor, distill: Tensor) -> dict[str, Tensor]:
        student = logits.students[0]
        log_teacher = soft_probabilities(logits.teachers, self.temperature).clamp_min(1e-12).log()
        log_student = F.log_softmax(student / self.temperature, dim=1)
        kd = masked_mean(generalised_jsd(log_teacher, log_student, self.beta), distill) * self.temperature**2
        ce = labelled_cross_entropy(student, targets)
        return {"loss": (1 - self.alpha) * ce + self.alpha * kd, "ce": ce, "kd": kd}
