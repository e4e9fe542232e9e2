"""One trial of a study: take a seed's pre-trained node models and transfer knowledge into the student.

Plain PyTorch; ``raykd.tune`` runs many of these as Ray Tune trials. Metrics are accuracies in
[0, 1]; ``gain`` is the student's global test accuracy after transfer minus before.
"""

from __future__ import annotations

import copy
import resource
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from raykd.config import ExperimentConfig
from raykd.engine import (
    InlineReferences,
    References,
    TransferBatches,
    accuracy,
    fit,
    method_context,
    pick_device,
    seed_everything,
)
from raykd.methods.base import Method
from raykd.nodes import Setup, load_node, node_path, prepare

Report = Callable[[dict[str, Any]], None]
#: Metrics that measure the machine, not the method: they differ between identical runs. ``epoch_seconds`` is the
#: epoch's training alone and ``eval_seconds`` the evaluation after it, so a trial's time outside both (Tune's
#: reporting, set-up) can be told apart (benchmarks/sweep_concurrency.py).
TIMING_METRICS = ("epoch_seconds", "eval_seconds", "samples_per_s", "peak_rss_mb")


def student_metrics(model: torch.nn.Module, setup: Setup, student: int) -> dict[str, float]:
    data, local = setup.dataset, setup.nodes[student]
    return {
        "val_acc": accuracy(model, data.train_x[setup.splits.val], data.train_y[setup.splits.val]),
        "local_val_acc": accuracy(model, data.train_x[local.val], data.train_y[local.val]),
        "test_acc": accuracy(model, data.test_x, data.test_y),
    }


def references_for(
    cfg: ExperimentConfig, setup: Setup, seed: int, method: Method, models: dict[int, nn.Module], server: Any = None
) -> References:
    """The frozen logits a method needs, from where ``teacher.mode`` says: the method never knows which."""
    frozen = cfg.transfer.teachers if method.teachers == "frozen" else []
    initial = cfg.transfer.student if method.uses_initial_student else None
    if cfg.teacher.mode == "cache":
        from raykd.teacher.cache import CachedReferences, node_logits

        return CachedReferences(
            [node_logits(cfg, setup, n, seed)[0] for n in frozen],
            node_logits(cfg, setup, initial, seed)[0] if initial is not None else None,
        )
    if cfg.teacher.mode == "server":
        from raykd.teacher.cache import file_digest
        from raykd.teacher.server import ServedReferences

        keys = [file_digest(node_path(cfg, n, seed)) for n in frozen]
        initial_key = file_digest(node_path(cfg, initial, seed)) if initial is not None else None
        return ServedReferences(server, keys, initial_key, cfg.teacher.prefetch)
    return InlineReferences(
        [models[n] for n in frozen], copy.deepcopy(models[initial]) if initial is not None else None
    )


def cached_teacher_logits(cfg: ExperimentConfig, setup: Setup, seed: int) -> Callable[[], list[torch.Tensor]] | None:
    """In cache mode, what ``Method.prepare`` reads as the teachers' logits on the training split: the cache."""
    if cfg.teacher.mode != "cache":
        return None
    from raykd.teacher.cache import node_logits

    return lambda: [
        torch.from_numpy(np.array(node_logits(cfg, setup, n, seed)[0], dtype=np.float32)) for n in cfg.transfer.teachers
    ]


def shard(index: np.ndarray, rank: int, world: int, seed: int) -> np.ndarray:
    """Equal-sized, disjoint shards of a seeded shuffle: every data-parallel worker takes the same step count."""
    if world == 1:
        return index
    per = len(index) // world
    return np.sort(np.random.default_rng(seed).permutation(index)[rank * per : (rank + 1) * per])


def run_trial(
    cfg: ExperimentConfig,
    label: str,
    setting: dict[str, Any],
    seed: int,
    report: Report = lambda m: None,
    server: Any = None,
    rank: int = 0,
    world: int = 1,
    wrap: Callable[[nn.Module], nn.Module] = lambda model: model,
    device: torch.device | None = None,
) -> dict[str, Any]:
    """Transfer into the student with method row ``label`` at ``setting``; report after every epoch.

    ``server`` is a TeacherServer actor handle, used when ``teacher.mode`` is ``server``. A
    data-parallel learner passes its ``rank`` among ``world`` workers (it trains on its shard of
    the transfer set) and ``wrap`` (e.g. DDP) for the trainable models; metrics are computed on
    the full evaluation splits by every worker alike. Models train on ``device`` (default: CUDA when
    ``tune.gpus_per_trial`` reserves GPUs, else the CPU); data and cached logits stay on the CPU.
    """
    method = cfg.method(label).build(setting)
    setup = prepare(cfg, seed)
    device = device or pick_device(cfg.tune.gpus_per_trial)
    models = {n: load_node(cfg, setup, n, seed).to(device) for n in cfg.node_ids()}
    student = models[cfg.transfer.student]
    before = student_metrics(student, setup, cfg.transfer.student)
    if method.teachers == "peers":
        trainable, references = [wrap(models[n]) for n in cfg.node_ids()], References()
    else:
        trainable, references = [wrap(student)], references_for(cfg, setup, seed, method, models, server)

    data, budget = setup.dataset, cfg.transfer.train
    pool = shard(setup.splits.pool, rank, world, seed) if cfg.transfer.set != "local" else None
    batches = TransferBatches(
        data.train_x,
        data.train_y,
        shard(setup.nodes[cfg.transfer.student].train, rank, world, seed),
        pool,
        budget.batch_size,
        distill_labelled=cfg.transfer.set != "pool",
        seed=seed + rank,
    )
    teachers = [models[n] for n in cfg.transfer.teachers]
    context = method_context(batches, teachers, data.num_classes, seed, cached_teacher_logits(cfg, setup, seed))
    costs = {f"prepare_{k}": v for k, v in method.prepare(context).items()}
    final: dict[str, Any] = {}
    epoch_started = [time.perf_counter()]

    def on_epoch(epoch: int, losses: dict[str, float]) -> None:
        seconds = time.perf_counter() - epoch_started[0]
        after = student_metrics(student, setup, cfg.transfer.student)
        evaluated = time.perf_counter() - epoch_started[0] - seconds
        final.clear()
        final.update(
            epoch=epoch + 1,
            epoch_seconds=seconds,
            eval_seconds=evaluated,
            samples_per_s=batches.rows_per_epoch / seconds,
            peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            **after,
            **{f"{k}_before": v for k, v in before.items()},
            gain=after["test_acc"] - before["test_acc"],
            val_gain=after["val_acc"] - before["val_acc"],
            **{f"loss_{k}" if k != "loss" else k: v for k, v in losses.items()},
            **costs,
        )
        report(dict(final))
        epoch_started[0] = time.perf_counter()

    seed_everything(seed)
    fit(trainable, method, batches, budget.epochs, budget.lr, budget.weight_decay, references, on_epoch)
    return final
