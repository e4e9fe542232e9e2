"""Decoupled knowledge distillation (DKD, Zhao et al., CVPR 2022).

With p = p_t^T (teacher) and q = p_s^T (student) at temperature T, and t the row's class, KD's KL splits
exactly into two parts (the paper's Eq. 3):

  KL(p || q) = TCKD + (1 - p_t) * NCKD
  TCKD = KL([p_t, 1 - p_t] || [q_t, 1 - q_t])                  target-class KD (binary)
  NCKD = KL(p_hat || q_hat),  p_hat_j = p_j / (1 - p_t), j != t  non-target-class KD

so classic KD weights NCKD by the teacher's own (1 - p_t), which shrinks exactly where the teacher is
sure. DKD frees the two weights:

  loss = CE + w_e * T^2 * (alpha * TCKD + beta * NCKD),  w_e = min((e + 1) / (warmup * epochs), 1)

Defaults are the paper's CIFAR-100 settings (mdistiller's DKD config): alpha 1, beta 8, T 4, and a
linear warm-up of the distillation weight over the first 20 of 240 epochs (warmup = 0.0833 of the
epochs). On unlabelled rows (a shared pool) t is the teacher's top class. Several teachers: the mean
of their softened probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from raykd.methods.base import (
    Method,
    StepLogits,
    labelled_cross_entropy,
    masked_mean,
    pseudo_targets,
    soft_probabilities,
)


def decoupled_terms(
    teacher: Tensor, student_logits: Tensor, classes: Tensor, temperature: float
) -> tuple[Tensor, Tensor]:
    """Per-row TCKD and NCKD from the teacher's softened probabilities and the student's logits.

    The teacher's non-target mass is summed, not taken as 1 - p_t: where a teacher is sure, 1 - p_t rounds to
    0 in float32 while the mass it stands for does not, and ``xlogy`` gives 0 log 0 = 0 where it really is 0.
    """
    on_target = F.one_hot(classes, teacher.shape[1]).bool()
    log_q = F.log_softmax(student_logits / temperature, dim=1)
    log_q_t = log_q[on_target]
    log_q_rest = torch.logsumexp(log_q.masked_fill(on_target, -torch.inf), dim=1)  # log(1 - q_t), stably
    rest = teacher.masked_fill(on_target, 0)
    p_t, p_rest = teacher[on_target], rest.sum(dim=1)
    tckd = torch.xlogy(p_t, p_t) - p_t * log_q_t + torch.xlogy(p_rest, p_rest) - p_rest * log_q_rest
    p_hat = rest / p_rest.clamp_min(torch.finfo(rest.dtype).tiny).unsqueeze(1)
    log_q_hat = log_q - log_q_rest.unsqueeze(1)
    nckd = (torch.xlogy(p_hat, p_hat) - p_hat * log_q_hat).sum(dim=1)
    return tckd, nckd


@dataclass(frozen=True)
class DecoupledKD(Method):
    """DKD: target-class and non-target-class KD terms with their own weights."""

    name = "dkd"
    temperature: Annotated[float, Field(gt=0, description="softening temperature T (> 0); paper: 4")] = 4.0
    alpha: Annotated[float, Field(ge=0, description="weight of the target-class term TCKD; paper: 1")] = 1.0
    beta: Annotated[float, Field(ge=0, description="weight of the non-target-class term NCKD; paper: 8")] = 8.0
    warmup: Annotated[
        float, Field(ge=0, le=1, description="fraction of epochs over which the KD weight ramps up; paper: 20/240")
    ] = 0.0833

    def start_epoch(self, epoch: int, epochs: int) -> None:
        ramp = self.warmup * epochs
        self.keep(weight=1.0 if ramp <= 0 else min((epoch + 1) / ramp, 1.0))

    def losses(self, logits: StepLogits, targets: Tensor, distill: Tensor) -> dict[str, Tensor]:
        student = logits.students[0]
        teacher = soft_probabilities(logits.teachers, self.temperature)
        tckd, nckd = decoupled_terms(teacher, student, pseudo_targets(targets, teacher), self.temperature)
        tckd, nckd = masked_mean(tckd, distill), masked_mean(nckd, distill)
        kd = self.temperature**2 * (self.alpha * tckd + self.beta * nckd)
        ce = labelled_cross_entropy(student, targets)
        return {"loss": ce + self.kept("weight") * kd, "ce": ce, "kd": kd, "tckd": tckd, "nckd": nckd}
