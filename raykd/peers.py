"""Deep mutual learning on Ray: K peers as K actors that exchange logits every step.

Each actor holds one peer (the student node's model or a teacher node's), builds the same seeded
batch sequence as the in-process trial, and keeps its own Adam. Every step the driver gathers all
peers' logits and hands them to every peer; each peer minimises its own DML loss with the others'
logits as constants. Adam is per parameter, so K optimizers equal the in-process joint one and the
result matches ``raykd.experiment.run_trial`` for the same seed.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import ray
import torch
from torch import Tensor

from raykd.cluster import START_TIMEOUT_S, get_within
from raykd.config import ExperimentConfig
from raykd.engine import seed_everything
from raykd.experiment import Report, epoch_metrics, save_trial_student, student_metrics, transfer_batches
from raykd.methods.base import StepLogits
from raykd.nodes import load_node, prepare


class Peer:
    """One mutual-learning peer: its model, optimizer and the shared batch sequence."""

    def __init__(self, cfg: ExperimentConfig, label: str, setting: dict[str, Any], seed: int, index: int) -> None:
        torch.set_num_threads(1)
        self.cfg = cfg
        self.method, self.index = cfg.method(label).build(setting), index
        self.setup = prepare(cfg, seed)
        self.model = load_node(cfg, self.setup, cfg.node_ids()[index], seed)
        budget = cfg.transfer.train
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=budget.lr, weight_decay=budget.weight_decay)
        self.batches = transfer_batches(cfg, self.setup, seed)
        seed_everything(seed)
        self.steps: list = []
        self.logits: Tensor | None = None

    def start_epoch(self) -> int:
        self.model.train()
        self.steps = list(self.batches)
        return len(self.steps)

    def forward(self, step: int) -> Tensor:
        self.logits = self.model(self.steps[step].x)
        return self.logits.detach()

    def learn(self, step: int, everyone: list[Tensor]) -> dict[str, float]:
        assert self.logits is not None, "forward must come before learn"
        peers = [self.logits if k == self.index else z for k, z in enumerate(everyone)]
        batch = self.steps[step]
        terms = self.method.losses(StepLogits(peers, []), batch.targets, batch.distill)
        self.optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()  # only this peer's own term has a gradient path to its weights
        self.optimizer.step()
        return {k: float(v.detach()) for k, v in terms.items()}

    def save(self, path: Path, label: str, setting: dict[str, Any], seed: int, metrics: dict[str, Any]) -> None:
        save_trial_student(path, self.model, self.cfg, self.setup, label, setting, seed, metrics)

    def rows_per_epoch(self) -> int:
        return self.batches.rows_per_epoch

    def evaluate(self) -> dict[str, float]:
        return student_metrics(self.model, self.setup, self.cfg.transfer.student)


def run_mutual_learning(
    cfg: ExperimentConfig,
    label: str,
    setting: dict[str, Any],
    seed: int,
    report: Report = lambda m: None,
    save_to: Path | None = None,
) -> dict[str, Any]:
    """The DML trial with one actor per peer; reports the student's (peer 0's) metrics every epoch and, with
    ``save_to``, saves the student (peer 0) there."""
    peer = ray.remote(num_cpus=cfg.learners.cpus_per_worker)(Peer)
    peers = [peer.remote(cfg, label, setting, seed, k) for k in range(len(cfg.node_ids()))]
    what = f"learners.peer_actors: {len(peers)} DML peer actors x {cfg.learners.cpus_per_worker:g} CPUs starting"
    get_within([p.rows_per_epoch.remote() for p in peers], START_TIMEOUT_S, what)
    before = ray.get(peers[0].evaluate.remote())
    final: dict[str, Any] = {}
    for epoch in range(cfg.transfer.train.epochs):
        started = time.perf_counter()
        steps = ray.get([p.start_epoch.remote() for p in peers])[0]
        totals: dict[str, float] = {}
        for step in range(steps):
            everyone = ray.get([p.forward.remote(step) for p in peers])
            terms = ray.get([p.learn.remote(step, everyone) for p in peers])[0]
            for name, value in terms.items():
                totals[name] = totals.get(name, 0.0) + value / steps
        seconds = time.perf_counter() - started
        after = ray.get(peers[0].evaluate.remote())
        timing = {
            "epoch_seconds": seconds,
            "eval_seconds": time.perf_counter() - started - seconds,
            "samples_per_s": ray.get(peers[0].rows_per_epoch.remote()) / seconds,
        }
        final = epoch_metrics(epoch, before, after, totals, timing)
        report(dict(final))
    if save_to is not None:
        ray.get(peers[0].save.remote(save_to, label, setting, seed, final))
    for p in peers:
        ray.kill(p)
    return final
