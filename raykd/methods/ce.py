"""No distillation: cross-entropy only, the "same extra training" baseline every table needs."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from raykd.methods.base import Method, StepLogits, labelled_cross_entropy


@dataclass(frozen=True)
class CrossEntropy(Method):
    """Continue training the student on its labelled transfer rows, ignoring every teacher."""

    name = "ce"
    teachers = "unused"

    def losses(self, logits: StepLogits, targets: Tensor, distill: Tensor) -> dict[str, Tensor]:
        ce = labelled_cross_entropy(logits.students[0], targets)
        return {"loss": ce, "ce": ce}
