"""Teacher-free soft labels (ReffAKD, Doshi & Kim 2024): a small autoencoder replaces the large teacher.

Before training, an MLP autoencoder (input -> hidden -> latent -> hidden -> input, MSE) learns the
inputs of the student's transfer set (labelled and pool rows). Each class's centroid in latent space
is the mean code of its labelled rows; soft labels are S = softmax(cos(c_i, c_j) / tau) per class i.
loss = (1 - alpha) * CE + alpha * T^2 * KL(S[y] || p_s^T), like KD with S[y] as the teacher.
Unlabelled pool rows take the class of their nearest centroid (cosine). Classes absent from the
labelled rows have no centroid and get no soft-label mass: the autoencoder knows only what the node
has. ``prepare`` reports the autoencoder's cost (parameters, training seconds) beside the teacher's
parameter count, so a run records what dropping the teacher saves.
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
    per_row,
    train_helper,
)

HIDDEN = 32


def autoencoder(inputs: int, latent: int) -> nn.Sequential:
    """Encoder (``[0]``) and decoder (``[1]``) MLPs over flattened inputs."""
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(inputs, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, latent))
    decoder = nn.Sequential(nn.Linear(latent, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, inputs))
    return nn.Sequential(encoder, decoder)


def class_centroids(codes: Tensor, labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """Unit-length mean code per class (zero for a class without rows), and which classes have rows."""
    sums = torch.zeros(num_classes, codes.shape[1]).index_add_(0, labels, codes)
    return F.normalize(sums, dim=1), torch.bincount(labels, minlength=num_classes) > 0


def latent_soft_labels(centroids: Tensor, present: Tensor, temperature: float) -> Tensor:
    """Row i: softmax over present classes j of cos(c_i, c_j) / tau; absent classes get no mass.

    An absent class's own row is uniform over the present classes; no row ever uses it.
    """
    return F.softmax((centroids @ centroids.T / temperature).masked_fill(~present, -torch.inf), dim=1)


@dataclass(frozen=True)
class ReffAKD(Method):
    """KD from autoencoder class-similarity soft labels: no teacher model at all."""

    name = "reffakd"
    teachers = "unused"
    latent: Annotated[int, Field(ge=2, description="autoencoder latent size")] = 16
    ae_epochs: Annotated[int, Field(ge=1, description="autoencoder training epochs")] = 20
    similarity_temperature: Annotated[float, Field(gt=0, description="tau over centroid cosine similarities")] = 0.2
    temperature: Annotated[float, Field(gt=0, description="softening temperature T (> 0)")] = 4.0
    alpha: Annotated[float, Field(ge=0, le=1, description="weight of the KD term, in [0, 1]")] = 0.5

    def prepare(self, context: Context) -> dict[str, float]:
        if len(context.labelled) == 0:
            raise ValueError("ReffAKD needs labelled rows to place class centroids")
        index = context.rows()[0]
        inputs = context.x[index].flatten(1)
        build = partial(autoencoder, inputs.shape[1], self.latent)
        model, seconds = train_helper(build, inputs, inputs, F.mse_loss, self.ae_epochs, context.seed)
        with torch.no_grad():
            codes = model[0](inputs)
        labels = context.y[context.labelled]
        centroids, present = class_centroids(codes[: len(labels)], labels, context.num_classes)
        soft = latent_soft_labels(centroids, present, self.similarity_temperature)
        nearest = (F.normalize(codes, dim=1) @ centroids.T).masked_fill(~present, -torch.inf).argmax(dim=1)
        class_of = torch.zeros(len(context.x), dtype=torch.int64)
        class_of[index] = torch.cat([labels, nearest[len(labels) :]])
        self.keep(soft=soft, class_of=class_of)
        return {
            "ae_seconds": seconds,
            "ae_params": float(sum(p.numel() for p in model.parameters())),
            "teacher_params": float(sum(p.numel() for t in context.teacher_models() for p in t.parameters())),
        }

    def losses(self, logits: StepLogits, targets: Tensor, distill: Tensor) -> dict[str, Tensor]:
        classes = per_row(self.kept("class_of"), logits)
        target = self.kept("soft").to(classes.device)[classes]  # each row's class soft label (a K x K table)
        return kd_terms(logits.students[0], target, targets, distill, self.temperature, self.alpha)
