"""One Ray Tune trial: a method row at one grid point and seed, in one cell of the study.

The trainable receives each cell's validated config (``tune.with_parameters``), raises what the
rehearsal or an earlier non-finite loss says it must, then runs the transfer where the config says:
DML peer actors, Ray Train learners, or in the trial's own process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from ray import tune
from ray.tune import PlacementGroupFactory

from raykd.cluster import WAITER_CPUS, cpus_beside_server, given_device, on_this_node
from raykd.config import ExperimentConfig, cell_key
from raykd.engine import NonFiniteLoss
from raykd.errors import InjectedFault
from raykd.experiment import run_trial
from raykd.files import write_atomic
from raykd.sweep.state import finished_result
from raykd.sweep.students import trial_student


def trainable(
    config: dict[str, Any], cells: dict[str, ExperimentConfig], server_name: str | None, sweep_dir: str
) -> None:
    """One Tune trial in its cell's config; a non-finite loss is recorded so that retries re-raise it at once.

    A trial whose result the sweep's folder already holds (it finished before a killed driver's Tune state
    was saved) reports that result again instead of training.
    """
    recorded = finished_result(Path(sweep_dir), config)
    if recorded is not None:
        tune.report(recorded)
        return
    cfg = cells[cell_key(config.get("cell", {}))]
    label, seed = config["arm"]["label"], config["seed"]
    raise_planned_faults(cfg, sweep_dir, label, seed)
    try:
        transfer(cfg, config, server_name, sweep_dir)
    except NonFiniteLoss as err:
        write_atomic(trial_file(sweep_dir, "nonfinite"), str(err))
        raise


def raise_planned_faults(cfg: ExperimentConfig, sweep_dir: str, label: str, seed: int) -> None:
    """Raise what this trial must raise before it trains: an injected fault, or its earlier non-finite loss.

    Attempts are counted in a file of the sweep's folder, keyed by trial id, so the count survives
    Tune's retries (a fresh actor) and ``--resume`` (a fresh driver). A non-finite loss is deterministic:
    a retry would only spend the same epochs to reach it again, so the recorded message is raised at once.
    """
    nonfinite = trial_file(sweep_dir, "nonfinite")
    if nonfinite.exists():
        raise NonFiniteLoss(nonfinite.read_text())
    fault = cfg.faults.trial
    if fault is None or (fault.label, fault.seed) != (label, seed):
        return
    counter = trial_file(sweep_dir, "attempts")
    attempt = (int(counter.read_text()) if counter.exists() else 0) + 1
    write_atomic(counter, str(attempt))
    if attempt <= fault.times:
        raise InjectedFault(f"faults.trial: injected fault, attempt {attempt} of the {fault.times} that fail")


def trial_file(sweep_dir: str, kind: str) -> Path:
    """This trial's record in the sweep's faults/ folder (on the shared output filesystem, seen by every retry)."""
    return Path(sweep_dir) / "faults" / f"{tune.get_context().get_trial_id()}.{kind}"


def transfer(cfg: ExperimentConfig, config: dict[str, Any], server_name: str | None, sweep_dir: str) -> None:
    """Run the trial's transfer where the config says: peer actors, Ray Train learners, or in this process;
    its final student is saved in the sweep's folder."""
    setting = {k: v for k, v in config["arm"].items() if k not in ("label", "method")}
    label, seed = config["arm"]["label"], config["seed"]
    student = trial_student(Path(sweep_dir), config.get("cell", {}), label, setting, seed)
    # the two other ways to train (peer actors, Ray Train learners) load with the first trial that needs them
    if cfg.learners.peer_actors and cfg.method(label).name == "dml":
        from raykd.peers import run_mutual_learning

        run_mutual_learning(cfg, label, setting, seed, report=report, save_to=student)
        return
    if cfg.learners.num_workers:
        from ray.tune.integration.ray_train import TuneReportCallback

        from raykd.learners import run_on_learners

        storage = Path(tune.get_context().get_trial_dir())
        run_on_learners(cfg, label, setting, seed, storage, server_name, [TuneReportCallback()], student)
        return
    torch.set_num_threads(max(1, int(cfg.tune.cpus_per_trial)))
    run_trial(cfg, label, setting, seed, report=report, server=server_name, device=given_device(), save_to=student)


def report(metrics: dict[str, Any]) -> None:
    """``tune.report`` with the Ray node this trial runs on (its MLflow run's ``ray.node_id`` tag)."""
    tune.report(on_this_node(metrics))


def trial_resources(cfg: ExperimentConfig, cluster_cpus: float) -> tuple[Any, int | None]:
    """What one trial reserves, and how many trials may run at once so that none waits forever.

    A simulation trial only waits on its child simulation. DML with peer actors reserves a placement group: a
    sliver for the trial plus one bundle per peer.
    With learners the trial is only a driver (no CPU of its own); its Ray Train workers get their own
    placement group from the trainer, so concurrency is capped to the number of worker groups that
    fit beside the teacher server.
    """
    if cfg.tune.trial == "simulation":  # each simulation's Flower pool takes every free CPU: one at a time
        return {"cpu": WAITER_CPUS}, 1
    if cfg.learners.peer_actors and any(m.name == "dml" for m in cfg.methods):
        peers = [{"CPU": cfg.learners.cpus_per_worker}] * len(cfg.node_ids())  # the peers live in the trial's group
        return PlacementGroupFactory([{"CPU": WAITER_CPUS}, *peers]), cfg.tune.max_concurrent_trials
    if not cfg.learners.num_workers:
        return {"cpu": cfg.tune.cpus_per_trial, "gpu": cfg.tune.gpus_per_trial}, cfg.tune.max_concurrent_trials
    free = cpus_beside_server(cfg, cluster_cpus)
    fits = max(1, int(free // (cfg.learners.num_workers * cfg.learners.cpus_per_worker)))
    return {"cpu": 0, "memory": 1}, min(fits, cfg.tune.max_concurrent_trials or fits)
