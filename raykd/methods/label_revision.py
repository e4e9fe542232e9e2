"""Label revision and data selection (Lan et al. 2024, "Improve KD via Label Revision and Data Selection").

Label revision: where the teacher is wrong, its distribution is pulled towards the label,
  p = b * p_t^T + (1 - b) * onehot(y),  b = eta / (max_k p_t^T[k] - p_t^T[y] + 1),  0 < eta < 1,
so p's argmax is always y (p[y] - p[k] >= 1 - b * (1 + gap) > 0) while the teacher's ranking of
the other classes survives. Unlabelled pool rows have no y and keep p_t^T.
Data selection: only a ``fraction`` of the rows that take the KD term keep it. Rows are ranked once,
before training (labelled and pool rows each on their own), by the teacher's probability on the true
class (top-class probability on unlabelled rows): where the teacher is right and sure, its knowledge
is most reliable. Every labelled row keeps cross-entropy:
loss = (1 - alpha) * CE + alpha * T^2 * KL(p || p_s^T), the KL over the selected rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from raykd.methods.base import (
    UNLABELLED,
    Context,
    Method,
    StepLogits,
    kd_terms,
    masked_mean,
    per_row,
    soft_probabilities,
)
from raykd.methods.dpkd import true_class_confidence


def revise(teacher_probs: Tensor, targets: Tensor, eta: float) -> Tensor:
    """Revised labels b * p_t + (1 - b) * onehot(y) on labelled rows; unlabelled rows keep p_t."""
    labels = targets.clamp_min(0)
    gap = teacher_probs.max(dim=1).values - teacher_probs.gather(1, labels.unsqueeze(1)).squeeze(1)
    b = (eta / (gap + 1)).unsqueeze(1)
    revised = b * teacher_probs + (1 - b) * F.one_hot(labels, teacher_probs.shape[1]).float()
    return torch.where((targets == UNLABELLED).unsqueeze(1), teacher_probs, revised)


@dataclass(frozen=True)
class LabelRevisionKD(Method):
    """KD towards revised teacher labels, on a selected fraction of the transfer rows."""

    name = "label-revision"
    eta: Annotated[float, Field(gt=0, lt=1, description="revision strength eta in (0, 1)")] = 0.8
    fraction: Annotated[float, Field(gt=0, le=1, description="fraction of transfer rows distilled")] = 0.7
    temperature: Annotated[float, Field(gt=0, description="softening temperature T (> 0)")] = 4.0
    alpha: Annotated[float, Field(ge=0, le=1, description="weight of the KD term, in [0, 1]")] = 0.5

    def prepare(self, context: Context) -> dict[str, float]:
        index, targets = context.rows()
        probs = soft_probabilities([z[index] for z in context.teacher_logits()], 1.0)
        self.keep(selected=context.select(true_class_confidence(probs, targets), self.fraction))
        return {}

    def losses(self, logits: StepLogits, targets: Tensor, distill: Tensor) -> dict[str, Tensor]:
        selected = distill & per_row(self.kept("selected"), logits)
        target = revise(soft_probabilities(logits.teachers, self.temperature), targets, self.eta)
        terms = kd_terms(logits.students[0], target, targets, selected, self.temperature, self.alpha)
        return {**terms, "selected": masked_mean(selected.float(), distill)}
