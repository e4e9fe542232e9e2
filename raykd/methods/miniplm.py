"""Difference sampling (MiniPLM, Gu et al. 2024), adapted from language modelling to classification.

Teacher inference happens once, offline (from the logit cache when the run has one). Each transfer
row is scored by how much better the large teacher does on it than a small reference model:
  score_i = CE(reference(x_i), y_i) - CE(teacher(x_i), y_i)
(y_i is the teacher's top class on unlabelled rows). The reference is a one-hidden-layer MLP (32
units) trained briefly on the student's labelled rows: the knowledge a small model gets on its own.
High scores mark the rows where the teacher knows what a small model does not; MiniPLM keeps those
and drops both easy rows (both right) and noise (both wrong). The student distils on the top
``fraction`` of rows by score (labelled and pool rows each ranked on their own) and keeps
cross-entropy on all labelled rows:
loss = (1 - alpha) * CE + alpha * T^2 * KL(p_t^T || p_s^T) over the selected rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
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
    masked_mean,
    per_row,
    pseudo_targets,
    soft_probabilities,
    train_helper,
)

REFERENCE_WIDTH = 32


def reference_model(inputs: int, num_classes: int) -> nn.Module:
    """The small reference: one hidden layer of REFERENCE_WIDTH units over flattened inputs."""
    return nn.Sequential(nn.Linear(inputs, REFERENCE_WIDTH), nn.ReLU(), nn.Linear(REFERENCE_WIDTH, num_classes))


def difference_scores(teacher_probs: Tensor, reference_logits: Tensor, classes: Tensor) -> Tensor:
    """Reference loss minus teacher loss per row, both cross-entropy on ``classes``."""
    teacher_loss = -teacher_probs.gather(1, classes.unsqueeze(1)).squeeze(1).clamp_min(1e-12).log()
    return F.cross_entropy(reference_logits, classes, reduction="none") - teacher_loss


@dataclass(frozen=True)
class DifferenceSamplingKD(Method):
    """KD on the rows where the teacher most outdoes a small reference model."""

    name = "miniplm"
    fraction: Annotated[float, Field(gt=0, le=1, description="fraction of transfer rows distilled")] = 0.5
    reference_epochs: Annotated[int, Field(ge=1, description="training epochs of the small reference model")] = 20
    temperature: Annotated[float, Field(gt=0, description="softening temperature T (> 0)")] = 4.0
    alpha: Annotated[float, Field(ge=0, le=1, description="weight of the KD term, in [0, 1]")] = 0.5

    def prepare(self, context: Context) -> dict[str, float]:
        if len(context.labelled) == 0:
            raise ValueError("difference sampling trains its reference model on labelled rows; there are none")
        x = context.x.flatten(1)
        labelled = context.labelled
        reference, seconds = train_helper(
            partial(reference_model, x.shape[1], context.num_classes),
            x[labelled],
            context.y[labelled],
            F.cross_entropy,
            self.reference_epochs,
            context.seed,
        )
        index, targets = context.rows()
        teacher_probs = soft_probabilities([z[index] for z in context.teacher_logits()], 1.0)
        with torch.no_grad():
            scores = difference_scores(teacher_probs, reference(x[index]), pseudo_targets(targets, teacher_probs))
        self.keep(selected=context.select(scores, self.fraction))
        return {"reference_seconds": seconds, "reference_params": float(sum(p.numel() for p in reference.parameters()))}

    def losses(self, logits: StepLogits, targets: Tensor, distill: Tensor) -> dict[str, Tensor]:
        selected = distill & per_row(self.kept("selected"), logits)
        target = soft_probabilities(logits.teachers, self.temperature)
        terms = kd_terms(logits.students[0], target, targets, selected, self.temperature, self.alpha)
        return {**terms, "selected": masked_mean(selected.float(), distill)}
