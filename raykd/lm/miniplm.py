"""MiniPLM's difference sampling at its own level (Gu et al. 2024): whole documents chosen once, before transfer.

Each transfer document is scored by how much more likely the teacher finds its text than a small
reference model does, per token:
  score_d = mean over d's real tokens of [log p_teacher(token) - log p_reference(token)],
with several teachers' probabilities averaged. The reference is the student's own starting model: the
knowledge a small model already has. The top ``transfer.miniplm`` fraction of the student's documents
and, separately, of the pool's are kept; the transfer runs on their sequences only. Both models run once,
in this process (whatever ``teacher.mode``), like MiniPLM's offline teacher pass.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from raykd.engine import device_of
from raykd.methods.base import UNLABELLED
from raykd.nodes import Setup


@torch.no_grad()
def token_log_likelihood(models: list[nn.Module], x: Tensor, y: Tensor, batch_size: int = 64) -> Tensor:
    """Per-sequence summed log-probability of the real next tokens under the mean of ``models``' probabilities."""
    sums = []
    for i in range(0, len(x), batch_size):
        ids, targets = x[i : i + batch_size], y[i : i + batch_size]
        probs = torch.stack([F.softmax(m.eval()(ids.to(device_of(m))).float().cpu(), -1) for m in models]).mean(0)
        picked = probs.gather(-1, targets.clamp_min(0)[..., None]).squeeze(-1).clamp_min(1e-12).log()
        sums.append((picked * (targets != UNLABELLED)).sum(1))
    return torch.cat(sums)


def top_documents(rows: np.ndarray, documents: np.ndarray, scores: dict[int, float], fraction: float) -> np.ndarray:
    """The ``rows`` whose documents are in the top ``fraction`` of the documents among them (at least one)."""
    present = np.unique(documents[rows])
    ranked = sorted(present.tolist(), key=lambda d: scores[d], reverse=True)
    kept = ranked[: max(1, round(fraction * len(ranked)))]
    return rows[np.isin(documents[rows], kept)]


def difference_sampled(
    setup: Setup, student_id: int, teachers: list[nn.Module], reference: nn.Module, fraction: float
) -> Setup:
    """``setup`` with the student's training rows and the pool cut to their top documents by score."""
    data, local = setup.dataset, setup.nodes[student_id]
    assert data.documents is not None
    rows = np.concatenate([local.train, setup.splits.pool])
    x, y = data.train_x[rows], data.train_y[rows]
    gain = token_log_likelihood(teachers, x, y) - token_log_likelihood([reference], x, y)
    counts = (y != UNLABELLED).sum(1)
    docs = data.documents[rows]
    scores = {int(d): float(gain[docs == d].sum() / counts[docs == d].sum().clamp_min(1)) for d in np.unique(docs)}
    nodes = list(setup.nodes)
    nodes[student_id] = replace(local, train=top_documents(local.train, data.documents, scores, fraction))
    pool = (
        top_documents(setup.splits.pool, data.documents, scores, fraction)
        if len(setup.splits.pool)
        else setup.splits.pool
    )
    return replace(setup, splits=replace(setup.splits, pool=pool), nodes=nodes)
