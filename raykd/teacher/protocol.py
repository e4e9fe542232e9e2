"""The one protocol every teacher-logit source speaks, so ``raykd.engine.fit`` never knows which one it has.

It imports nothing of raykd at run time: the engine depends on it, and every source depends on the engine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import torch
from torch import Tensor

if TYPE_CHECKING:
    from raykd.engine import Batch

#: One step's frozen logits: each teacher's, and the initial student's (DP-KD) or None.
FrozenLogits = tuple[list[Tensor], Tensor | None]


class TeacherLogits(Protocol):
    """Frozen teacher logits for each batch (and the initial student's, for DP-KD), wherever they come from.

    A source subclasses this to take the defaults it does not need: no prefetching, logits moved to the training
    device by ``fit``, no teacher. ``prefetch`` lets a remote source overlap the requests of the next ``ahead``
    batches with the student's current step (more than one keeps a teacher about as slow as the student, or
    jittery, from making it wait).
    """

    ahead: int = 1  # upcoming batches ``fit`` offers to ``prefetch`` at each step

    def prefetch(self, batch: Batch) -> None:
        """Start fetching ``batch``'s logits early; the default has nothing to start."""

    def use_device(self, device: torch.device) -> None:
        """Where the models train: a source that builds logits (the top-k cache expands its rows) builds them there;
        the default's logits are moved there by ``fit``."""

    def __call__(self, batch: Batch) -> FrozenLogits:
        """The teachers' (and the initial student's) logits on ``batch``."""
        return [], None

    def train_logits(self) -> list[Tensor]:
        """The teachers' logits on the whole training split, for ``Method.prepare`` (on the CPU)."""
        return []


class NoTeacher(TeacherLogits):
    """No frozen logits: plain training, and mutual learning (its teachers are trained alongside)."""
