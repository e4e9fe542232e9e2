"""Standard knowledge distillation (Hinton et al. 2015).

loss = (1 - alpha) * CE(y, p_s) + alpha * T^2 * KL(p_t^T || p_s^T)

Convention: ``alpha`` weights the distillation term (as in the reference study), so alpha = 0 is
plain cross-entropy and alpha = 1 is pure distillation. torchdistill's ``KDLoss`` uses the opposite
convention (its alpha weights the hard-label term). With several teachers, p_t^T is the mean of
their softened probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from pydantic import Field
from torch import Tensor

from raykd.methods.base import Method, StepLogits, kd_terms, soft_probabilities


@dataclass(frozen=True)
class KnowledgeDistillation(Method):
    """Hinton KD with temperature T and KD weight alpha."""

    name = "kd"
    temperature: Annotated[float, Field(gt=0, description="softening temperature T (> 0)")] = 4.0
    alpha: Annotated[float, Field(ge=0, le=1, description="weight of the KD term, in [0, 1]")] = 0.5

    def losses(self, logits: StepLogits, targets: Tensor, distill: Tensor) -> dict[str, Tensor]:
        target = soft_probabilities(logits.teachers, self.temperature)
        return kd_terms(logits.students[0], target, targets, distill, self.temperature, self.alpha)
