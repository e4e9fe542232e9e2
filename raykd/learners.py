"""Student learners on Ray Train: one trial's transfer run data-parallel on ``learners.num_workers`` workers.

Each worker runs the same trial code as an in-process trial (``raykd.experiment.run_trial``) on its
shard of the transfer set, with the student wrapped in DDP by ``ray.train.torch.prepare_model``
(gloo on CPU, NCCL on GPU). Teacher logits come from the shared server or the logit cache as
configured (inline mode runs the teacher on each worker). Every epoch's metrics are reported to
Ray Train and, inside a Tune trial, forwarded to Tune; the last report carries the student's weights.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch
from ray.train import Checkpoint, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from raykd.cluster import on_this_node
from raykd.config import ExperimentConfig
from raykd.experiment import run_trial

#: Ray Train's controller takes a worker's report only when it polls the workers (every 2 s by default), and a
#: worker's next report waits until its last one was taken: epochs shorter than that were paced at one per 2 s.
POLL_ENV, POLL_S = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1"


def _worker(loop: dict[str, Any]) -> None:
    """One learner: its shard of the trial, DDP-wrapped student, metrics to Ray Train every epoch."""
    cfg: ExperimentConfig = loop["cfg"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(max(1, int(cfg.learners.cpus_per_worker)))
    trainable: list[torch.nn.Module] = []

    def wrap(model: torch.nn.Module) -> torch.nn.Module:
        trainable.append(ray.train.torch.prepare_model(model))
        return trainable[-1]

    def report(metrics: dict[str, Any]) -> None:
        metrics = on_this_node(metrics)  # rank 0's reports reach Tune: its node is where the trial trained
        if metrics["epoch"] < cfg.transfer.train.epochs or rank != 0:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as folder:  # the last report carries the student's weights
            student = getattr(trainable[0], "module", trainable[0])
            torch.save(student.state_dict(), Path(folder) / "student.pt")
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(folder))

    device = ray.train.torch.get_device()  # this worker's GPU when learners.use_gpu, else the CPU
    run_trial(
        cfg,
        loop["label"],
        loop["setting"],
        loop["seed"],
        report,
        server=loop["server_name"],
        rank=rank,
        world=world,
        wrap=wrap,
        device=device,
        save_to=loop["save_to"],
    )


def run_on_learners(
    cfg: ExperimentConfig,
    label: str,
    setting: dict[str, Any],
    seed: int,
    storage: Path,
    server_name: str | None = None,
    callbacks: list[Any] | None = None,
    save_to: Path | None = None,
) -> dict[str, Any]:
    """Run one trial on a TorchTrainer; returns the last epoch's metrics (as reported by rank 0)."""
    trainer = TorchTrainer(
        _worker,
        train_loop_config={
            "cfg": cfg,
            "label": label,
            "setting": setting,
            "seed": seed,
            "server_name": server_name,
            "save_to": save_to,
        },
        scaling_config=ScalingConfig(
            num_workers=cfg.learners.num_workers,
            use_gpu=cfg.learners.use_gpu,
            resources_per_worker={"CPU": cfg.learners.cpus_per_worker},
        ),
        run_config=RunConfig(storage_path=str(storage), name="learners", callbacks=callbacks or []),
    )
    with controller_polling():
        result = trainer.fit()
    return dict(result.metrics or {})


@contextmanager
def controller_polling() -> Iterator[None]:
    """Ray Train passes its poll interval from this process's environment to the controller ``fit`` starts: set for
    that call only, so nothing else in the process sees it; a user's own setting wins."""
    if POLL_ENV in os.environ:
        yield
        return
    os.environ[POLL_ENV] = POLL_S
    try:
        yield
    finally:
        os.environ.pop(POLL_ENV, None)
