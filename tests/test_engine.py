"""The engine: deterministic on CPU, and good enough to reach the published MNIST-1D CNN accuracy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from raykd.config import DataConfig, ModelSpec
from raykd.data import load_dataset
from raykd.engine import Batch, NonFiniteLoss, TransferBatches, accuracy, fit, seed_everything
from raykd.methods.base import UNLABELLED
from raykd.methods.ce import CrossEntropy
from raykd.methods.kd import KnowledgeDistillation
from raykd.models import build_model
from raykd.teacher.protocol import TeacherLogits


def test_batches_pair_labelled_rows_with_pool_rows() -> None:
    x, y = torch.arange(100.0).unsqueeze(1), torch.arange(100) % 10
    batches = TransferBatches(x, y, np.arange(10), np.arange(50, 100), batch_size=8, distill_labelled=False, seed=0)
    assert len(batches) == 7  # one pass over the 50 pool rows; the 10 labelled rows cycle
    seen = torch.cat([b.index[b.targets == UNLABELLED] for b in batches])
    assert set(seen.tolist()) == set(range(50, 100)) and len(seen) == 7 * 8  # full batches: the last wraps
    for batch in batches:
        labelled = batch.targets != UNLABELLED
        assert (
            (batch.index[labelled] < 10).all() and not batch.distill[labelled].any() and batch.distill[~labelled].all()
        )
        assert torch.equal(batch.x.squeeze(1).long(), batch.index)


def _train_once(seed: int, cache_dir: Path) -> list[torch.Tensor]:
    data = load_dataset(DataConfig(dataset="digits"), cache_dir)
    seed_everything(seed)
    model = build_model(ModelSpec(name="cnn2d", width=8), data.input_shape, 10)
    batches = TransferBatches(data.train_x, data.train_y, np.arange(300), None, 32, False, seed)
    fit([model], CrossEntropy(), batches, epochs=2, lr=1e-2)
    return [p.detach().clone() for p in model.parameters()]


def test_training_is_deterministic_on_cpu(cache_dir: Path) -> None:
    first, second, other = _train_once(0, cache_dir), _train_once(0, cache_dir), _train_once(1, cache_dir)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))


class _Nan(TeacherLogits):
    """A broken teacher whose logits are all NaN."""

    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = logits

    def __call__(self, batch: Batch) -> tuple[list[torch.Tensor], None]:
        return [self.logits[: len(batch.x)]], None


class _Ahead(TeacherLogits):
    """Records which batch each step offers for prefetching, and which batch each step asks for."""

    ahead = 2

    def __init__(self) -> None:
        self.offered: list[int] = []
        self.asked: list[int] = []

    def prefetch(self, batch: Batch) -> None:
        self.offered.append(int(batch.index[0]))

    def __call__(self, batch: Batch) -> tuple[list[torch.Tensor], None]:
        self.asked.append(int(batch.index[0]))
        return [], None


def test_fit_offers_the_next_ahead_batches_for_prefetch() -> None:
    """With ``ahead = 2`` step i offers batches i+1 and i+2 (none past the epoch's end): two requests in flight."""
    x, y = torch.randn(40, 4), torch.randint(0, 3, (40,))
    teacher = _Ahead()
    fit(
        [torch.nn.Linear(4, 3)],
        CrossEntropy(),
        TransferBatches(x, y, np.arange(40), None, 10, True, 0),
        1,
        1e-2,
        teacher=teacher,
    )
    first = teacher.asked  # the first row of each of the epoch's 4 batches, in step order
    assert teacher.offered == [first[1], first[2], first[2], first[3], first[3]]


def test_non_finite_loss_names_epoch_and_term() -> None:
    x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    model = torch.nn.Linear(4, 3)
    teacher = torch.full((32, 3), float("nan"))
    batches = TransferBatches(x, y, np.arange(32), None, 16, True, 0)
    with pytest.raises(NonFiniteLoss, match="epoch 1: loss term 'loss'"):
        fit([model], KnowledgeDistillation(), batches, 1, 1e-2, teacher=_Nan(teacher))


@pytest.mark.slow
def test_cnn1d_reaches_published_mnist1d_accuracy(cache_dir: Path) -> None:
    """The reference 1-D CNN trained by raykd's engine on all of MNIST-1D: >= 90% (paper: 94%)."""
    torch.set_num_threads(2)
    data = load_dataset(DataConfig(dataset="mnist1d"), cache_dir)
    seed_everything(0)
    model = build_model(ModelSpec(name="cnn1d"), data.input_shape, 10)
    batches = TransferBatches(data.train_x, data.train_y, np.arange(len(data.train_y)), None, 100, False, 0)
    fit([model], CrossEntropy(), batches, epochs=60, lr=1e-2)
    assert accuracy(model, data.test_x, data.test_y) >= 0.90
