"""Deep mutual learning (Zhang et al. 2018) with K peers.

Each peer k minimises L_k = CE_k + T^2 / (K-1) * sum_{l != k} KL(p_l^T || p_k^T), where the other
peers' probabilities are treated as constants (detached). The peers are the student node and the
teacher nodes, all trainable; summing the L_k and stepping once updates every peer by its own loss.
T = 1 gives the formula of the paper.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from raykd.methods.base import (
    Method,
    StepLogits,
    distillation_kl,
    labelled_cross_entropy,
    masked_mean,
)


@dataclass(frozen=True)
class DeepMutualLearning(Method):
    """K peers that teach each other; the student is peer 0."""

    name = "dml"
    teachers = "peers"
    temperature: Annotated[float, Field(gt=0, description="softening temperature T (> 0); 1 is the paper")] = 1.0

    def losses(self, logits: StepLogits, targets: Tensor, distill: Tensor) -> dict[str, Tensor]:
        peers = logits.students
        if len(peers) < 2:
            raise ValueError("deep mutual learning needs at least two peers (student + one teacher node)")
        probs = [F.softmax(z.detach() / self.temperature, dim=1) for z in peers]
        ce_terms, kl_terms = [], []
        for k, z in enumerate(peers):
            kl = sum(distillation_kl(p, z, self.temperature) for j, p in enumerate(probs) if j != k)
            ce_terms.append(labelled_cross_entropy(z, targets))
            kl_terms.append(masked_mean(kl, distill) / (len(peers) - 1))
        ce, kl = sum(ce_terms), sum(kl_terms)
        return {"loss": ce + kl, "ce": ce_terms[0], "kl": kl_terms[0]}
