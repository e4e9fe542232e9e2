"""A sweep's home: its output folder, and what ``--resume`` needs to find it again after the driver died.

The folder holds ``config.yaml``, Ray Tune's state (``tune/``) and ``sweep.json`` (the MLflow store
and parent run). Every gap in an interrupted sweep is one ConfigError line saying what to do instead.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from ray import tune

from raykd.config import ExperimentConfig, load_config
from raykd.errors import ConfigError
from raykd.files import safe_component, write_atomic


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
        raise ConfigError(f"--resume {path}: this sweep already finished (results.md is there); nothing to resume")
    try:
        record = json.loads((path / "sweep.json").read_text())
        sweep = Sweep(path, str(record["uri"]), str(record["parent_run_id"]))
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError(
            f"--resume {path}: sweep.json is missing or unreadable (the sweep stopped before it started); {anew}"
        ) from None
    if not tune.Tuner.can_restore(str(path / "tune")):
        raise ConfigError(f"--resume {path}: no Ray Tune state in {path / 'tune'} (no trial had started); {anew}")
    return cfg, sweep
