"""MLflow, and only here: an embedded sqlite store by default, a real tracking server when a URI is given.

The sweep's parent run (config, params, tables, figures, best metrics, distilled students), its trial
child runs (one per Tune trial, written from the driver by a Tune callback) and the Flower simulations'
runs are all opened and written by this module; no other module imports mlflow but ``raykd.compat``, which
holds the private MLflow touches used here. Local results never depend on the store: every write goes through
the sweep's ``Untracked.remote``, which bounds MLflow's HTTP retries, catches a failure, remembers it (later writes
are skipped, so a dead server costs seconds, not minutes) and lets the sweep finish; ``Untracked.line`` then says
in one line what the store lacks.
"""

from __future__ import annotations

import io
import logging
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pytorch
import torch
from filelock import FileLock
from matplotlib.figure import Figure
from mlflow.entities import Metric, RunTag
from mlflow.exceptions import MlflowException
from mlflow.models.model import ModelInfo
from mlflow.tracking import MlflowClient
from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.tune.utils import flatten_dict

from raykd.cluster import NODE_ID
from raykd.compat import callback_experiment_id, forget_active_mlflow_runs, logged_trial_runs, tuner_callbacks
from raykd.errors import ConfigError
from raykd.export import model_dependencies
from raykd.files import LOCK_WAIT_S, last_line, lock_file, write_atomic
from raykd.lm.hf import pretrained_folder
from raykd.students import load_student, read_student
from raykd.sweep.students import row_name, setting_name
from raykd.untracked import Untracked

DEFAULT_STORE = "mlflow.db"
#: The folder beside a sqlite store that holds its artifacts (figures, files, models).
ARTIFACTS = "mlartifacts"
#: MLflow's defaults retry an unreachable server for minutes (7 retries, 120 s timeouts); these bound it to
#: seconds. Set here, before any client exists, so the driver and every process it starts (Ray's workers,
#: the follow-up simulations) inherit them; a user's own values win.
HTTP_LIMITS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}
for _name, _value in HTTP_LIMITS.items():
    os.environ.setdefault(_name, _value)
logging.getLogger("mlflow.pytorch").setLevel(logging.ERROR)  # its warning on pickled models, once per student
log = logging.getLogger("raykd.tracking")


def resolve_uri(uri: str | None) -> str:
    """The tracking URI to use: the given one, else a sqlite file in the working folder."""
    return uri or f"sqlite:///{Path(DEFAULT_STORE).resolve()}"


def check_reachable(uri: str) -> None:
    """Fail before any training when the store cannot take runs, saying how to get one that can."""
    hint = (
        "start one with `mlflow server --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000`, "
        "or leave tracking.uri unset to use the embedded sqlite store"
    )
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=5) as response:
                if response.status != 200:
                    raise ConfigError(f"tracking.uri: {uri} answered {response.status} to /health; {hint}")
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise ConfigError(f"tracking.uri: cannot reach MLflow at {uri} ({reason}); {hint}") from None
    elif uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise ConfigError(f"tracking.uri: folder {folder} of {uri} does not exist or is not writable")
    else:
        raise ConfigError(f"tracking.uri: {uri!r} is not supported; allowed: sqlite:///PATH or http(s)://HOST:PORT")


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Two processes creating a sqlite store's tables (or one experiment) at once make one fail: take turns."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    with FileLock(lock_file(Path(uri.removeprefix("sqlite:///"))), timeout=LOCK_WAIT_S):
        yield


def use_experiment(uri: str, experiment: str) -> None:
    """Make ``experiment`` the active one, creating it first if needed. In a sqlite store its artifacts go to
    ``mlartifacts/`` beside the database: MLflow's own default is ``./mlruns`` of whatever folder the command
    ran in, far from the store that names them."""
    mlflow.set_tracking_uri(uri)
    with store_lock(uri):
        if uri.startswith("sqlite:///") and mlflow.get_experiment_by_name(experiment) is None:
            artifacts = Path(uri.removeprefix("sqlite:///")).resolve().parent / ARTIFACTS
            mlflow.create_experiment(experiment, artifact_location=artifacts.as_uri())
        mlflow.set_experiment(experiment)


def check_run_exists(uri: str, run_id: str, what: str) -> None:
    """A run to continue (``--resume``) must still be in its store; a missing sqlite store is not created."""
    missing = f"{what}: MLflow run {run_id} of this sweep is not in {uri}"
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise ConfigError(f"{missing} (the store file is gone)")
    try:
        MlflowClient(uri).get_run(run_id)
    except MlflowException:
        raise ConfigError(missing) from None


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config -> ``{"section.key": value}`` for MLflow params; a list of sections (the method rows)
    flattens by index, ``methods.0.alpha``, as ``--set`` names it."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            value = {str(i): v for i, v in enumerate(value)}
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _params(raw: dict[str, Any]) -> dict[str, str]:
    return {k: str(v)[:500] for k, v in flatten(raw).items()}


class ParentRun:
    """The sweep's MLflow run, open while the sweep runs: what the driver records beside its files."""

    def __init__(self, run_id: str, lost: Untracked) -> None:
        self.run_id, self.lost = run_id, lost

    def log_config(self, raw: dict[str, Any], config_file: Path) -> None:
        self.lost.remote("config params", lambda: mlflow.log_params(_params(raw)))
        self.lost.remote(config_file.name, lambda: mlflow.log_artifact(str(config_file)))

    def log_files(self, *paths: Path) -> None:
        for path in paths:
            self.lost.remote(path.name, lambda path=path: mlflow.log_artifact(str(path)))

    def log_metrics(self, metrics: dict[str, float]) -> None:
        """Metrics under keys MLflow accepts: a method label or cell name may hold any character."""
        self.lost.remote(
            "sweep metrics", lambda: mlflow.log_metrics({metric_key(k): float(v) for k, v in metrics.items()})
        )

    def log_students(self, sweep: str, best: dict[str, Path]) -> None:
        """Each method row's best student (over seeds, on validation) as an MLflow model in the parent run, named
        (and registered as) ``<sweep>-<row>``: each sweep of a config adds a version."""
        for name, path in best.items():
            self.lost.remote("students", lambda name=name, path=path: log_student_model(f"{sweep}-{name}", path))

    def log_figures(self, figures: dict[str, Figure], folder: Path) -> None:
        """Each figure as a PNG in ``folder`` and under ``plots/`` in the run, then closed."""
        for name, fig in figures.items():
            png = io.BytesIO()
            fig.savefig(png, format="png", dpi=120)
            write_atomic(folder / name, png.getvalue())
            self.lost.remote("plots", lambda name=name, fig=fig: mlflow.log_figure(fig, f"plots/{name}"))
            close_figure(fig)


def close_figure(fig: Figure) -> None:
    """Let pyplot drop a logged figure: it keeps every figure it made alive until closed, and a study makes
    dozens. pyplot is imported here, after the figure's maker chose its backend (raykd.plots: Agg)."""
    import matplotlib.pyplot as plt

    plt.close(fig)


def metric_key(text: str) -> str:
    """``text`` as an MLflow metric key: characters it refuses become ``_``."""
    return re.sub(r"[^A-Za-z0-9_\-. /]+", "_", text)


def model_name(text: str) -> str:
    """``text`` as an MLflow model name (letters, digits, ``_`` and ``-`` only)."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_") or "model"


def log_student_model(name: str, path: Path) -> None:
    """A student file as an MLflow PyTorch model named ``name`` (registered under it too): with an input example
    (its signature), its own metrics (val/test accuracy) and setting, the code and requirements its classes need
    (``model_dependencies``), and the file itself; ``mlflow.pytorch.load_model`` then loads it elsewhere.

    It is pickled (not torch.export's pt2), so any module the user wrote loads back as that module.
    """
    name = model_name(name)
    model, about = load_student(path), read_student(path)
    info = about["info"]
    tokens = info.get("task") == "lm"  # a language model's input is token ids
    example = torch.zeros(1, *about["input_shape"], dtype=torch.int64 if tokens else torch.float32).numpy()
    requirements, code_paths, why_not = model_dependencies(model)
    if why_not:
        log.warning("MLflow model %s: no code_paths (%s)", name, why_not)
    logged = mlflow.pytorch.log_model(
        model,
        name=name,
        input_example=example,
        pip_requirements=requirements,
        code_paths=code_paths or None,
        serialization_format="pickle",
        metadata={"preprocess": about.get("preprocess"), "setting": info.get("setting", {}), "seed": info.get("seed")},
    )
    register(name, logged)
    # A model's metrics are its run's too: keyed by the model, so they never join the run's own histories.
    numbers = {f"{name}.{k}": float(v) for k, v in info.get("metrics", {}).items() if isinstance(v, (int, float))}
    mlflow.log_metrics(numbers, model_id=logged.model_id)
    setting = {"seed": info.get("seed"), **info.get("setting", {})}
    mlflow.log_model_params({k: str(v) for k, v in setting.items() if v is not None}, model_id=logged.model_id)
    mlflow.log_artifact(str(path), artifact_path=f"students/{name}")
    if pretrained_folder(path).is_dir():  # a transformers student: its save_pretrained folder too
        mlflow.log_artifacts(str(pretrained_folder(path)), artifact_path=f"students/{name}/hf")


def register(name: str, logged: ModelInfo) -> None:
    """A new version of registered model ``name`` (created on first use), through the client: MLflow's fluent
    ``registered_model_name`` prints two lines per model to stderr."""
    client = MlflowClient()
    try:
        client.create_registered_model(name)
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    client.create_model_version(name, logged.model_uri, logged.run_id, model_id=logged.model_id)


@contextmanager
def parent_run(
    uri: str, experiment: str, run_name: str, run_id: str | None = None, lost: Untracked | None = None
) -> Iterator[ParentRun]:
    """Open (or, given ``run_id``, reopen) the sweep's parent run for the ``with`` block; its writes that the store
    refuses are counted in ``lost`` (the caller's, or a new one at ``ParentRun.lost``).

    It ends FINISHED, KILLED on Ctrl-C (``--resume`` reopens it) or FAILED; ending it is a ``remote`` write.
    """
    lost = lost or Untracked()
    use_experiment(uri, experiment)
    run = mlflow.start_run(run_id=run_id, run_name=None if run_id else run_name)
    status = "FAILED"
    try:
        yield ParentRun(run.info.run_id, lost)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        lost.remote("the sweep run's end", lambda: mlflow.end_run(status))
        forget_active_runs()


def forget_active_runs() -> None:
    """Drop this process's open MLflow runs without asking the store, which ``remote`` may have stopped asking.

    MLflow keeps the active run in the process; one left open (its end skipped after the store failed) would
    make the next sweep in the same process (the Python API, a notebook) fail to start its own run.
    """
    forget_active_mlflow_runs()


def trial_error(trial: Any) -> str:
    """The last line of a trial's latest traceback (read where the driver just appended it, not the synced copy)."""
    path = Path(trial.error_file or "")
    return last_line(path.read_text()) if path.is_file() else "unknown error"


class TrialRuns(MLflowLoggerCallback):
    """A Tune callback writing one MLflow child run per trial, nested under the sweep's parent run.

    A failed trial's error becomes a tag; a trial that starts again after its driver was killed ends
    its older run as KILLED, so the store holds no zombie RUNNING runs and one run per trial.
    Tune pickles this callback with the sweep and restores it on ``--resume``.
    """

    lost: Untracked

    def setup(self, *args: Any, **kwargs: Any) -> None:
        with store_lock(self.tracking_uri):
            super().setup(*args, **kwargs)
        self.client = MlflowClient(self.tracking_uri)

    def log_trial_start(self, trial: Any) -> None:
        self.lost.remote("trial runs", lambda: self._start(trial))

    def _start(self, trial: Any) -> None:
        new = trial not in logged_trial_runs(self)
        super().log_trial_start(trial)
        if new:
            self.client.set_tag(logged_trial_runs(self)[trial], "mlflow.runName", trial_run_name(trial.config))
            parent = self.tags["mlflow.parentRunId"]
            older = self.client.search_runs(
                [callback_experiment_id(self)],
                f"tags.`mlflow.parentRunId` = '{parent}' and tags.trial_name = '{trial}'",
            )
            for run in (r for r in older if r.info.run_id != logged_trial_runs(self)[trial]):
                self.client.set_tag(run.info.run_id, "raykd.note", "its driver stopped; trial rerun by --resume")
                self.client.set_terminated(run.info.run_id, "KILLED")

    def log_trial_result(self, iteration: int, trial: Any, result: dict[str, Any]) -> None:
        """A result's metrics, and the Ray node the trial runs on as tag ``ray.node_id``, in one MLflow write.
        The base class writes each metric alone (27 per epoch, 0.10-0.19 s on 2 cores) while the trial waits in
        ``tune.report``; one log_batch takes 0.01-0.02 s."""
        step = result.get("timesteps_total") or result["training_iteration"]
        now = int(time.time() * 1000)
        numbers = numeric(flatten_dict({k: v for k, v in result.items() if k != NODE_ID}))
        metrics = [Metric(k, v, now, step) for k, v in numbers.items()]
        tags = [RunTag(NODE_ID, str(result[NODE_ID]))] if NODE_ID in result else []
        self.lost.remote(
            "trial results", lambda: self.client.log_batch(logged_trial_runs(self)[trial], metrics, tags=tags)
        )

    def log_trial_end(self, trial: Any, failed: bool = False) -> None:
        self.lost.remote("trial ends", lambda: self._end(trial, failed))

    def _end(self, trial: Any, failed: bool) -> None:
        if failed:
            self.client.set_tag(logged_trial_runs(self)[trial], "raykd.error", trial_error(trial))
        super().log_trial_end(trial, failed)


def numeric(metrics: dict[str, Any]) -> dict[str, float]:
    """The values of ``metrics`` that are numbers, as floats: all MLflow takes as metrics (strings, lists and None
    in a Tune result are skipped)."""
    out = {}
    for key, value in metrics.items():
        try:
            out[key] = float(value)
        except (TypeError, ValueError):
            continue
    return out


def trial_run_name(config: dict[str, Any]) -> str:
    """A trial's MLflow run name, ``[<cell>/]<row> <setting> seed<S>``, so the UI tells rows, settings and seeds
    apart (Tune's own name is ``trainable_<id>``)."""
    arm = config["arm"]
    setting = {k: v for k, v in arm.items() if k not in ("label", "method")}
    return f"{row_name(config.get('cell') or {}, arm['label'])} {setting_name(setting)} seed{config['seed']}"


def trial_runs(uri: str, experiment: str, parent: ParentRun, sweep_name: str) -> TrialRuns:
    """The callback writing ``parent``'s trial runs; its refused writes count in ``parent.lost``."""
    callback = TrialRuns(
        tracking_uri=uri,
        experiment_name=experiment,
        tags={"mlflow.parentRunId": parent.run_id, "raykd.sweep": sweep_name},
    )
    callback.lost = parent.lost
    return callback


def count_lost_in(tuner: Any, lost: Untracked) -> None:
    """Point a Tuner's ``TrialRuns`` at this sweep's ``lost``: a Tuner restored by ``--resume`` brings the callback
    Tune pickled, holding the earlier process's record."""
    for callback in tuner_callbacks(tuner):
        if isinstance(callback, TrialRuns):
            callback.lost = lost


def log_simulation(
    uri: str,
    experiment: str,
    run_name: str,
    raw: dict[str, Any],
    tags: dict[str, str],
    steps: list[tuple[int, dict[str, float]]],
    summary: dict[str, float],
    figure: Figure,
    files: list[Path],
    models: dict[str, Path],
) -> None:
    """One Flower simulation as one MLflow run: its config, per-round metrics, summary, plot, files and models."""
    use_experiment(uri, experiment)
    with mlflow.start_run(run_name=run_name, tags=tags):
        mlflow.log_params(_params(raw))
        for step, metrics in steps:
            mlflow.log_metrics(metrics, step=step)
        mlflow.log_metrics(summary)
        mlflow.log_figure(figure, "accuracy.png")
        for path in files:
            mlflow.log_artifact(str(path))
        for name, path in models.items():
            log_student_model(f"{raw['name']}-{name}", path)
