"""Federated mutual learning's loss (Shen et al. 2020), as a raykd method over two peers.

Peer 0 is the client's private model (the paper's "local" model), peer 1 the shared meme model; each learns
from the labels and from the other (detached):
  L_local = alpha * CE(local) + (1 - alpha) * T^2 KL(p_meme^T || p_local^T)
  L_meme  = beta  * CE(meme)  + (1 - beta)  * T^2 KL(p_local^T || p_meme^T)
The paper's formula is T = 1. Summing both and stepping once updates each peer by its own loss, as
in raykd's DML. Not registered in ``raykd.methods.METHODS`` (it only makes sense inside a federation):
strategy fml's first method row names it, ``{name: "federated.fml:FederatedMutualLearning", alpha, beta}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from raykd.methods.base import Method, StepLogits, distillation_kl, labelled_cross_entropy, masked_mean


@dataclass(frozen=True)
class FederatedMutualLearning(Method):
    """Private model (peer 0) and meme model (peer 1) teach each other on the client's data."""

    name = "fml"
    teachers = "peers"
    alpha: Annotated[float, Field(ge=0, le=1, description="private model's CE weight")] = 0.5
    beta: Annotated[float, Field(ge=0, le=1, description="meme model's CE weight")] = 0.5
    temperature: Annotated[float, Field(gt=0, description="softening temperature; 1 is the paper")] = 1.0

    def losses(self, logits: StepLogits, targets: Tensor, distill: Tensor) -> dict[str, Tensor]:
        local, meme = logits.students
        t = self.temperature
        p_local, p_meme = (F.softmax(z.detach() / t, dim=1) for z in (local, meme))
        ce_local, ce_meme = labelled_cross_entropy(local, targets), labelled_cross_entropy(meme, targets)
        kl_local = masked_mean(distillation_kl(p_meme, local, t), distill)
        kl_meme = masked_mean(distillation_kl(p_local, meme, t), distill)
        private_loss = self.alpha * ce_local + (1 - self.alpha) * kl_local
        meme_loss = self.beta * ce_meme + (1 - self.beta) * kl_meme
        return {
            "loss": private_loss + meme_loss,
            "private_loss": private_loss,
            "meme_loss": meme_loss,
            "ce": ce_local,
            "kl": kl_local,
        }
