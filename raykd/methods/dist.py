"""DIST: knowledge distillation from a stronger teacher (Huang et al., NeurIPS 2022).

KL asks the student to match the teacher's probabilities exactly, which is hard when the teacher is much
stronger; DIST asks only for the same *relations*, measured by Pearson correlation (invariant to the
scale and shift of the probabilities). With Y_s = softmax(z_s / T) and Y_t = softmax(z_t / T) over the
B distilled rows of a batch:

  inter = 1 - mean_i rho(Y_s[i, :], Y_t[i, :])    each row's ranking of the classes
  intra = 1 - mean_j rho(Y_s[:, j], Y_t[:, j])    each class's ranking of the rows
  loss  = CE + T^2 * (beta * inter + gamma * intra)

Defaults are the paper's CIFAR-100 settings: beta = gamma = 2, T = 4 (ImageNet uses 1, 1, 1; torchdistill's
DISTLoss defaults to those). Several teachers: the mean of their softened probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from raykd.methods.base import Method, StepLogits, labelled_cross_entropy, soft_probabilities

#: Keeps a correlation finite where one side is constant.
EPS = 1e-8


def pearson_rows(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation of each row of ``a`` with the same row of ``b``."""
    return F.cosine_similarity(a - a.mean(dim=1, keepdim=True), b - b.mean(dim=1, keepdim=True), dim=1, eps=EPS)


def relation_terms(student: Tensor, teacher: Tensor) -> tuple[Tensor, Tensor]:
    """DIST's inter-class and intra-class terms (1 - mean correlation) of two probability tables.

    Zero (not NaN) where a batch has no distilled row, or one row (no ranking of rows to match).
    """
    zero = student.new_zeros(())
    inter = 1 - pearson_rows(student, teacher).mean() if len(student) > 0 else zero
    intra = 1 - pearson_rows(student.T, teacher.T).mean() if len(student) > 1 else zero
    return inter, intra


@dataclass(frozen=True)
class DIST(Method):
    """DIST: match the teacher's inter- and intra-class correlations, not its probabilities."""

    name = "dist"
    temperature: Annotated[float, Field(gt=0, description="softening temperature T (> 0); paper (CIFAR): 4")] = 4.0
    beta: Annotated[float, Field(ge=0, description="weight of the inter-class term; paper (CIFAR): 2")] = 2.0
    gamma: Annotated[float, Field(ge=0, description="weight of the intra-class term; paper (CIFAR): 2")] = 2.0

    def losses(self, logits: StepLogits, targets: Tensor, distill: Tensor) -> dict[str, Tensor]:
        student = logits.students[0]
        teacher = soft_probabilities(logits.teachers, self.temperature)[distill]
        inter, intra = relation_terms(F.softmax(student[distill] / self.temperature, dim=1), teacher)
        kd = self.temperature**2 * (self.beta * inter + self.gamma * intra)
        ce = labelled_cross_entropy(student, targets)
        return {"loss": ce + kd, "ce": ce, "kd": kd, "inter": inter, "intra": intra}
