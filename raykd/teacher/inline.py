"""``teacher.mode: inline``: frozen models run in this process on every batch; the baseline of the other sources."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from raykd.engine import Batch, device_of, predict
from raykd.teacher.protocol import FrozenLogits, TeacherLogits


class InlineTeacher(TeacherLogits):
    """Frozen models run without gradients on every batch; ``train_x`` is the training split ``train_logits`` reads
    (a source without one has no method to prepare)."""

    def __init__(self, teachers: list[nn.Module], initial: nn.Module | None = None, train_x: Tensor | None = None):
        self.teachers, self.initial, self.train_x = teachers, initial, train_x
        for model in [*teachers, *([initial] if initial else [])]:
            model.eval().requires_grad_(False)

    @torch.no_grad()
    def __call__(self, batch: Batch) -> FrozenLogits:
        frozen = [*self.teachers, *([self.initial] if self.initial else [])]
        x = batch.x.to(device_of(frozen[0])) if frozen else batch.x
        return [t(x) for t in self.teachers], (self.initial(x) if self.initial else None)

    def train_logits(self) -> list[Tensor]:
        assert self.train_x is not None, "InlineTeacher: train_logits needs the training split (train_x)"
        return [predict(t, self.train_x) for t in self.teachers]
