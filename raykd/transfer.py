"""The one transfer entry every caller shares: a sweep trial, a Ray Train learner, a DML peer actor, a Flower client.

Each caller says what differs (its models, loss, batches, teacher, budget, and whether it re-seeds) in a
``TransferPlan``; ``transfer`` then always runs the same steps in the same order (``Method.prepare``, the reports
hook, the seed, ``fit``), so the RNG is consumed alike everywhere and a run is bit-identical to itself for the
same seed. Plain PyTorch: no Ray, Flower or MLflow.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from torch import nn

from raykd.config import TrainConfig
from raykd.engine import Batches, Exchange, OnEpoch, fit, seed_everything
from raykd.methods.base import Context, Method
from raykd.teacher.protocol import NoTeacher, TeacherLogits

Hook = TypeVar("Hook", bound=OnEpoch)


@dataclass
class TransferPlan:
    """One transfer run: ``models`` train jointly on ``method``'s loss over ``batches`` within ``budget``.

    ``context`` is what ``Method.prepare`` sees (None: nothing to prepare); ``seed`` re-seeds just before training
    (a trial's fixed start; None keeps the caller's RNG stream, as a Flower client's round does); ``exchange`` is a
    DML peer actor's step (``raykd.engine.fit``).
    """

    models: list[nn.Module]
    method: Method
    batches: Batches
    budget: TrainConfig
    teacher: TeacherLogits = field(default_factory=NoTeacher)
    context: Context | None = None
    seed: int | None = None
    exchange: Exchange | None = None


def silent(costs: dict[str, float]) -> OnEpoch:
    """A ``transfer`` reports hook that reports nothing."""
    return lambda epoch, losses: None


def transfer(plan: TransferPlan, reports: Callable[[dict[str, float]], Hook]) -> Hook:
    """Prepare the method, build the per-epoch hook from what preparing cost (``prepare_*``), seed, train.

    Returns the hook, so a caller reads what it kept (a trial's last report).
    """
    costs = plan.method.prepare(plan.context) if plan.context is not None else {}
    on_epoch = reports({f"prepare_{k}": v for k, v in costs.items()})
    if plan.seed is not None:
        seed_everything(plan.seed)
    budget = plan.budget
    fit(plan.models, plan.method, plan.batches, budget.epochs, budget.lr, budget.weight_decay, plan.teacher, on_epoch,
        budget.precision, plan.exchange)  # fmt: skip
    return on_epoch
