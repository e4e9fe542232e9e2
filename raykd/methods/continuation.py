"""Continuation-KD (Jafari et al. 2022), which contains Annealing-KD (Jafari et al. 2021) as a special case.

loss = psi(e) * CE + (1 - psi(e)) * max(0, ||z_s - phi(T_e) z_t||^2 - m * phi(T_e)),  phi(T) = 1 - (T - 1) / T_max

The first n = round(anneal_fraction * epochs) epochs anneal: T_e steps down from T_max to 1 every
floor(n / T_max) epochs (at least one), so the student first matches a shrunk teacher, then the full
teacher logits. psi stays 0 for the first psi_warmup * n epochs and rises linearly to 1 at epoch n;
from there on training is cross-entropy only. The margin m ignores rows already within m * phi of
their target. The squared distance is summed over classes and averaged over distill rows; several
teachers give the mean of their logits. psi_warmup = 1 (psi a step at epoch n) with m = 0 is
Annealing-KD: annealed logit matching, then cross-entropy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch
from pydantic import Field
from torch import Tensor

from raykd.methods.base import Method, StepLogits, labelled_cross_entropy, masked_mean


def annealing_temperature(epoch: int, anneal_epochs: int, t_max: int) -> int:
    """T_e: T_max at epoch 0, one lower every floor(n / T_max) epochs, never below 1."""
    return max(1, t_max - epoch // max(1, anneal_epochs // t_max))


def phi(temperature: int, t_max: int) -> float:
    """Teacher scale 1 - (T - 1) / T_max: 1 / T_max at T = T_max, 1 at T = 1."""
    return 1 - (temperature - 1) / t_max


def psi(epoch: int, anneal_epochs: int, warmup: float) -> float:
    """Weight of cross-entropy: 0 until warmup * n, linear to 1 at epoch n, then 1."""
    start = warmup * anneal_epochs
    if epoch >= anneal_epochs:
        return 1.0
    if epoch < start:
        return 0.0
    return (epoch - start) / (anneal_epochs - start)


@dataclass(frozen=True)
class ContinuationKD(Method):
    """Continuation-KD: annealed, margin-hinged logit matching handing over to cross-entropy."""

    name = "continuation"
    t_max: Annotated[int, Field(ge=1, description="starting annealing temperature T_max (integer >= 1)")] = 4
    margin: Annotated[float, Field(ge=0, description="hinge margin m on the squared logit distance")] = 1.0
    anneal_fraction: Annotated[
        float, Field(gt=0, le=1, description="fraction of epochs n that anneal; CE only after them")
    ] = 0.7
    psi_warmup: Annotated[
        float, Field(ge=0, le=1, description="fraction of n before psi rises from 0 (1: a step = Annealing-KD)")
    ] = 0.5

    def start_epoch(self, epoch: int, epochs: int) -> None:
        anneal_epochs = max(1, round(self.anneal_fraction * epochs))
        temperature = annealing_temperature(epoch, anneal_epochs, self.t_max)
        self.keep(
            scale=phi(temperature, self.t_max), temperature=temperature, psi=psi(epoch, anneal_epochs, self.psi_warmup)
        )

    def losses(self, logits: StepLogits, targets: Tensor, distill: Tensor) -> dict[str, Tensor]:
        student, weight, scale = logits.students[0], self.kept("psi"), self.kept("scale")
        teacher = torch.stack(logits.teachers).mean(0)
        distance = (student - scale * teacher).pow(2).sum(dim=1)
        matching = masked_mean((distance - self.margin * scale).clamp_min(0), distill)
        ce = labelled_cross_entropy(student, targets)
        return {
            "loss": weight * ce + (1 - weight) * matching,
            "ce": ce,
            "matching": matching,
            "psi": torch.tensor(weight),
            "temperature": torch.tensor(float(self.kept("temperature"))),
        }
