"""Wall time of a 16-trial KD sweep with 1, 2 and 4 concurrent trials on 2 cores, and where that time goes.

    python benchmarks/sweep_concurrency.py                                   # this checkout
    python benchmarks/sweep_concurrency.py --repo BEFORE_CHECKOUT --repo AFTER_CHECKOUT          # before / after

The sweep is ``tune_configs/default.yaml`` cut to one method row, kd with temperature [1, 2, 4, 8] x
alpha [0.1, 0.25, 0.5, 0.75] (10 transfer epochs each), seed 0, on a 2-CPU Ray. Concurrency k runs
with ``tune.cpus_per_trial = 2 / k`` and ``tune.max_concurrent_trials = k``, so every setting uses
the whole machine. Node models, the dataset cache and the MLflow store are built first, in a child
process of their own, so the timed sweeps measure the sweep itself.

Each sweep is the real ``python -m raykd.tune`` entry point (``raykd.tune.main``) in a fresh child
process, with timers wrapped around its stages, a Tune callback that keeps every trial's results,
and accumulating timers on the driver's result processing, the MLflow child-run logger and Tune's
experiment-state checkpoint. ``--repo`` runs the same sweeps with raykd imported from other checkouts
(e.g. one with a proposed change applied), alternating, so before and after share one command.
Everything goes under a temporary folder: nothing touches ./runs or ./mlflow.db.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CORES = 2
GRID = "methods=[{name: kd, label: kd-tuned, temperature: [1, 2, 4, 8], alpha: [0.1, 0.25, 0.5, 0.75]}]"


def sweep_args(repo: Path, work: Path, concurrency: int, tag: str) -> list[str]:
    """``python -m raykd.tune`` arguments of the measured sweep at ``concurrency`` trials at a time."""
    sets = [
        GRID,
        "seeds=[0]",
        f"ray.num_cpus={CORES}",
        f"tune.cpus_per_trial={CORES / concurrency:g}",
        f"tune.max_concurrent_trials={concurrency}",
        f"nodes.cache_dir={work / 'cache'}",
        f"output_dir={work / 'runs' / tag}",
        "tracking.experiment=bench",
    ]
    config = repo / "tune_configs" / "default.yaml"
    args = ["--config", str(config), "--tracking-uri", f"sqlite:///{work / 'mlflow.db'}"]
    return args + [a for s in sets for a in ("--set", s)]


# ---------------------------------------------------------------- child process: one instrumented sweep


class Timers:
    """Stage marks (wall clock) and accumulated seconds/calls of functions called many times."""

    def __init__(self) -> None:
        self.marks: dict[str, float] = {}
        self.totals: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def stage(self, owner: Any, name: str, key: str) -> None:
        """Mark ``key.start`` and ``key.end`` around ``owner.name`` (its first call)."""
        inner = getattr(owner, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            self.marks.setdefault(f"{key}.start", time.time())
            try:
                return inner(*args, **kwargs)
            finally:
                self.marks.setdefault(f"{key}.end", time.time())

        setattr(owner, name, wrapper)

    def accumulate(self, owner: type, name: str, key: str) -> None:
        """Add every call's duration of method ``owner.name`` to ``totals[key]``."""
        inner = getattr(owner, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.totals[key] += time.perf_counter() - started
                self.calls[key] += 1

        setattr(owner, name, wrapper)


def child(argv: list[str], record: Path) -> int:
    """Run ``raykd.tune.main(argv)`` with timers; write what they saw to ``record`` (JSON)."""
    import ray.tune
    from ray.air.integrations.mlflow import MLflowLoggerCallback
    from ray.tune.execution.tune_controller import TuneController

    import raykd.cluster
    import raykd.preflight
    import raykd.sweep.run
    import raykd.tune as rt

    timers = Timers()
    timers.marks["imported"] = time.time()
    timers.marks["imported.cpu"] = time.process_time()  # the driver's CPU seconds: they do not grow with the load
    stages = {
        "preflight": raykd.preflight,
        "ensure_ray": raykd.cluster,
        "prepare_nodes": raykd.sweep.run,
        "run_sweep": raykd.sweep.run,
    }
    for name, owner in stages.items():
        timers.stage(owner, name, name)
    timers.stage(ray.tune.Tuner, "fit", "fit")
    timers.accumulate(TuneController, "_on_training_result", "driver_result_processing")
    timers.accumulate(TuneController, "checkpoint", "experiment_state_checkpoint")
    seen: dict[str, dict[str, Any]] = {}

    class Recorder(ray.tune.Callback):
        """Driver-side times of each trial's start and end, and the timing metrics of its results."""

        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            seen.setdefault(trial.trial_id, {"results": []})["start"] = time.time()

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            keep = ("time_total_s", "epoch_seconds", "eval_seconds")
            seen[trial.trial_id]["results"].append({k: result[k] for k in keep})

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            seen[trial.trial_id]["end"] = time.time()

    callbacks = raykd.sweep.run.callbacks

    def with_timers(*args: Any) -> list[Any]:
        """raykd's callbacks, their MLflow logger's methods timed, and the Recorder."""
        made = callbacks(*args)
        for logger in (c for c in made if isinstance(c, MLflowLoggerCallback)):
            for name in ("log_trial_start", "log_trial_result", "log_trial_end"):
                timers.accumulate(type(logger), name, f"mlflow_{name}")
        return [*made, Recorder()]

    raykd.sweep.run.callbacks = with_timers  # type: ignore[assignment]
    rc = rt.main(argv)
    timers.marks["shutdown.start"] = time.time()
    ray.shutdown()
    timers.marks["shutdown.end"] = time.time()
    timers.marks["shutdown.end.cpu"] = time.process_time()
    record.write_text(
        json.dumps(
            {
                "marks": timers.marks,
                "totals": timers.totals,
                "calls": timers.calls,
                "trials": seen,
            }
        )
    )
    return rc


def prebuild(argv: list[str]) -> int:
    """A one-trial, one-epoch run of the same sweep: trains (or finds) the node models, fills the dataset
    cache and creates the MLflow store's tables, so that none of it is timed."""
    import raykd.tune as rt

    one = ["methods=[{name: kd, label: warm-up, temperature: 1, alpha: 0.1}]", "transfer.train.epochs=1"]
    return rt.main([*argv, *(a for s in one for a in ("--set", s))])


# ---------------------------------------------------------------- parent: run the sweeps, then the tables


def run_child(repo: Path, mode: str, argv: list[str], record: Path) -> dict[str, Any]:
    """One child process with raykd imported from ``repo``; its record plus the parent's view of its wall time."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(repo)  # ahead of the editable install of this checkout
    spawned = time.time()
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), mode, str(record), *argv],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    ended = time.time()
    if done.returncode != 0:
        output = f"{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
        raise RuntimeError(f"{mode} in {repo} failed ({done.returncode}):\n{output}")
    info = json.loads(record.read_text()) if record.exists() else {}
    return {**info, "spawned": spawned, "exited": ended}


def breakdown(info: dict[str, Any], concurrency: int) -> dict[str, float]:
    """Split one sweep's wall time into its stages.

    A trial's span on the driver (started to completed) holds its training and evaluation seconds
    (its metrics), its own set-up before epoch 1 (Tune's ``time_total_s`` at the first result, a
    clock that starts with the trainable and does not run while ``tune.report`` waits, less that
    epoch's compute) and the rest: Tune's part, i.e. actor start or reuse, each report's round trip
    through the driver (result processing, MLflow) and the stop. Trial parts are summed over trials
    and divided by ``concurrency``; with the idle slot time they add up to the trials phase.
    """
    m, totals, trials = info["marks"], info["totals"], list(info["trials"].values())
    train = sum(r["epoch_seconds"] for t in trials for r in t["results"])
    evaluation = sum(r["eval_seconds"] for t in trials for r in t["results"])
    setup = sum(t["results"][0]["time_total_s"] - t["results"][0]["epoch_seconds"] for t in trials)
    setup -= sum(t["results"][0]["eval_seconds"] for t in trials)
    spans = sum(t["end"] - t["start"] for t in trials)
    first, last = min(t["start"] for t in trials), max(t["end"] for t in trials)
    return {
        "wall": info["exited"] - info["spawned"],
        "process start + imports": m["imported"] - info["spawned"],
        "preflight (dataset, models, MLflow check)": m["preflight.end"] - m["preflight.start"],
        "Ray start-up": m["ensure_ray.end"] - m["ensure_ray.start"],
        "node prep (all cached)": m["prepare_nodes.end"] - m["prepare_nodes.start"],
        "MLflow parent run + Tuner set-up": m["fit.start"] - m["prepare_nodes.end"],
        "Tune start-up (fit -> first trial started)": first - m["fit.start"],
        "trials phase (first start -> last end)": last - first,
        "  training compute (sum of epoch_seconds / k)": train / concurrency,
        "  per-epoch evaluation (sum of eval_seconds / k)": evaluation / concurrency,
        "  trial's own set-up before epoch 1 (/ k)": setup / concurrency,
        "  Tune per trial: actor, report round trips, stop (/ k)": (spans - train - evaluation - setup) / concurrency,
        "  idle trial slots (/ k)": (concurrency * (last - first) - spans) / concurrency,
        "Tune wind-down (last trial end -> fit returns)": m["fit.end"] - last,
        "tables, figures, MLflow artifacts": m["run_sweep.end"] - m["fit.end"],
        "ray.shutdown()": m["shutdown.end"] - m["shutdown.start"],
        "interpreter exit": info["exited"] - m["shutdown.end"],
        "driver CPU: process start + imports": m["imported.cpu"],
        "driver CPU: start to ray.shutdown() returned": m["shutdown.end.cpu"],
        "driver: result processing (total)": totals.get("driver_result_processing", 0.0),
        "driver: MLflow log_trial_result": totals.get("mlflow_log_trial_result", 0.0),
        "driver: MLflow log_trial_start + end": totals.get("mlflow_log_trial_start", 0.0)
        + totals.get("mlflow_log_trial_end", 0.0),
        "driver: experiment-state checkpoints": totals.get("experiment_state_checkpoint", 0.0),
        "results (epochs reported)": sum(len(t["results"]) for t in trials),
        "hand-overs to the driver (train calls)": info["calls"].get("driver_result_processing", 0),
    }


def markdown(columns: dict[str, dict[str, float]]) -> str:
    names = list(columns)
    rows = list(next(iter(columns.values())))
    lines = ["| seconds | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for row in rows:
        values = [columns[n][row] for n in names]
        cells = [f"{v:.0f}" if row.startswith(("results", "hand-overs")) else f"{v:.1f}" for v in values]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if argv[:1] == ["child"]:  # internal: child RECORD ARGS..., one instrumented sweep
        return child(argv[2:], Path(argv[1]))
    if argv[:1] == ["prebuild"]:
        return prebuild(argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, action="append", help="checkout to import raykd from (repeatable)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--repeats", type=int, default=1, help="rounds over every (repo, concurrency)")
    parser.add_argument("--work", type=Path, help="temporary folder (default: a new one under /tmp)")
    args = parser.parse_args(argv)

    repos = [r.resolve() for r in args.repo or [REPO]]
    work = args.work or Path(tempfile.mkdtemp(prefix="raykd-sweep-bench-"))
    load: list[float] = list(os.getloadavg())
    print(f"work folder {work}; load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
    prep = time.time()
    run_child(repos[0], "prebuild", sweep_args(repos[0], work, 1, "prebuild"), work / "prebuild.json")
    print(f"prebuild (node models, dataset, MLflow store): {time.time() - prep:.0f}s", flush=True)
    walls: dict[str, list[float]] = defaultdict(list)
    columns: dict[str, dict[str, float]] = {}
    for repeat in range(args.repeats):
        for k in args.concurrency:
            for i, repo in enumerate(repos):
                name = f"k={k}" + (f" repo{i}" if len(repos) > 1 else "")
                tag = f"{name.replace(' ', '-').replace('=', '')}-r{repeat}"
                info = run_child(repo, "child", sweep_args(repo, work, k, tag), work / f"{tag}.json")
                parts = breakdown(info, k)
                walls[name].append(parts["wall"])
                columns[name] = parts  # the last repeat's breakdown
                print(f"{name} (repeat {repeat}): {parts['wall']:.1f}s, load {os.getloadavg()[0]:.2f}", flush=True)
    print("\nrepos: " + ", ".join(f"repo{i} = {r}" for i, r in enumerate(repos)))
    print("\n## Sweep wall time (s), per repeat\n")
    for name, values in walls.items():
        print(f"- {name}: " + ", ".join(f"{v:.1f}" for v in values) + f" (median {statistics.median(values):.1f})")
    print("\n## Where the time goes (last repeat)\n")
    print(markdown(columns))
    load = list(os.getloadavg())
    print(f"\nload average at end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
