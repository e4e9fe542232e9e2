"""A sweep's home: its output folder, and what ``--resume`` needs to find it again after the driver died.

The folder holds ``config.yaml``, Ray Tune's state (``tune/``, and ``search-*/`` for searched rows, each with
its searcher's and scheduler's state), ``sweep.json`` (the MLflow store
and parent run) and ``finished/`` (each finished trial's final result, written by the driver as it prints
the trial's line). Tune's state is saved every second or so and may lag a killed driver; ``finished/``
does not, so ``--resume`` replays a recorded result instead of training that trial again. Every gap in
an interrupted sweep is one ConfigError line saying what to do instead.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import cloudpickle, tune
from ray.tune.result import AUTO_RESULT_KEYS

from raykd.config import ExperimentConfig, load_config
from raykd.errors import ConfigError
from raykd.files import safe_component, write_atomic

#: What Tune adds to a trial's reported metrics (a replayed result carries only what the trial reported).
TUNE_KEYS = {*AUTO_RESULT_KEYS, "trial_id", "done", "experiment_tag", "should_checkpoint"}
#: The first byte of a pickle (protocol 2+): Tune writes some state as pickles whatever their suffix.
PICKLE_START = b"\x80"


@dataclass(frozen=True)
class Sweep:
    """Where a sweep lives; saved as ``sweep.json`` in its output folder so ``--resume`` can find it again."""

    out: Path
    uri: str
    parent_run_id: str | None = None

    @property
    def resumed(self) -> bool:
        return self.parent_run_id is not None

    @property
    def name(self) -> str:
        return self.out.name

    def save(self, parent_run_id: str) -> None:
        write_atomic(self.out / "sweep.json", json.dumps({"uri": self.uri, "parent_run_id": parent_run_id}, indent=2))


def new_sweep(cfg: ExperimentConfig, uri: str) -> Sweep:
    """A fresh output folder ``<name>-<time>``, made here so two sweeps started together never share one."""
    stem = f"{safe_component(cfg.name)}-{time.strftime('%Y%m%d-%H%M%S')}"  # the schema already refuses unsafe names
    cfg.output_dir.mkdir(parents=True, exist_ok=True)
    for attempt in range(1000):
        out = cfg.output_dir / (stem if attempt == 0 else f"{stem}-{attempt + 1}")
        try:
            out.mkdir()
        except FileExistsError:
            continue
        return Sweep(out, uri)
    raise ConfigError(f"output_dir: {cfg.output_dir} already holds 1000 sweeps named {stem}; pick another name")


def open_sweep(path: Path, address: str | None) -> tuple[ExperimentConfig, Sweep]:
    """The config and records of the interrupted sweep at ``--resume PATH``."""
    path = path.resolve()
    expected = "expected a sweep's output folder runs/<name>-<time>/"
    if not path.is_dir():
        raise ConfigError(f"--resume {path}: no such folder; {expected}")
    if not (path / "config.yaml").is_file():
        raise ConfigError(f"--resume {path}: holds no config.yaml; {expected}")
    cfg = load_config(path / "config.yaml", [f"ray.address={address}"] if address else [])
    anew = f"run it anew with --config {path / 'config.yaml'}"
    if (path / "results.md").exists():
        raise ConfigError(
            f"--resume {path}: this sweep already finished (results.md is there); nothing to resume "
            f"(to fill MLflow in after an outage: python -m raykd.tracking_sync {path})"
        )
    try:
        record = json.loads((path / "sweep.json").read_text())
        sweep = Sweep(path, str(record["uri"]), str(record["parent_run_id"]))
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError(
            f"--resume {path}: sweep.json is missing or unreadable (the sweep stopped before it started); {anew}"
        ) from None
    started = [folder for folder in stage_folders(path) if tune.Tuner.can_restore(str(folder))]
    if not started:
        raise ConfigError(f"--resume {path}: no Ray Tune state in {path / 'tune'} (no trial had started); {anew}")
    for folder in started:
        check_tune_state(folder, f"--resume {path}", anew)
    return cfg, sweep


def stage_folders(out: Path) -> list[Path]:
    """The Ray Tune experiments of a sweep's folder: ``tune/``, and one ``search-*/`` per searched row and cell."""
    return [folder for folder in (out / "tune", *sorted(out.glob("search-*"))) if folder.is_dir()]


def check_tune_state(folder: Path, what: str, anew: str) -> None:
    """Every Ray Tune state file in ``folder`` reads back (pickles and JSON), so a corrupted one is one line here
    instead of an UnpicklingError once the resumed sweep has started."""
    for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        data = path.read_bytes()
        try:
            cloudpickle.loads(data) if data[:1] == PICKLE_START else json.loads(data)
        except Exception as err:  # noqa: BLE001 - whatever the damage, the state cannot be trusted
            raise ConfigError(
                f"{what}: Ray Tune's state file {path.name} is corrupted ({type(err).__name__}); {anew}"
            ) from None


def resume_hint(sweep: Sweep) -> str:
    """What an interrupted sweep's user can do next: continue it, or (before any trial started) run it anew."""
    started = any(tune.Tuner.can_restore(str(folder)) for folder in stage_folders(sweep.out))
    if (sweep.out / "sweep.json").is_file() and started:
        return f"continue with: python -m raykd.tune --resume {sweep.out}"
    return f"no trial had started; run it anew with --config {sweep.out / 'config.yaml'}"


def trial_identity(config: dict[str, Any]) -> dict[str, Any]:
    """What a trial is (cell, row setting, seed), not Tune's trial id, which a resumed sweep may give anew."""
    return {k: config.get(k) for k in ("cell", "arm", "seed")}


def finished_file(out: Path, config: dict[str, Any]) -> Path:
    """Where a finished trial's result is recorded, keyed by its identity."""
    what = json.dumps(trial_identity(config), sort_keys=True, default=str)
    return Path(out) / "finished" / f"{hashlib.sha256(what.encode()).hexdigest()[:20]}.json"


def record_finished(out: Path, config: dict[str, Any], result: dict[str, Any]) -> bool:
    """Record a finished trial's final metrics; False when they were recorded already (a replayed trial)."""
    path = finished_file(out, config)
    if path.is_file():
        return False
    metrics = {k: v for k, v in result.items() if k not in TUNE_KEYS}
    write_atomic(path, json.dumps({"trial": trial_identity(config), "metrics": metrics}, default=float))
    return True


def finished_result(out: Path, config: dict[str, Any]) -> dict[str, Any] | None:
    """The recorded final metrics of a trial that finished before its driver stopped, if any."""
    try:
        return json.loads(finished_file(out, config).read_text())["metrics"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def finished_trials(out: Path) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(identity, final metrics) of every trial of the sweep in ``out`` that finished, whatever searched it."""
    records = [json.loads(p.read_text()) for p in sorted((Path(out) / "finished").glob("*.json"))]
    return [(r["trial"], r["metrics"]) for r in records]


#: What Tune holds of one trial: its config, its last metrics and its error (config and metrics None when it never
#: reported); ``Ended``: one that ended, so its config is known.
Outcome = tuple[dict[str, Any] | None, dict[str, Any] | None, BaseException | None]
Ended = tuple[dict[str, Any], dict[str, Any] | None, BaseException | None]


def ended(results: list[Outcome], out: Path) -> list[Ended]:
    """The trials that ended: failed ones that have a config, and those whose final result ``finished/`` records.

    Ctrl-C leaves the running trials TERMINATED to Tune without either (config and metrics None when they had not
    reported yet, partial metrics otherwise); they are left out, so the sweep counts as interrupted, not finished.
    """
    return [(c, m, e) for c, m, e in results if c is not None and (e is not None or finished_file(out, c).is_file())]
