"""Where a Ray Train learner trial's time goes, against the same trial run in this process.

    python benchmarks/learner_overhead.py [EPOCHS] [REPEATS]

One process, one config and seed, alternated ``REPEATS`` times: the trial in-process (``run_trial``), then on a
1-worker TorchTrainer (``run_on_learners``) with the controller polling as raykd sets it, then as Ray's default
(2 s). A ``ray.train.UserCallback`` on the Train controller stamps each epoch's report in a file, so a learner's
wall time splits into start-up (``fit()`` until the first report, less the in-process first epoch), the epochs,
and tear-down (the last report until ``fit()`` returns).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
from ray.train import UserCallback

from raykd.config import ExperimentConfig, validate_config
from raykd.experiment import run_trial
from raykd.learners import POLL_ENV, run_on_learners
from raykd.nodes import load_node, prepare

CACHE = Path(tempfile.gettempdir()) / "raykd-bench-cache"
KD = {"temperature": 4.0, "alpha": 0.5}


class StampReports(UserCallback):
    """Appends (epoch, wall time) of each report, as the controller sees it, to a JSON-lines file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        with self.path.open("a") as stamps:
            stamps.write(json.dumps({"epoch": metrics[0]["epoch"], "at": time.time()}) + "\n")


def experiment(epochs: int) -> ExperimentConfig:
    """The default study's shape (MNIST-1D, 4 nodes), cached teacher logits, one KD row."""
    return validate_config(
        {
            "name": "learner-overhead",
            "seeds": [0],
            "data": {"dataset": "mnist1d"},
            "partition": {"num_nodes": 4, "alpha": 0.5, "min_samples": 50},
            "nodes": {"cache_dir": str(CACHE)},
            "teacher": {"mode": "cache"},
            "transfer": {"set": "pool", "train": {"epochs": epochs}},
            "methods": [{"name": "kd", **KD}],
            "learners": {"num_workers": 1},
        }
    )


def in_process(cfg: ExperimentConfig) -> tuple[float, list[float]]:
    """Wall time of the trial here and the time at each epoch's report."""
    started, stamps = time.time(), []
    run_trial(cfg, "kd", KD, 0, report=lambda _: stamps.append(time.time()))
    return time.time() - started, [at - started for at in stamps]


def on_learner(cfg: ExperimentConfig, poll_s: str | None) -> tuple[float, list[float]]:
    """Wall time of the trial on a 1-worker TorchTrainer and the time the controller saw each epoch's report;
    ``poll_s``: the controller's poll interval as a user would set it (None: as raykd sets it)."""
    folder = Path(tempfile.mkdtemp())
    stamps = folder / "stamps.jsonl"
    if poll_s:
        os.environ[POLL_ENV] = poll_s
    started = time.time()
    run_on_learners(cfg, "kd", KD, 0, folder, callbacks=[StampReports(stamps)])
    wall = time.time() - started
    os.environ.pop(POLL_ENV, None)
    return wall, [json.loads(line)["at"] - started for line in stamps.read_text().splitlines()]


def summary(name: str, runs: list[tuple[float, list[float]]], first_epoch_here: float) -> str:
    """Median wall, start-up, epoch and tear-down of ``runs``."""
    median = statistics.median
    epoch = median((s[-1] - s[0]) / max(len(s) - 1, 1) for _, s in runs)
    startup = median(s[0] for _, s in runs) - first_epoch_here
    teardown = median(wall - s[-1] for wall, s in runs)
    return (
        f"{name}: {median(w for w, _ in runs):.1f}s wall, start-up {startup:.1f}s, epoch {epoch:.2f}s, "
        f"tear-down {teardown:.1f}s"
    )


def main(epochs: int, repeats: int) -> None:
    cfg = experiment(epochs)
    setup = prepare(cfg, 0)
    for node in cfg.node_ids():
        load_node(cfg, setup, node, 0)  # node pre-training and the logit cache are not what is compared
    run_trial(cfg.model_copy(update={"learners": cfg.learners.model_copy(update={"num_workers": 0})}), "kd", KD, 0)
    runs: dict[str, list[tuple[float, list[float]]]] = {"in-process": [], "learner": [], "learner, 2 s poll": []}
    for _ in range(repeats):
        runs["in-process"].append(in_process(cfg))
        runs["learner"].append(on_learner(cfg, None))
        runs["learner, 2 s poll"].append(on_learner(cfg, "2.0"))
    first_epoch_here = statistics.median(s[0] for _, s in runs["in-process"])
    lines = [summary(name, done, first_epoch_here) for name, done in runs.items()]
    load = "/".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"{epochs} epochs, median of {repeats} (load average {load}):\n  " + "\n  ".join(lines), flush=True)


if __name__ == "__main__":
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5, int(sys.argv[2]) if len(sys.argv) > 2 else 3)
