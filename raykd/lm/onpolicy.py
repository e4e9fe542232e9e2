"""On-policy distillation (GKD, Agarwal et al. 2024): a fraction of each batch is the student's own text.

For a fraction ``lambda`` of a batch's labelled sequences, the student continues the first half of the
sequence with its own samples (temperature 1); those rows become distillation-only rows (targets
``UNLABELLED``, every position distilled), so the teacher scores text the student actually produces and
cross-entropy stays on real text. It is a data step beside the others: the method (``gkd``) sees only
logit rows, as every method does. The teacher must see the new text, so it runs inline or as a server
(the offline cache holds logits of the corpus only).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import torch
from torch import nn

from raykd.engine import Batch, TransferBatches
from raykd.lm.generate import continue_ids
from raykd.methods.base import UNLABELLED


class OnPolicyBatches:
    """``batches`` with a ``fraction`` of each step's labelled sequences replaced by the student's continuations."""

    def __init__(self, batches: TransferBatches, student: nn.Module, fraction: float, seed: int) -> None:
        self.batches, self.student, self.fraction = batches, student, fraction
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.batches)

    def use_device(self, device: torch.device) -> None:
        """Kept on the CPU: sampling edits each batch there, and ``fit`` moves the step's rows to ``device``."""

    def __iter__(self) -> Iterator[Batch]:
        for batch in self.batches:
            yield self._sampled(batch)

    def _sampled(self, batch: Batch) -> Batch:
        seqs, seq_len = batch.x.shape
        labelled = batch.targets.view(seqs, seq_len)[:, 0] != UNLABELLED
        count = round(self.fraction * int(labelled.sum()))
        if count == 0:
            return batch
        chosen = labelled.nonzero().flatten()[torch.randperm(int(labelled.sum()), generator=self.generator)[:count]]
        prompt = batch.x[chosen, : seq_len // 2]
        text = continue_ids(self.student, prompt, seq_len - seq_len // 2, seq_len, 1.0, self.generator)
        x, targets, distill = batch.x.clone(), batch.targets.view(seqs, seq_len).clone(), batch.distill.view(seqs, -1)
        x[chosen] = text.to(x.dtype)
        targets[chosen] = UNLABELLED
        distill = distill.clone()
        distill[chosen] = True
        return replace(batch, x=x, targets=targets.view(-1), distill=distill.view(-1))
