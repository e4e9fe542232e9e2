"""Skew KL and skew reverse KL (DistiLLM, Ko et al. 2024).

With teacher p = p_t^T and student q = p_s^T:
  skew KL          KL(p || a p + (1 - a) q)
  skew reverse KL  KL(q || (1 - a) p + a q)
loss = (1 - alpha) * CE + alpha * T^2 * divergence. Mixing a little of the first argument into the
second keeps the divergence bounded (at most -log a) and its gradients stable where the student puts
almost no mass; a = 0 gives plain forward / reverse KL. Several teachers: mean of their probabilities.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from dataclasses import dataclass
from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from raykd.methods.base import Method, StepLogits, labelled_cross_entropy, masked_mean, soft_probabilities


def skew_kl(log_p: Tensor, log_q: Tensor, skew: float) -> Tensor:
    """Per-row KL(p || skew * p + (1 - skew) * q) from log-probabilities, summed over classes."""
    log_mix = torch.logaddexp(
        log_p + (math.log(skew) if skew > 0 else -math.inf),
        log_q + (math.log(1 - skew) if skew < 1 else -math.inf),
    )
    return (log_p.exp() * (log_p - log_mix)).sum(dim=1)


@dataclass(frozen=True)
class SkewDivergence(Method):
    """Shared loss of the two skew divergences; subclasses say which direction."""

    skew: Annotated[float, Field(ge=0, lt=1, description="skew a in [0, 1); 0 is plain KL")] = 0.1
    temperature: Annotated[float, Field(gt=0, description="softening temperature T (> 0)")] = 1.0
    alpha: Annotated[float, Field(ge=0, le=1, description="weight of the divergence term, in [0, 1]")] = 0.5

    @abstractmethod
    def divergence(self, log_teacher: Tensor, log_student: Tensor) -> Tensor:
        """Per-row divergence between teacher and student log-probabilities."""

    def losses(self, logits: StepLogits, targets: Tensor, distill: Tensor) -> dict[str, Tensor]:
        student = logits.students[0]
        log_teacher = soft_probabilities(logits.teachers, self.temperature).clamp_min(1e-12).log()
        log_student = F.log_softmax(student / self.temperature, dim=1)
        kd = masked_mean(self.divergence(log_teacher, log_student), distill) * self.temperature**2
        ce = labelled_cross_entropy(student, targets)
        return {"loss": (1 - self.alpha) * ce + self.alpha * kd, "ce": ce, "kd": kd}


@dataclass(frozen=True)
class SkewKL(SkewDivergence):
    """DistiLLM skew KL: KL(p_t || a p_t + (1 - a) p_s)."""

    name = "skew-kl"

    def divergence(self, log_teacher: Tensor, log_student: Tensor) -> Tensor:
        return skew_kl(log_teacher, log_student, self.skew)


@dataclass(frozen=True)
class SkewReverseKL(SkewDivergence):
    """DistiLLM skew reverse KL: KL(p_s || (1 - a) p_t + a p_s)."""

    name = "skew-rkl"

    def divergence(self, log_teacher: Tensor, log_student: Tensor) -> Tensor:
        return skew_kl(log_student, log_teacher, self.skew)
