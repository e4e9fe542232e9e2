"""MLflow writes of ``python -m raykd.tracking_sync``: fill a sweep's runs in after its tracking server failed.

Apart from ``raykd.tracking`` so that module stays one screenful of jobs; both are the only places that call MLflow.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from ray.tune.utils import flatten_dict

from raykd.tracking import log_student_model, metric_key, model_name, trial_run_name


def fill_in_trials(uri: str, parent_id: str, sweep: str, trials: list[tuple[dict[str, Any], dict[str, Any]]]) -> int:
    """One FINISHED child run per finished trial (identity, final metrics) of the sweep's parent run: a run the
    outage left open gets its final metrics and ends; a missing one is created. Returns how many it wrote."""
    client = MlflowClient(uri)
    experiment = client.get_run(parent_id).info.experiment_id
    children = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent_id}'", max_results=50000)
    written = 0
    for config, metrics in trials:
        config = {k: v for k, v in config.items() if v is not None}  # a sweep without axes has no cell
        params = {k: str(v) for k, v in flatten_dict(config).items()}  # as Tune's callback logs a trial's config
        runs = [r for r in children if params.items() <= r.data.params.items() and r.info.status != "KILLED"]
        if any(r.info.status == "FINISHED" for r in runs):
            continue
        if runs:
            run_id = runs[0].info.run_id
        else:
            tags = {"mlflow.parentRunId": parent_id, "raykd.sweep": sweep, "raykd.note": "filled in later"}
            run_id = client.create_run(experiment, run_name=trial_run_name(config), tags=tags).info.run_id
            client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])
        numbers = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(metric_key(k), v, now, 0) for k, v in numbers.items()])
        client.set_terminated(run_id, "FINISHED")
        written += 1
    return written


def finish_parent(
    uri: str, parent_id: str, files: list[tuple[Path, str | None]], sweep: str, students: dict[str, Path]
) -> int:
    """Reopen the sweep's parent run, log the (file, artifact folder) pairs and chosen students (named as the sweep
    names them, ``<sweep>-<row>``) it lacks, and end it FINISHED; returns how many items it logged (0 on a second
    call: nothing is logged twice)."""
    client = MlflowClient(uri)
    mlflow.set_tracking_uri(uri)
    has = {a.path for a in client.list_artifacts(parent_id)}
    for folder in {"plots", "students"} & has:
        has |= {a.path for a in client.list_artifacts(parent_id, folder)}
    missing = [(p, d) for p, d in files if "/".join(filter(None, [d, p.name])) not in has]
    named = {f"{sweep}-{n}": p for n, p in students.items()}
    todo = {n: p for n, p in named.items() if f"students/{model_name(n)}" not in has}
    with mlflow.start_run(run_id=parent_id):
        for path, folder in missing:
            mlflow.log_artifact(str(path), artifact_path=folder)
        for name, path in todo.items():
            log_student_model(name, path)
    return len(missing) + len(todo)
