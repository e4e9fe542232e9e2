"""Probe teachers (Tang et al. 2020, "Understanding and Improving Knowledge Distillation").

Each probe keeps one kind of a teacher's knowledge, so a user can see which kind helps a student:
- ``label-smoothing`` (universe): (1 - eps) * onehot(y) + eps / K, no knowledge of the teacher at all;
- ``class-similarity`` (domain): row y of softmax(cos(w_i, w_j) / tau), the similarity of the
  teacher's final-layer class weight vectors (mean over teachers);
- ``kd-pt`` (instance, partial teacher): the teacher's probability p_t^T[y] on the true class, the
  rest 1 - p_t^T[y] spread uniformly over the other K - 1 classes.
loss = (1 - alpha) * CE + alpha * T^2 * KL(probe || p_s^T) (T = 1 except for kd-pt). Unlabelled pool
rows have no y: there the teacher's top class stands in for it.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from raykd.methods.base import (
    Context,
    Method,
    StepLogits,
    kd_terms,
    pseudo_targets,
    soft_probabilities,
)


@dataclass(frozen=True)
class ProbeTeacher(Method):
    """Shared loss of the probes: KD towards a probe distribution built from the (pseudo-)label."""

    alpha: Annotated[float, Field(ge=0, le=1, description="weight of the probe's KD term, in [0, 1]")] = 0.5

    @property
    def kd_temperature(self) -> float:
        return 1.0

    @abstractmethod
    def target(self, teacher_probs: Tensor, classes: Tensor) -> Tensor:
        """The probe distribution per row, from the teacher's probabilities at ``kd_temperature`` and class ids."""

    def losses(self, logits: StepLogits, targets: Tensor, distill: Tensor) -> dict[str, Tensor]:
        student, t = logits.students[0], self.kd_temperature
        teacher_probs = soft_probabilities(logits.teachers, t)
        target = self.target(teacher_probs, pseudo_targets(targets, teacher_probs))
        return kd_terms(student, target, targets, distill, t, self.alpha)


@dataclass(frozen=True)
class LabelSmoothingProbe(ProbeTeacher):
    """Universe probe: label smoothing, (1 - eps) onehot(y) + eps / K."""

    name = "label-smoothing"
    epsilon: Annotated[float, Field(ge=0, le=1, description="smoothing mass eps spread over all K classes")] = 0.1

    def target(self, teacher_probs: Tensor, classes: Tensor) -> Tensor:
        k = teacher_probs.shape[1]
        return (1 - self.epsilon) * F.one_hot(classes, k).float() + self.epsilon / k


def final_layer(model: nn.Module, num_classes: int) -> nn.Linear:
    """The model's last linear layer with one output per class: its rows are the class weight vectors."""
    heads = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == num_classes]
    if not heads:
        raise ValueError(f"class-similarity probe: the teacher has no final nn.Linear with {num_classes} outputs")
    return heads[-1]


def class_similarity(weights: Tensor, temperature: float) -> Tensor:
    """softmax(cos(w_i, w_j) / tau) per row i: a K x K matrix of soft labels."""
    unit = F.normalize(weights, dim=1)
    return F.softmax(unit @ unit.T / temperature, dim=1)


@dataclass(frozen=True)
class ClassSimilarityProbe(ProbeTeacher):
    """Domain probe: soft labels from the similarity of the teacher's final-layer class weights."""

    name = "class-similarity"
    temperature: Annotated[float, Field(gt=0, description="softmax temperature tau over cosine similarities")] = 0.2

    def prepare(self, context: Context) -> dict[str, float]:
        teachers = context.teacher_models()
        if not teachers:
            raise ValueError("class-similarity probe needs a teacher model (its final-layer weights)")
        matrices = [
            class_similarity(final_layer(t, context.num_classes).weight.detach().float(), self.temperature)
            for t in teachers
        ]
        self.keep(similarity=torch.stack(matrices).mean(0))
        return {}

    def target(self, teacher_probs: Tensor, classes: Tensor) -> Tensor:
        return self.kept("similarity")[classes]


@dataclass(frozen=True)
class PartialTeacherProbe(ProbeTeacher):
    """Instance probe KD-pt: the teacher's true-class probability, the rest spread uniformly."""

    name = "kd-pt"
    temperature: Annotated[float, Field(gt=0, description="softening temperature T (> 0)")] = 4.0

    @property
    def kd_temperature(self) -> float:
        return self.temperature

    def target(self, teacher_probs: Tensor, classes: Tensor) -> Tensor:
        k = teacher_probs.shape[1]
        on_true = teacher_probs.gather(1, classes.unsqueeze(1))
        rest = (1 - on_true) / (k - 1)
        return torch.where(F.one_hot(classes, k).bool(), on_true, rest)
