"""One trial of a study: take a seed's pre-trained node models and transfer knowledge into the student.

Plain PyTorch: the sweep runs many of these as Ray Tune trials, and a notebook can call ``run_trial``
directly. Frozen logits come from ``raykd.teacher.source.teacher_logits`` (the one place that reads
``teacher.mode``); the training itself is ``raykd.transfer.transfer``, shared with every other caller.
Metrics are accuracies in [0, 1]; ``gain`` is the student's global test accuracy after minus before. A
language model's accuracies are next-token accuracies; it also reports perplexities (``*_ppl``) and
cross-entropies (``*_nll``, nats per token), and its ``gain`` is the drop in test cross-entropy.
"""

from __future__ import annotations

import math
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from raykd.config import ExperimentConfig
from raykd.data import Dataset, build_augment
from raykd.data.tokenizers import tokenizer_record
from raykd.engine import CPU, Batches, Exchange, TransferBatches, accuracy, method_context, token_scores
from raykd.lm.hf import save_pretrained
from raykd.lm.miniplm import difference_sampled
from raykd.lm.onpolicy import OnPolicyBatches
from raykd.methods.base import Method
from raykd.nodes import Setup, load_node, prepare
from raykd.students import save_student
from raykd.teacher.protocol import NoTeacher, TeacherLogits
from raykd.teacher.source import LoadNode, teacher_logits
from raykd.transfer import TransferPlan, transfer

Report = Callable[[dict[str, Any]], None]
#: Metrics that measure the machine, not the method: they differ between identical runs. ``epoch_seconds`` is the
#: epoch's training alone and ``eval_seconds`` the evaluation after it, so a trial's time outside both (Tune's
#: reporting, set-up) can be told apart (benchmarks/sweep_concurrency.py).
TIMING_METRICS = ("epoch_seconds", "eval_seconds", "samples_per_s", "peak_rss_mb")
#: What a saved student file records of its trial's last epoch (and, for a language model, LM_METRICS).
STUDENT_METRICS = ("val_acc", "local_val_acc", "test_acc", "test_acc_before", "gain")
LM_METRICS = ("val_ppl", "test_ppl", "test_ppl_before")


def student_metrics(model: nn.Module, setup: Setup, student: int) -> dict[str, float]:
    data, local = setup.dataset, setup.nodes[student]
    if data.tokens:
        return token_metrics(model, setup, student)
    return {
        "val_acc": accuracy(model, data.train_x[setup.splits.val], data.train_y[setup.splits.val]),
        "local_val_acc": accuracy(model, data.train_x[local.val], data.train_y[local.val]),
        "test_acc": accuracy(model, data.test_x, data.test_y),
    }


def token_metrics(model: nn.Module, setup: Setup, student: int) -> dict[str, float]:
    """A language model's next-token accuracy, cross-entropy (nats per token) and perplexity on each split."""
    data, local = setup.dataset, setup.nodes[student]
    splits = {
        "val": (data.train_x[setup.splits.val], data.train_y[setup.splits.val]),
        "local_val": (data.train_x[local.val], data.train_y[local.val]),
        "test": (data.test_x, data.test_y),
    }
    metrics = {}
    for name, (x, y) in splits.items():
        acc, nll = token_scores(model, x, y)
        metrics |= {f"{name}_acc": acc, f"{name}_nll": nll, f"{name}_ppl": math.exp(nll)}
    return metrics


def gains(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Test and validation gain: accuracy after minus before, or a language model's drop in cross-entropy."""
    if "test_nll" in after:
        return {"gain": before["test_nll"] - after["test_nll"], "val_gain": before["val_nll"] - after["val_nll"]}
    return {"gain": after["test_acc"] - before["test_acc"], "val_gain": after["val_acc"] - before["val_acc"]}


def epoch_metrics(
    epoch: int,
    before: dict[str, float],
    after: dict[str, float],
    losses: dict[str, float],
    timing: dict[str, float],
) -> dict[str, Any]:
    """One epoch's report, the same for in-process trials, Ray Train learners and DML peer actors."""
    return {
        "epoch": epoch + 1,
        **timing,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        **after,
        **{f"{k}_before": v for k, v in before.items()},
        **gains(before, after),
        **{f"loss_{k}" if k != "loss" else k: v for k, v in losses.items()},
    }


def shard(index: np.ndarray, rank: int, world: int, seed: int) -> np.ndarray:
    """Equal-sized, disjoint shards of a seeded shuffle: every data-parallel worker takes the same step count."""
    if world == 1:
        return index
    per = len(index) // world
    return np.sort(np.random.default_rng(seed).permutation(index)[rank * per : (rank + 1) * per])


def transfer_batches(cfg: ExperimentConfig, setup: Setup, seed: int, rank: int = 0, world: int = 1) -> TransferBatches:
    """The transfer set's batches (the student's labelled share, and the pool where ``transfer.set`` uses it),
    augmented as ``data.augment`` says."""
    data, budget = setup.dataset, cfg.transfer.train
    pool = shard(setup.splits.pool, rank, world, seed) if cfg.transfer.set != "local" else None
    return TransferBatches(
        data.train_x,
        data.train_y,
        shard(setup.nodes[cfg.transfer.student].train, rank, world, seed),
        pool,
        budget.batch_size,
        distill_labelled=cfg.transfer.set != "pool",
        seed=seed + rank,
        augment=build_augment(cfg.data.augment, seed + rank),
    )


def transfer_rows(cfg: ExperimentConfig, setup: Setup, load: LoadNode, student: nn.Module) -> Setup:
    """The setup whose rows the transfer draws: as drawn, or cut to the documents the teacher knows best
    (``transfer.miniplm``, MiniPLM's difference sampling against the student's start)."""
    if cfg.transfer.miniplm is None:
        return setup
    teachers = [load(n) for n in cfg.transfer.teachers]
    return difference_sampled(setup, cfg.transfer.student, teachers, student, cfg.transfer.miniplm)


class EpochReports:
    """``fit``'s per-epoch hook: times the epoch, evaluates the student, reports; keeps the last report."""

    def __init__(self, student: nn.Module, setup: Setup, student_id: int, rows: int, costs: dict, report: Report):
        self.student, self.setup, self.student_id, self.rows = student, setup, student_id, rows
        self.before = student_metrics(student, setup, student_id)
        self.costs, self.report = costs, report
        self.final: dict[str, Any] = {}
        self.started = time.perf_counter()

    def __call__(self, epoch: int, losses: dict[str, float]) -> None:
        seconds = time.perf_counter() - self.started
        after = student_metrics(self.student, self.setup, self.student_id)
        timing = {
            "epoch_seconds": seconds,
            "eval_seconds": time.perf_counter() - self.started - seconds,
            "samples_per_s": self.rows / seconds,
        }
        self.final = {**epoch_metrics(epoch, self.before, after, losses, timing), **self.costs}
        self.report(dict(self.final))
        self.started = time.perf_counter()


@dataclass(frozen=True)
class Peer:
    """A DML peer actor's part of a trial: which of the K peers (``cfg.node_ids()``) it trains, and its ``exchange``
    with the others (``raykd.engine.fit``)."""

    index: int
    exchange: Exchange


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
    device: torch.device = CPU,
    save_to: Path | None = None,
    peer: Peer | None = None,
) -> dict[str, Any]:
    """Transfer into the student with method row ``label`` at ``setting``; report after every epoch.

    Frozen logits come from where ``teacher.mode`` says (``server``: the TeacherServer actor or its name). A
    data-parallel learner passes its ``rank`` among ``world`` workers (it trains on its shard of the transfer set)
    and ``wrap`` (e.g. DDP) for the trainable models; metrics are computed on the full evaluation splits by every
    worker alike. A DML peer actor passes its ``peer`` part and trains only that peer. Models train on ``device``
    (chosen by the shell that reserved the trial's resources; the CPU by default); data and cached logits stay on
    the CPU. With ``save_to`` the final student is saved there (by rank 0) as a student file (``raykd.students``).
    Returns the last report.
    """
    method = cfg.method(label).build(setting)
    setup = prepare(cfg, seed)
    load: LoadNode = cache(lambda node: load_node(cfg, setup, node, seed, device))
    student_id, teachers = cfg.transfer.student, cfg.transfer.teachers
    student = load(student_id)
    trainable, teacher = trial_models(cfg, method, setup, seed, load, server, wrap, peer, device)
    transfer_set = transfer_batches(cfg, transfer_rows(cfg, setup, load, student), seed, rank, world)
    batches: Batches = transfer_set
    if getattr(method, "on_policy", 0) > 0:  # GKD's lambda: part of each batch is the student's own text
        batches = OnPolicyBatches(transfer_set, student, method.on_policy, seed)  # type: ignore[attr-defined]
    classes = setup.dataset.num_classes
    load_teachers = lambda: [load(n) for n in teachers]  # noqa: E731
    context = method_context(transfer_set, load_teachers, classes, seed, teacher.train_logits, setup.dataset.model_view)
    exchange = peer.exchange if peer is not None else None
    plan = TransferPlan(trainable, method, batches, cfg.transfer.train, teacher, context, seed, exchange)
    rows = transfer_set.rows_per_epoch
    epochs = transfer(plan, lambda costs: EpochReports(student, setup, student_id, rows, costs, report))
    if save_to is not None and rank == 0:
        save_trial_student(save_to, student, cfg, setup, label, setting, seed, epochs.final)
    return epochs.final


def trial_models(
    cfg: ExperimentConfig,
    method: Method,
    setup: Setup,
    seed: int,
    load: LoadNode,
    server: Any,
    wrap: Callable[[nn.Module], nn.Module],
    peer: Peer | None,
    device: torch.device = CPU,
) -> tuple[list[nn.Module], TeacherLogits]:
    """What a trial trains, and the frozen logits it distils from: the K mutual-learning peers (or a peer actor's
    own), or the student with its frozen teachers (and initial self, for DP-KD) from where ``teacher.mode`` says."""
    if method.teachers == "peers":
        peers = cfg.node_ids() if peer is None else [cfg.node_ids()[peer.index]]
        return [wrap(load(n)) for n in peers], NoTeacher()
    student = wrap(load(cfg.transfer.student))
    frozen = cfg.transfer.teachers if method.teachers == "frozen" else []
    initial = cfg.transfer.student if method.uses_initial_student else None
    return [student], teacher_logits(cfg, setup, seed, frozen, initial, load, server, device)


def save_trial_student(
    path: Path,
    model: nn.Module,
    cfg: ExperimentConfig,
    setup: Setup,
    label: str,
    setting: dict[str, Any],
    seed: int,
    metrics: dict[str, Any],
) -> None:
    """The trial's product as a file ``raykd.load_student`` reads: weights, architecture, setting, seed, metrics."""
    data = setup.dataset
    kept = {k: metrics[k] for k in (*STUDENT_METRICS, *LM_METRICS) if k in metrics}
    spec = cfg.nodes.model_of(cfg.transfer.student)
    save_student(
        path,
        model,
        spec,
        data,
        label=label,
        setting=setting,
        seed=seed,
        metrics=kept,
        **lm_info(data),
    )
    save_pretrained(model, path)  # a transformers student: also a save_pretrained folder beside the file


def lm_info(data: Dataset) -> dict[str, Any]:
    """What a language-model student file carries to be used again: its task and tokenizer (``raykd.generate``)."""
    return {"task": "lm", **tokenizer_record(data.tokenizer)} if data.tokens else {}
