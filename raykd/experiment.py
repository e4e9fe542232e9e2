"""One trial of a study: take a seed's pre-trained node models and transfer knowledge into the student.

Plain PyTorch; ``raykd.tune`` runs many of these as Ray Tune trials. Metrics are accuracies in
[0, 1]; ``gain`` is the student's global test accuracy after transfer minus before.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch

from raykd.config import ExperimentConfig
from raykd.engine import TransferBatches, accuracy, fit, frozen_references, no_references, seed_everything
from raykd.nodes import Setup, load_node, prepare

Report = Callable[[dict[str, Any]], None]


def student_metrics(model: torch.nn.Module, setup: Setup, student: int) -> dict[str, float]:
    data, local = setup.dataset, setup.nodes[student]
    return {
        "val_acc": accuracy(model, data.train_x[setup.splits.val], data.train_y[setup.splits.val]),
        "local_val_acc": accuracy(model, data.train_x[local.val], data.train_y[local.val]),
        "test_acc": accuracy(model, data.test_x, data.test_y),
    }


def run_trial(
    cfg: ExperimentConfig, label: str, setting: dict[str, Any], seed: int, report: Report = lambda m: None
) -> dict[str, Any]:
    """Transfer into the student with method row ``label`` at ``setting``; report after every epoch."""
    method = cfg.method(label).build(setting)
    setup = prepare(cfg, seed)
    student = load_node(cfg, setup, cfg.transfer.student, seed)
    teachers = [load_node(cfg, setup, t, seed) for t in cfg.transfer.teachers]
    before = student_metrics(student, setup, cfg.transfer.student)

    if method.teachers == "peers":
        trainable, references = [student, *teachers], no_references
    else:
        initial = copy.deepcopy(student) if method.uses_initial_student else None
        frozen = teachers if method.teachers == "frozen" else []
        trainable, references = [student], frozen_references(frozen, initial)

    data, budget = setup.dataset, cfg.transfer.train
    pool = setup.splits.pool if cfg.transfer.set != "local" else None
    batches = TransferBatches(
        data.train_x,
        data.train_y,
        setup.nodes[cfg.transfer.student].train,
        pool,
        budget.batch_size,
        distill_labelled=cfg.transfer.set != "pool",
        seed=seed,
    )
    final: dict[str, Any] = {}

    def on_epoch(epoch: int, losses: dict[str, float]) -> None:
        after = student_metrics(student, setup, cfg.transfer.student)
        final.clear()
        final.update(
            epoch=epoch + 1,
            **after,
            **{f"{k}_before": v for k, v in before.items()},
            gain=after["test_acc"] - before["test_acc"],
            val_gain=after["val_acc"] - before["val_acc"],
            **{f"loss_{k}" if k != "loss" else k: v for k, v in losses.items()},
        )
        report(dict(final))

    seed_everything(seed)
    fit(trainable, method, batches, budget.epochs, budget.lr, budget.weight_decay, references, on_epoch)
    return final
