"""The sweep: every method row, at every point of its grid and every seed (and cell), as one Ray Tune trial.

The sweep is one MLflow parent run; each trial is a child run with its params and per-epoch metrics.
The trials' table is written first, so nothing after it can lose the results; they never depend on the
tracking server (``SweepResult.untracked`` says what it lacks). Ctrl-C is Tune's: it stops the trials and
saves its state, and the sweep stops with one line saying how to continue (``Interrupted``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import ray
import yaml
from ray import tune

from raykd import report
from raykd.compat import QuietTuneInterruption
from raykd.config import Cell, ExperimentConfig
from raykd.errors import Interrupted
from raykd.files import write_atomic
from raykd.preflight import Plan
from raykd.search_cost import cost_metrics
from raykd.sweep.followup import failed_simulations, federated_followup, federated_section
from raykd.sweep.prepare import prepare_nodes, start_teacher_server
from raykd.sweep.progress import Progress
from raykd.sweep.search import Stage, stages
from raykd.sweep.simulation import simulation_trainable
from raykd.sweep.state import Ended, Sweep, ended, new_sweep, resume_hint
from raykd.sweep.students import best_of, keep_chosen
from raykd.sweep.trial import trainable, trial_resources
from raykd.tracking import ParentRun, count_lost_in, parent_run, trial_runs
from raykd.untracked import Untracked


@dataclass(frozen=True)
class SweepResult:
    """What a finished sweep leaves: its folder, its tables, and the distilled students of the chosen settings."""

    out: Path
    trials: pd.DataFrame
    summary: pd.DataFrame
    students: dict[str, list[Path]]
    failed: int


def run_sweep(plan: Plan, resume: Sweep | None = None, lost: Untracked | None = None) -> SweepResult:
    """Run (or, given ``resume``, continue) the whole study its preflight planned; the store's refused writes count
    in ``lost``."""
    cfg, cells, uri = plan.config, plan.cells, plan.uri
    if cfg.tune.trial == "transfer":  # a simulation trains its clients from scratch
        prepare_nodes(cells)
    sweep = resume or new_sweep(cfg, uri)
    raw = cfg.model_dump(mode="json")
    if not sweep.resumed:
        write_atomic(sweep.out / "config.yaml", yaml.safe_dump(raw, sort_keys=False))
    staged = stages(cfg, cells)
    total = sum(stage.trials for stage in staged)
    verb = "resuming" if sweep.resumed else "sweep:"
    where = f"{len(cells)} cells x " if cfg.axes else ""
    settings = total // (len(cfg.seeds) * len(cells))  # per cell: every row's grid points or drawn settings
    how = f"{cfg.tune.search} search, {cfg.tune.scheduler} scheduler"
    print(
        f"{verb} {where}{settings} settings x {len(cfg.seeds)} seeds = {total} trials ({how}); output in {sweep.out}",
        flush=True,
    )
    try:
        return _run(cfg, cells, sweep, uri, raw, staged, lost or Untracked())
    except KeyboardInterrupt:  # a Ctrl-C outside Tune's loop (or a second one while Tune saves its state)
        raise Interrupted(resume_hint(sweep)) from None


def _run(
    cfg: ExperimentConfig, cells: list[Cell], sweep: Sweep, uri: str, raw: dict, staged: list[Stage], lost: Untracked
) -> SweepResult:
    served = cfg.teacher.mode == "server" and cfg.tune.trial == "transfer"  # a simulation serves its own
    server_name = f"raykd-teacher-{sweep.name}" if served else None
    server = start_teacher_server(cells, server_name) if server_name else None
    with parent_run(uri, cfg.tracking.experiment, sweep.name, sweep.parent_run_id, lost) as parent:
        if not sweep.resumed:
            parent.log_config(raw, sweep.out / "config.yaml")
            sweep.save(parent.run_id)
        budgets = {cell.key: cell.config.trial_epochs for cell in cells}
        progress = Progress(sum(stage.trials for stage in staged), sweep.out, budgets)
        done: list[Ended] = []
        for stage in staged:
            callbacks = [progress, trial_runs_of(cfg, sweep, parent)]
            tuner = build_tuner(cfg, cells, sweep, server_name, stage, callbacks, parent.run_id)
            count_lost_in(tuner, lost)
            with _quiet_interruption():
                results = tuner.fit()
            finished = ended([(r.config, r.metrics, r.error) for r in results], sweep.out)
            if len(finished) < stage.trials:  # Tune stopped on Ctrl-C: no tables yet
                raise Interrupted(resume_hint(sweep))
            done += finished
        trials = report.in_config_order(report.trial_rows(done, budgets), cfg)
        write_atomic(sweep.out / "trials.csv", trials.to_csv(index=False))  # first: nothing below can lose them
        return write_report(cfg, cells, sweep, trials, server, parent)


@contextmanager
def _quiet_interruption() -> Iterator[None]:
    tune_logger, quiet = logging.getLogger(QuietTuneInterruption.LOGGER), QuietTuneInterruption()
    tune_logger.addFilter(quiet)
    try:
        yield
    finally:
        tune_logger.removeFilter(quiet)


def build_tuner(
    cfg: ExperimentConfig,
    cells: list[Cell],
    sweep: Sweep,
    server_name: str | None,
    stage: Stage,
    callbacks: list[tune.Callback],
    parent_run_id: str,
) -> tune.Tuner:
    """A new Tuner for one stage of the sweep, or that stage restored from the sweep's folder (its searcher's and
    scheduler's state with it)."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # raykd prints its own one line per trial
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")  # fresh Tune state: --resume reruns little
    resources, concurrent = trial_resources(cfg, ray.cluster_resources().get("CPU", 0))
    configs, out = {cell.key: cell.config for cell in cells}, str(sweep.out)
    if cfg.tune.trial == "simulation":
        run = tune.with_parameters(
            simulation_trainable,
            cells=configs,
            sweep_dir=out,
            uri=sweep.uri,
            parent_run_id=parent_run_id,
            cwd=os.getcwd(),
        )
    else:
        run = tune.with_parameters(trainable, cells=configs, server_name=server_name, sweep_dir=out)
    run = tune.with_resources(run, resources)
    if sweep.resumed and tune.Tuner.can_restore(str(sweep.out / stage.name)):
        return tune.Tuner.restore(str(sweep.out / stage.name), run, resume_unfinished=True, resume_errored=True)
    return tune.Tuner(
        run,
        param_space=stage.space,
        tune_config=tune.TuneConfig(
            max_concurrent_trials=concurrent,
            reuse_actors=not cfg.learners.num_workers,
            search_alg=stage.searcher,
            scheduler=stage.scheduler,
            num_samples=stage.trials if stage.searcher else 1,
        ),
        run_config=tune.RunConfig(
            name=stage.name,
            storage_path=str(sweep.out),
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=cfg.tune.max_failures),
            callbacks=callbacks,
        ),
    )


def trial_runs_of(cfg: ExperimentConfig, sweep: Sweep, parent: ParentRun) -> tune.Callback:
    """The driver's MLflow work per trial: its child run under the sweep's parent run."""
    return trial_runs(sweep.uri, cfg.tracking.experiment, parent, sweep.name)


def write_report(
    cfg: ExperimentConfig, cells: list[Cell], sweep: Sweep, trials: pd.DataFrame, server: Any, parent: ParentRun
) -> SweepResult:
    """Tables, figures, the chosen students, the server's statistics and the federated follow-up."""
    out = sweep.out
    if (trials["status"] == "ok").any():
        study = report.study(cfg, sweep.name, trials)
        text, figures, best = study.text, study.figures, study.best
        write_atomic(out / "paired.csv", study.paired.to_csv(index=False))
        parent.log_files(out / "paired.csv")
        parent.log_metrics(paired_metrics(study.paired, list(cfg.axes)))
        parent.log_metrics(cost_metrics(study.search_cost, list(cfg.axes)))
    else:  # report.study summarises successful trials and needs one
        text, figures, best = report.failures_only(sweep.name, trials), {}, trials.iloc[:0]
    if server is not None:
        stats = server.stats()  # every replica's, as one server's
        server.kill()
        parent.log_metrics({f"server.{k}": v for k, v in stats.items() if isinstance(v, (int, float))})
        text += report.server_line(stats)
    failed = int((trials["status"] == "failed").sum())
    if cfg.federated.after_sweep:
        rounds, shaping = federated_followup(cfg, cells, out, sweep.uri, parent.run_id)
        write_atomic(out / "federated.csv", rounds.to_csv(index=False))
        parent.log_files(out / "federated.csv")
        section, figure = federated_section(cfg, rounds, shaping)
        text += section
        figures["federated_rounds.png"] = figure
        failed += failed_simulations(rounds, shaping)
    students = keep_chosen(cfg, out, best)
    chosen = {name: best_of(paths) for name, paths in students.items()}
    if cfg.data.task == "lm":
        from raykd.lm.samples import samples_section  # language models' samples: torch, loaded for them only
        from raykd.nodes import dataset_of

        text += samples_section(chosen, dataset_of(cfg).test_x)
    write_atomic(out / "results.md", text)
    parent.log_files(out / "results.md", out / "trials.csv")
    parent.log_figures(figures, out / "plots")
    for _, row in best.iterrows():
        parent.log_metrics({f"{row['label']}.test_gain": row["gain"], f"{row['label']}.val_acc": row["val_acc"]})
        if "val_ppl" in row:
            parent.log_metrics({f"{row['label']}.val_ppl": row["val_ppl"], f"{row['label']}.test_ppl": row["test_ppl"]})
    parent.log_metrics({"failed_trials": failed})
    parent.log_students(cfg.name, chosen)
    print("\n" + text, flush=True)
    return SweepResult(out, trials, best, students, failed)


def paired_metrics(paired: pd.DataFrame, axes: list[str]) -> dict[str, float]:
    """Each paired comparison's mean difference and interval bounds as parent-run metrics."""
    metrics = {}
    for _, r in paired.iterrows():
        name = ".".join(["paired", *(str(r[a]) for a in axes), f"{r['tuned']}-vs-{r['untuned']}"])
        metrics.update({f"{name}.{part}": r[part] for part in ("mean", "low", "high", "wins")})
    return metrics
