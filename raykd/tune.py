"""``python -m raykd.tune``: an experiment config -> node models -> Ray Tune sweep -> tables, plots, MLflow.

Every method row of the config, at every point of its grid and every seed, is one Tune trial.
The sweep is one MLflow parent run; each trial is a child run with its params and per-epoch metrics.
A sweep's output folder holds its config, its Tune state and ``sweep.json`` (MLflow store and parent
run), which is all ``--resume`` needs to continue it after the driver died.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from raykd.config import Cell, ExperimentConfig, cell_key, describe_schema, load_config, study_cells
from raykd.errors import ConfigError

if TYPE_CHECKING:
    import pandas as pd

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "tune_configs" / "default.yaml"
#: Exit status of a sweep that completed but recorded failed trials (2 is bad input).
EXIT_TRIALS_FAILED = 3
log = logging.getLogger("raykd")


class InjectedFault(RuntimeError):
    """Raised by a trial chosen by ``tune.fail``: a rehearsal of a crash, not a bug."""


@dataclass(frozen=True)
class Sweep:
    """Where a sweep lives; saved as ``sweep.json`` in its output folder so ``--resume`` can find it again."""

    out: Path
    uri: str
    parent_run_id: str | None = None

    @property
    def resumed(self) -> bool:
        return self.parent_run_id is not None

    def save(self, parent_run_id: str) -> None:
        write_atomic(self.out / "sweep.json", json.dumps({"uri": self.uri, "parent_run_id": parent_run_id}, indent=2))


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write then rename, so a crash never leaves a half-written file where a reader expects a whole one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m raykd.tune",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Search distillation knobs between pre-trained nodes with Ray Tune and record every run in MLflow.\n"
            "With no arguments it runs tune_configs/default.yaml on embedded MNIST-1D data."
        ),
        epilog="config keys (YAML sections; any can be overridden with --set):\n"
        + describe_schema()
        + "\n\nexample:\n  python -m raykd.tune --config tune_configs/dml.yaml --set seeds=[0,1] "
        "--set partition.alpha=0.1",
    )
    parser.add_argument("--config", type=Path, help=f"experiment YAML (default: {DEFAULT_CONFIG})")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key; VALUE is YAML, so lists make grid axes (repeatable)",
    )
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (same as --set tracking.uri=URI)")
    parser.add_argument("--address", help="join this Ray cluster (same as --set ray.address=ADDR)")
    parser.add_argument(
        "--resume",
        type=Path,
        metavar="PATH",
        help="continue the interrupted sweep whose output folder is PATH (runs/<name>-<time>/); "
        "finished trials are kept, the others run",
    )
    return parser


def load(args: argparse.Namespace) -> ExperimentConfig:
    """Config from the command line, with paths made absolute (Ray workers run elsewhere)."""
    overrides = list(args.overrides)
    if args.tracking_uri:
        overrides.append(f"tracking.uri={args.tracking_uri}")
    if args.address:
        overrides.append(f"ray.address={args.address}")
    cfg = load_config(args.config or DEFAULT_CONFIG, overrides)
    update: dict[str, Any] = {"output_dir": cfg.output_dir.resolve()}
    nodes = cfg.nodes.model_copy(update={"cache_dir": cfg.nodes.cache_dir.resolve()})
    data = cfg.data.model_copy(update={"root": cfg.data.root.resolve() if cfg.data.root else None})
    return cfg.model_copy(update={**update, "nodes": nodes, "data": data})


def open_sweep(args: argparse.Namespace) -> tuple[ExperimentConfig, Sweep]:
    """The config and records of the interrupted sweep at ``--resume PATH``; every gap is one ConfigError line."""
    path = args.resume.resolve()
    if args.config or args.overrides or args.tracking_uri:
        raise ConfigError(
            f"--resume {path}: cannot be combined with --config, --set or --tracking-uri; "
            f"a resumed sweep keeps its own config ({path / 'config.yaml'})"
        )
    expected = "expected a sweep's output folder runs/<name>-<time>/"
    if not path.is_dir():
        raise ConfigError(f"--resume {path}: no such folder; {expected}")
    if not (path / "config.yaml").is_file():
        raise ConfigError(f"--resume {path}: holds no config.yaml; {expected}")
    cfg = load_config(path / "config.yaml", [f"ray.address={args.address}"] if args.address else [])
    anew = f"run it anew with --config {path / 'config.yaml'}"
    if (path / "results.md").exists():
        raise ConfigError(f"--resume {path}: this sweep already finished (results.md is there); nothing to resume")
    try:
        record = json.loads((path / "sweep.json").read_text())
        sweep = Sweep(path, str(record["uri"]), str(record["parent_run_id"]))
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError(
            f"--resume {path}: sweep.json is missing or unreadable (the sweep stopped before it started); {anew}"
        ) from None
    from ray import tune

    if not tune.Tuner.can_restore(str(path / "tune")):
        raise ConfigError(f"--resume {path}: no Ray Tune state in {path / 'tune'} (no trial had started); {anew}")
    return cfg, sweep


def preflight(cfg: ExperimentConfig, sweep: Sweep | None = None) -> str:
    """Everything that can be checked before Ray starts or MLflow is written; returns the tracking URI.

    Loading the dataset here also fills the on-disk dataset cache before any worker needs it.
    """
    from raykd.data.checks import check_dataset
    from raykd.models import build_model
    from raykd.nodes import dataset_of, prepare
    from raykd.tracking import check_reachable, resolve_uri

    check_fault(cfg)
    if cfg.federated.after_sweep:
        from federated.task import check
    for cell in study_cells(cfg):
        if cfg.federated.after_sweep:
            check(cell.config)
        data = dataset_of(cell.config)
        check_dataset(cell.config, data)
        for seed in cfg.seeds:  # every split and partition draws now, so one that cannot is a line, not a traceback
            prepare(cell.config, seed)
        for node in cell.config.node_ids():
            field = f"nodes.models.{node}" if node in cell.config.nodes.models else "nodes.model"
            build_model(cell.config.nodes.model_of(node), data.input_shape, data.num_classes, field)
    uri = sweep.uri if sweep else resolve_uri(cfg.tracking.uri)
    check_reachable(uri)
    if sweep:
        check_parent_run(sweep)
    return uri


def check_fault(cfg: ExperimentConfig) -> None:
    """``tune.fail`` must pick a trial the sweep has, or the rehearsal would silently rehearse nothing."""
    fault = cfg.tune.fail
    if fault is None:
        return
    labels = [m.display() for m in cfg.methods]
    if fault.label not in labels:
        raise ConfigError(f"tune.fail.label: {fault.label!r} is not a method row; allowed: {', '.join(labels)}")
    if fault.seed not in cfg.seeds:
        raise ConfigError(f"tune.fail.seed: {fault.seed} is not one of the sweep's seeds {cfg.seeds}")


def check_parent_run(sweep: Sweep) -> None:
    """The resumed sweep's MLflow parent run must still exist; a missing sqlite store is not created."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    store = sweep.uri.removeprefix("sqlite:///")
    missing = f"--resume {sweep.out}: MLflow run {sweep.parent_run_id} of this sweep is not in {sweep.uri}"
    if sweep.uri.startswith("sqlite:///") and not Path(store).is_file():
        raise ConfigError(f"{missing} (the store file is gone)")
    try:
        MlflowClient(sweep.uri).get_run(str(sweep.parent_run_id))
    except MlflowException:
        raise ConfigError(missing) from None


def connect_ray(cfg: ExperimentConfig, log_to_driver: bool = False) -> None:
    """Join the configured cluster (``ray.address`` or RAY_ADDRESS), else start a local Ray on loopback."""
    import ray

    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    if cfg.ray.address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=cfg.ray.address, log_to_driver=log_to_driver, logging_level=logging.WARNING)
    else:
        ray.init(
            num_cpus=cfg.ray.num_cpus,
            include_dashboard=False,
            log_to_driver=log_to_driver,
            logging_level=logging.WARNING,
            _node_ip_address="127.0.0.1",
        )


def start_ray(cfg: ExperimentConfig) -> None:
    import ray

    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # raykd prints its own one line per trial
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")  # fresh Tune state: --resume reruns little
    if not ray.is_initialized():  # else a caller (a notebook, the test suite) already connected us
        connect_ray(cfg)
    cpus = ray.cluster_resources().get("CPU", 0)
    if cfg.tune.cpus_per_trial > cpus:
        raise ConfigError(
            f"tune.cpus_per_trial: {cfg.tune.cpus_per_trial:g} CPUs per trial but the Ray cluster has {cpus:g}; "
            f"allowed: up to {cpus:g}"
        )
    if cfg.teacher.mode == "server":
        if cfg.teacher.num_cpus + cfg.tune.cpus_per_trial > cpus:
            raise ConfigError(
                f"teacher.num_cpus: the server's {cfg.teacher.num_cpus:g} CPUs plus one trial's "
                f"{cfg.tune.cpus_per_trial:g} exceed the cluster's {cpus:g}; "
                f"allowed: up to {cpus - cfg.tune.cpus_per_trial:g}"
            )
    gpus = ray.cluster_resources().get("GPU", 0)
    if cfg.tune.gpus_per_trial > gpus:
        raise ConfigError(
            f"tune.gpus_per_trial: {cfg.tune.gpus_per_trial:g} GPUs per trial but the Ray cluster has {gpus:g}; "
            f"allowed: up to {gpus:g}"
        )
    if cfg.teacher.mode == "server" and cfg.teacher.num_gpus > gpus:
        raise ConfigError(f"teacher.num_gpus: {cfg.teacher.num_gpus:g} asked, the cluster has {gpus:g}")
    learners = cfg.learners
    free = cpus - (cfg.teacher.num_cpus if cfg.teacher.mode == "server" else 0)
    if learners.num_workers and learners.num_workers * learners.cpus_per_worker > free:
        raise ConfigError(
            f"learners.num_workers: {learners.num_workers} workers x {learners.cpus_per_worker:g} CPUs do not fit "
            f"in the cluster's {free:g} free CPUs; allowed: up to {int(free // learners.cpus_per_worker)}"
        )
    if learners.use_gpu and learners.num_workers > gpus:
        raise ConfigError(
            f"learners.use_gpu: {learners.num_workers} workers need {learners.num_workers} GPUs; "
            f"the cluster has {gpus:g}"
        )


def logit_nodes(cfg: ExperimentConfig) -> list[int]:
    """Nodes whose frozen logits some method row reads from the cache: teachers, and the initial student."""
    if cfg.teacher.mode != "cache":
        return []
    methods = [m.build(m.grid()[0]) for m in cfg.methods]
    frozen = cfg.transfer.teachers if any(m.teachers == "frozen" for m in methods) else []
    initial = [cfg.transfer.student] if any(m.uses_initial_student for m in methods) else []
    return initial + frozen


def _prepare_node(raw: dict[str, Any], node: int, seed: int) -> dict[str, Any]:
    """Ray task: make sure a node's model (and, in cache mode, its logits) exists; say what it built."""
    import torch

    from raykd.nodes import load_node, node_path, prepare, read_node

    torch.set_num_threads(1)
    cfg = ExperimentConfig.model_validate(raw)
    setup = prepare(cfg, seed)
    trained = read_node(node_path(cfg, node, seed)) is None
    load_node(cfg, setup, node, seed)
    built = False
    if node in logit_nodes(cfg):
        from raykd.teacher.cache import node_logits

        built = node_logits(cfg, setup, node, seed)[1]
    meta = read_node(node_path(cfg, node, seed))["meta"]  # type: ignore[index]
    return {"trained": trained, "logits_built": built, "test_acc": meta["test_acc"]}


def node_jobs(cells: list[Cell]) -> list[tuple[ExperimentConfig, int, int]]:
    """(cell config, node, seed) for every node model the study reads, once per model file.

    The sweep needs its students and teachers; a KD-consolidation follow-up needs every node of the partition.
    """
    from raykd.nodes import node_path

    jobs: dict[Path, tuple[ExperimentConfig, int, int]] = {}
    for cell in cells:
        cfg = cell.config
        consolidates = cfg.federated.after_sweep and cfg.federated.strategy == "consolidation"
        nodes = range(cfg.partition.num_nodes) if consolidates else cfg.node_ids()
        for seed in cfg.seeds:
            for node in nodes:
                jobs.setdefault(node_path(cfg, node, seed), (cfg, node, seed))
    return list(jobs.values())


def prepare_nodes(cells: list[Cell]) -> None:
    """Train the node models the cache lacks (and fill the logit cache in cache mode) as parallel Ray tasks."""
    import ray
    from tqdm import tqdm

    from raykd.nodes import node_path, read_node

    jobs = node_jobs(cells)
    missing = [read_node(node_path(c, n, s)) is None for c, n, s in jobs]
    todo = [(c, n, s) for (c, n, s), absent in zip(jobs, missing, strict=True) if absent or n in logit_nodes(c)]
    print(f"node models: {len(jobs) - sum(missing)} of {len(jobs)} cached in {cells[0].config.nodes.cache_dir}")
    if not todo:
        return
    gpus = cells[0].config.tune.gpus_per_trial
    task = ray.remote(num_cpus=1, num_gpus=gpus)(_prepare_node)
    pending = {task.remote(c.model_dump(mode="json"), node, seed): (node, seed) for c, node, seed in todo}
    built = 0
    with tqdm(total=len(pending), desc="preparing node models", unit="model") as bar:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            node, seed = pending.pop(done[0])
            result = ray.get(done[0])
            built += result["logits_built"]
            bar.set_postfix_str(f"node {node} seed {seed}: test acc {100 * result['test_acc']:.1f}%")
            bar.update()
    logits = sum(n in logit_nodes(c) for c, n, _ in jobs)
    if logits:
        print(f"teacher-logit cache: {built} forward passes over the training split, {logits - built} reused")


def start_teacher_server(cells: list[Cell], name: str) -> Any:
    """One TeacherServer for the sweep, holding every cell's and seed's node models; trials find it by name."""
    from raykd.nodes import dataset_of, node_path
    from raykd.teacher.cache import file_digest
    from raykd.teacher.server import served_model, start_server

    models = {}
    for cell in cells:
        cfg, data = cell.config, dataset_of(cell.config)
        for seed in cfg.seeds:
            for node in cfg.node_ids():
                path = node_path(cfg, node, seed)
                spec = cfg.nodes.model_of(node)
                models[path] = served_model(file_digest(path), path, spec, data.input_shape, data.num_classes)
    return start_server(list(models.values()), cells[0].config.teacher, name=name)


def _faults(cfg: ExperimentConfig, sweep_dir: str, label: str, seed: int) -> None:
    """Raise what this trial must raise before it trains: an injected fault, or its earlier non-finite loss.

    Attempts are counted in a file of the sweep's folder, keyed by trial id, so the count survives
    Tune's retries (a fresh actor) and ``--resume`` (a fresh driver). A non-finite loss is deterministic:
    a retry would only spend the same epochs to reach it again, so the recorded message is raised at once.
    """
    from raykd.engine import NonFiniteLoss

    nonfinite = _trial_file(sweep_dir, "nonfinite")
    if nonfinite.exists():
        raise NonFiniteLoss(nonfinite.read_text())
    fault = cfg.tune.fail
    if fault is None or (fault.label, fault.seed) != (label, seed):
        return
    counter = _trial_file(sweep_dir, "attempts")
    attempt = (int(counter.read_text()) if counter.exists() else 0) + 1
    write_atomic(counter, str(attempt))
    if attempt <= fault.times:
        raise InjectedFault(f"tune.fail: injected fault, attempt {attempt} of the {fault.times} that fail")


def _trainable(
    config: dict[str, Any], raws: dict[str, dict[str, Any]], server_name: str | None, sweep_dir: str
) -> None:
    """One Tune trial in its cell's config; a non-finite loss is recorded so that retries re-raise it at once."""
    from raykd.engine import NonFiniteLoss

    cfg = ExperimentConfig.model_validate(raws[cell_key(config.get("cell", {}))])
    label, seed = config["arm"]["label"], config["seed"]
    _faults(cfg, sweep_dir, label, seed)
    try:
        _transfer(cfg, config, server_name)
    except NonFiniteLoss as err:
        write_atomic(_trial_file(sweep_dir, "nonfinite"), str(err))
        raise


def _trial_file(sweep_dir: str, kind: str) -> Path:
    """This trial's record in the sweep's faults/ folder (on the shared output filesystem, seen by every retry)."""
    from ray import tune

    return Path(sweep_dir) / "faults" / f"{tune.get_context().get_trial_id()}.{kind}"


def _transfer(cfg: ExperimentConfig, config: dict[str, Any], server_name: str | None) -> None:
    """Run the trial's transfer where the config says: peer actors, Ray Train learners, or in this process."""
    import ray
    import torch
    from ray import tune

    from raykd.experiment import run_trial

    setting = {k: v for k, v in config["arm"].items() if k not in ("label", "method")}
    label, seed = config["arm"]["label"], config["seed"]
    if cfg.learners.peer_actors and cfg.method(label).name == "dml":
        from raykd.peers import run_mutual_learning

        run_mutual_learning(cfg, label, setting, seed, report=tune.report)
        return
    if cfg.learners.num_workers:
        from ray.tune.integration.ray_train import TuneReportCallback

        from raykd.learners import run_on_learners

        storage = Path(tune.get_context().get_trial_dir())
        run_on_learners(cfg, label, setting, seed, storage, server_name, callbacks=[TuneReportCallback()])
        return
    torch.set_num_threads(max(1, int(cfg.tune.cpus_per_trial)))
    server = ray.get_actor(server_name) if server_name else None
    run_trial(cfg, label, setting, seed, report=tune.report, server=server)


def trial_resources(cfg: ExperimentConfig, cluster_cpus: float) -> tuple[Any, int | None]:
    """What one trial reserves, and how many trials may run at once so that none waits forever.

    DML with peer actors reserves a placement group: a sliver for the trial plus one bundle per peer.
    With learners the trial is only a driver (no CPU of its own); its Ray Train workers get their own
    placement group from the trainer, so concurrency is capped to the number of worker groups that
    fit beside the teacher server.
    """
    from ray.tune import PlacementGroupFactory

    if cfg.learners.peer_actors and any(m.name == "dml" for m in cfg.methods):
        peers = [{"CPU": cfg.learners.cpus_per_worker}] * len(cfg.node_ids())  # the peers live in the trial's group
        return PlacementGroupFactory([{"CPU": 0.01}, *peers]), cfg.tune.max_concurrent_trials
    if not cfg.learners.num_workers:
        return {"cpu": cfg.tune.cpus_per_trial, "gpu": cfg.tune.gpus_per_trial}, cfg.tune.max_concurrent_trials
    free = cluster_cpus - (cfg.teacher.num_cpus if cfg.teacher.mode == "server" else 0)
    fits = max(1, int(free // (cfg.learners.num_workers * cfg.learners.cpus_per_worker)))
    return {"cpu": 0, "memory": 1}, min(fits, cfg.tune.max_concurrent_trials or fits)


def _describe(config: dict[str, Any]) -> str:
    arm = config["arm"]
    knobs = " ".join(f"{k}={v:g}" for k, v in arm.items() if k not in ("label", "method"))
    cell = " ".join(f"{a}={v}" for a, v in config.get("cell", {}).items())
    return f"{cell} {arm['label']} {knobs} seed={config['seed']}".replace("  ", " ").strip()


def _error_line(trial: Any) -> str:
    """The last line of a trial's latest traceback (read where the driver just appended it, not the synced copy)."""
    path = Path(trial.error_file or "")
    lines = path.read_text().strip().splitlines() if path.is_file() else []
    return lines[-1][:300] if lines else "unknown error"


def _callbacks(total: int, uri: str, experiment: str, tags: dict[str, str]) -> list[Any]:
    """Progress lines and MLflow child runs. Tune pickles them with the sweep and restores them on resume."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient
    from ray import tune
    from ray.air.integrations.mlflow import MLflowLoggerCallback
    from ray.tune.utils import flatten_dict

    class Progress(tune.Callback):
        """One line per finished trial, so long sweeps show where they are; the count survives a resume."""

        def __init__(self) -> None:
            self.finished, self.started = 0, time.monotonic()

        def get_state(self) -> dict[str, int]:
            return {"finished": self.finished}

        def set_state(self, state: dict[str, int]) -> None:
            self.finished, self.started = state["finished"], time.monotonic()

        def _line(self, trial: Any, outcome: str) -> None:
            self.finished += 1
            elapsed = time.monotonic() - self.started
            print(f"[{self.finished}/{total} {elapsed:5.0f}s] {_describe(trial.config)}: {outcome}", flush=True)

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            r = trial.last_result
            self._line(
                trial,
                f"test {100 * r['test_acc']:.1f}% (gain {100 * r['gain']:+.1f} pts), val {100 * r['val_acc']:.1f}%",
            )

        def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            print(f"retrying {_describe(trial.config)} after failure {trial.num_failures}: {_error_line(trial)}")

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._line(trial, f"FAILED: {_error_line(trial)}")

    class TrialRuns(MLflowLoggerCallback):
        """Child runs, plus a failed trial's error as a tag; a trial that starts again after its driver was
        killed ends its older run as KILLED, so the store holds no zombie RUNNING runs and one run per trial."""

        def setup(self, *args: Any, **kwargs: Any) -> None:
            super().setup(*args, **kwargs)
            self.client = MlflowClient(self.tracking_uri)

        def log_trial_start(self, trial: Any) -> None:
            new = trial not in self._trial_runs
            super().log_trial_start(trial)
            if new:
                parent = self.tags["mlflow.parentRunId"]
                older = self.client.search_runs(
                    [self.mlflow_util.experiment_id],
                    f"tags.`mlflow.parentRunId` = '{parent}' and tags.trial_name = '{trial}'",
                )
                for run in (r for r in older if r.info.run_id != self._trial_runs[trial]):
                    self.client.set_tag(run.info.run_id, "raykd.note", "its driver stopped; trial rerun by --resume")
                    self.client.set_terminated(run.info.run_id, "KILLED")

        def log_trial_result(self, iteration: int, trial: Any, result: dict[str, Any]) -> None:
            """A result's metrics in one MLflow write. The base class writes each alone (27 per epoch, 0.10-0.19 s
            on 2 cores) while the trial waits in ``tune.report``; one log_batch takes 0.01-0.02 s."""
            step = result.get("timesteps_total") or result["training_iteration"]
            now = int(time.time() * 1000)
            numbers = self.mlflow_util._parse_dict(flatten_dict(result))  # the base class's float conversion
            self.client.log_batch(self._trial_runs[trial], [Metric(k, v, now, step) for k, v in numbers.items()])

        def log_trial_end(self, trial: Any, failed: bool = False) -> None:
            if failed:
                self.client.set_tag(self._trial_runs[trial], "raykd.error", _error_line(trial))
            super().log_trial_end(trial, failed)

    return [Progress(), TrialRuns(tracking_uri=uri, experiment_name=experiment, tags=tags)]


def _failures_only(run_name: str, trials: Any) -> str:
    """The report of a sweep in which no trial succeeded: what each one failed with."""
    from raykd import report

    failures = report.markdown(trials[["label", "seed", "error"]].to_dict("records"))
    return f"# {run_name}\n\nNo trial succeeded.\n\n## Failed trials\n\n{failures}\n"


def run_sweep(cfg: ExperimentConfig, uri: str, resume: Sweep | None = None) -> tuple[Path, int]:
    """Run (or, given ``resume``, continue) the whole study; returns its output folder and failed-trial count."""
    import mlflow
    import ray
    from ray import tune

    from raykd import report
    from raykd.tracking import flatten

    raw = cfg.model_dump(mode="json")
    cells = study_cells(cfg)
    prepare_nodes(cells)
    arms = [{"label": m.display(), "method": m.name, **s} for m in cfg.methods for s in m.grid()]
    total = len(arms) * len(cfg.seeds) * len(cells)
    sweep = resume or Sweep(cfg.output_dir / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}", uri)
    out, run_name = sweep.out, sweep.out.name
    if not sweep.resumed:
        (out / "plots").mkdir(parents=True, exist_ok=True)
        write_atomic(out / "config.yaml", yaml.safe_dump(raw, sort_keys=False))
    verb = "resuming" if sweep.resumed else "sweep:"
    where = f"{len(cells)} cells x " if cfg.axes else ""
    print(f"{verb} {where}{len(arms)} settings x {len(cfg.seeds)} seeds = {total} trials; output in {out}", flush=True)
    server_name = f"raykd-teacher-{run_name}" if cfg.teacher.mode == "server" else None
    server = start_teacher_server(cells, server_name) if server_name else None
    resources, concurrent = trial_resources(cfg, ray.cluster_resources().get("CPU", 0))
    raws = {cell.key: cell.config.model_dump(mode="json") for cell in cells}
    trainable = tune.with_resources(
        tune.with_parameters(_trainable, raws=raws, server_name=server_name, sweep_dir=str(out)), resources
    )
    space = {"arm": tune.grid_search(arms), "seed": tune.grid_search(cfg.seeds)}
    if cfg.axes:
        space["cell"] = tune.grid_search([cell.variants for cell in cells])

    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(cfg.tracking.experiment)
    with mlflow.start_run(run_id=sweep.parent_run_id, run_name=None if sweep.resumed else run_name) as parent:
        if sweep.resumed:
            tuner = tune.Tuner.restore(str(out / "tune"), trainable, resume_unfinished=True, resume_errored=True)
        else:
            mlflow.log_params({k: str(v)[:500] for k, v in flatten(raw).items()})
            mlflow.log_artifact(str(out / "config.yaml"))
            sweep.save(parent.info.run_id)
            tags = {"mlflow.parentRunId": parent.info.run_id, "raykd.sweep": run_name}
            tuner = tune.Tuner(
                trainable,
                param_space=space,
                tune_config=tune.TuneConfig(
                    max_concurrent_trials=concurrent, reuse_actors=not cfg.learners.num_workers
                ),
                run_config=tune.RunConfig(
                    name="tune",
                    storage_path=str(out),
                    verbose=0,
                    failure_config=tune.FailureConfig(max_failures=cfg.tune.max_failures),
                    callbacks=_callbacks(total, uri, cfg.tracking.experiment, tags),
                ),
            )
        results = tuner.fit()
        trials = report.trial_rows([(r.config, r.metrics, r.error) for r in results])
        write_atomic(out / "trials.csv", trials.to_csv(index=False))  # first: nothing below can lose the results
        if (trials["status"] == "ok").any():
            text, figures, best = report.study(cfg, run_name, trials)
        else:  # report.study summarises successful trials and needs one
            text, figures, best = _failures_only(run_name, trials), {}, trials.iloc[:0]
        if server is not None:
            stats = ray.get(server.stats.remote())
            ray.kill(server)
            mlflow.log_metrics({f"server.{k}": v for k, v in stats.items() if isinstance(v, (int, float))})
            text += report.server_line(stats)
        failed = int((trials["status"] == "failed").sum())
        if cfg.federated.after_sweep:
            rounds, shaping = federated_followup(cfg, cells, out, uri, parent.info.run_id)
            write_atomic(out / "federated.csv", rounds.to_csv(index=False))
            mlflow.log_artifact(str(out / "federated.csv"))
            section, figure = report.federated_section(cfg, rounds, shaping)
            text += section
            figures["federated_rounds.png"] = figure
            failed += int((rounds["error"] != "").sum())
        write_atomic(out / "results.md", text)
        mlflow.log_artifact(str(out / "results.md"))
        mlflow.log_artifact(str(out / "trials.csv"))
        for name, fig in figures.items():
            png = io.BytesIO()
            fig.savefig(png, format="png", dpi=120)
            write_atomic(out / "plots" / name, png.getvalue())
            mlflow.log_figure(fig, f"plots/{name}")
        for _, row in best.iterrows():
            mlflow.log_metrics({f"{row['label']}.test_gain": row["gain"], f"{row['label']}.val_acc": row["val_acc"]})
        mlflow.log_metric("failed_trials", failed)
    print("\n" + text, flush=True)
    return out, failed


def federated_followup(
    cfg: ExperimentConfig, cells: list[Cell], out: Path, uri: str, parent_run_id: str
) -> tuple[pd.DataFrame, list[str]]:
    """After the sweep: the configured Flower simulation per seed and distinct partition of the study's cells.

    Cells that differ only in ``transfer.*`` share a partition, so they share one simulation. Each
    simulation is a child driver joined to this cluster (Flower shuts Ray down when it ends) and its
    MLflow run nests under the sweep's; a failed one is recorded with its error and the others still
    run. Returns one row per (cell, seed, start), and the axes that shape the partitions.
    """
    import pandas as pd
    import ray

    from federated.tune import simulate_child

    shaping = [a for a, vs in cfg.axes.items() if any(not k.startswith("transfer.") for o in vs.values() for k in o)]
    runs: dict[str, Cell] = {}
    for cell in cells:
        runs.setdefault(cell_key({a: cell.variants[a] for a in shaping}), cell)
    wait_for_free_cpus()
    address, rows, done, total = ray.get_runtime_context().gcs_address, [], 0, len(runs) * len(cfg.seeds)
    for name, cell in runs.items():
        variants = {a: cell.variants[a] for a in shaping}
        folder = out / "federated" / (name.replace(",", "_").replace("=", "-") or cfg.name)
        write_atomic(folder / "config.yaml", yaml.safe_dump(cell.config.model_dump(mode="json"), sort_keys=False))
        for seed in cfg.seeds:
            sets = [f"seeds=[{seed}]", f"tracking.uri={uri}", f"tracking.parent_run_id={parent_run_id}"]
            args = ["--config", str(folder / "config.yaml"), *(a for s in sets for a in ("--set", s))]
            done += 1
            try:
                starts = simulate_child(args, address, folder / f"seed{seed}", str(Path.cwd()))["starts"]
            except RuntimeError as err:
                rows.append({**variants, "seed": seed, "start": "-", "error": str(err)[:300]})
                print(f"[federated {done}/{total}] {name or cfg.name} seed={seed}: FAILED: {err}", flush=True)
                continue
            rows += [{**variants, "seed": seed, "start": k, **v, "error": ""} for k, v in starts.items()]
            rounds = {k: "never" if v["rounds_to_target"] is None else v["rounds_to_target"] for k, v in starts.items()}
            reached = ", ".join(f"{k} {n}" for k, n in rounds.items())
            print(
                f"[federated {done}/{total}] {name or cfg.name} seed={seed}: rounds to "
                f"{100 * cfg.federated.target_acc:.0f}%: {reached}",
                flush=True,
            )
    return pd.DataFrame(rows), shaping


def wait_for_free_cpus(timeout_s: float = 60) -> None:
    """Wait until the finished sweep's actors have released their CPUs: Flower's pool needs all of them."""
    import ray

    deadline = time.monotonic() + timeout_s
    while ray.available_resources().get("CPU", 0) < ray.cluster_resources().get("CPU", 0) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.5)


def federated_sweep(args: argparse.Namespace, cfg: ExperimentConfig) -> int:
    """A config with ``federated.grid`` searches over Flower simulations: one whole simulation per trial.

    ``federated.tune`` runs each trial's simulation as a child driver joined to the cluster (Flower
    shuts Ray down when it ends, which must not happen inside a trial's worker).
    """
    import json

    from federated.tune import main as federated_tune

    axes = [a for key, values in cfg.federated.grid.items() for a in ("--grid", f"{key}={json.dumps(values)}")]
    overrides = [*args.overrides, *([f"tracking.uri={args.tracking_uri}"] if args.tracking_uri else [])]
    sets = [a for s in overrides for a in ("--set", s)]
    address = ["--address", cfg.ray.address] if cfg.ray.address else []
    return federated_tune(["--config", str(args.config), *sets, *axes, *address])


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: 0 when every trial succeeded, 2 for bad input (one line on stderr), 3 when trials failed.

    Failed trials never cost the others: the sweep completes and its tables are written before exit 3.
    """
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    try:
        cfg, resume = open_sweep(args) if args.resume else (load(args), None)
        if cfg.federated.grid and resume is None:
            return federated_sweep(args, cfg)
        uri = preflight(cfg, resume)
        start_ray(cfg)
    except ConfigError as err:
        print(f"raykd: error: {err}", file=sys.stderr)
        return 2
    out, failed = run_sweep(cfg, uri, resume)
    if failed:
        what = "trial(s) or simulation(s)" if cfg.federated.after_sweep else "trial(s)"
        print(f"raykd: {failed} {what} failed; see 'Failed trials' in {out / 'results.md'}", file=sys.stderr)
        return EXIT_TRIALS_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
