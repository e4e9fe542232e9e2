"""The Python API the command lines wrap: load a config, run the sweep, run a simulation, load a student.

    import raykd
    cfg = raykd.load_config("tune_configs/default.yaml", overrides=["seeds=[0]"])
    raykd.plan(cfg)                        # every check of the sweep, nothing run: its cells, folders, store
    study = raykd.run(cfg)                 # the sweep `python -m raykd.tune` runs
    study.summary                          # one row per method row: its chosen setting and metrics
    model = raykd.load_student(study.students["kd-tuned"][0])
    raykd.predict(model, ["cat.png"])     # logits for raw inputs, preprocessed as the student file says
    raykd.generate(path, "def ")          # a language-model student's greedy continuation

Bad input raises the same one-line ``ConfigError`` the command lines print. Ray, Tune, MLflow and torch
load only when a function needs them, so ``import raykd`` stays light.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raykd.cli import absolute_paths
from raykd.config import ExperimentConfig, check_paths, parse_override, validate_config
from raykd.config import load_config as load_yaml
from raykd.errors import ConfigError
from raykd.files import held_writes
from raykd.launch import Simulation

if TYPE_CHECKING:
    import pandas as pd
    import torch
    from torch import nn

    from raykd.preflight import Plan


def load_config(source: str | Path | dict[str, Any], overrides: Sequence[str] = ()) -> ExperimentConfig:
    """A validated config from a YAML path or a mapping, with ``dotted.key=value`` overrides applied."""
    if isinstance(source, dict):
        raw = json.loads(json.dumps(source, default=str))  # a copy: overrides never change the caller's dict
        for assignment in overrides:
            parse_override(raw, assignment)
        return absolute_paths(validate_config(raw))
    return absolute_paths(load_yaml(Path(source), list(overrides)))


@dataclass(frozen=True)
class Study:
    """A finished sweep: its folder, its tables, each row's chosen setting and distilled students."""

    config: ExperimentConfig
    out: Path
    summary: pd.DataFrame
    trials: pd.DataFrame
    chosen: dict[str, dict[str, Any]]
    students: dict[str, list[Path]]
    failed: int
    #: The MLflow store its runs are in (the one its Plan resolved).
    uri: str
    #: One line naming what the tracking store lacks when it failed mid-sweep (the local results are whole).
    untracked: str | None = None


def run(
    cfg: ExperimentConfig | str | Path | dict[str, Any] | None,
    resume: str | Path | None = None,
    address: str | None = None,
) -> Study:
    """Run the sweep of ``cfg`` (or continue the interrupted sweep in folder ``resume``) and return its results.

    A resumed sweep keeps its own config (pass ``cfg=None``); ``address`` names the cluster it joins.
    """
    # The Ray shell loads here, not at import: `import raykd` and config errors never pay for Ray or MLflow.
    from raykd.cluster import Capacity, check_sweep, ensure_ray
    from raykd.preflight import preflight
    from raykd.sweep.run import run_sweep
    from raykd.sweep.state import open_sweep
    from raykd.sweep.students import chosen_settings
    from raykd.untracked import Untracked

    sweep = None
    if resume is not None:
        cfg, sweep = open_sweep(Path(resume), address)
    elif cfg is None:
        raise ConfigError("raykd.run: give a config (a path, a mapping or an ExperimentConfig) or resume=PATH")
    elif not isinstance(cfg, ExperimentConfig):
        cfg = load_config(cfg)
    with held_writes():  # the dataset cache the preflight fills lands only once the cluster can run the sweep too
        plan = preflight(cfg, sweep)
        ensure_ray(cfg)
        check_sweep(plan.config, plan.cells, Capacity.now())
    lost = Untracked()  # this run's own: a store that failed an earlier run in this process says nothing here
    result = run_sweep(plan, sweep, lost)
    return Study(
        cfg,
        result.out,
        result.summary,
        result.trials,
        chosen_settings(cfg, result.summary),
        result.students,
        result.failed,
        plan.uri,
        lost.line(plan.uri),
    )


def plan(cfg: ExperimentConfig | str | Path | dict[str, Any], simulation: bool = False) -> Plan:
    """The Plan of running ``cfg`` as a sweep (or, with ``simulation``, as one Flower simulation): every check a run
    makes before it starts (rules, folders, the MLflow store, the data against the config), nothing run. Only the
    dataset cache may be filled; ``raykd.run`` and both command lines make the same Plan."""
    from raykd.preflight import preflight  # torch and MLflow load with the first plan

    return preflight(cfg if isinstance(cfg, ExperimentConfig) else load_config(cfg), simulation=simulation)


def simulate(cfg: ExperimentConfig | str | Path | dict[str, Any]) -> Simulation:
    """Run one Flower simulation of ``cfg`` as its own Ray driver process (Flower shuts Ray down at its end), its
    lines printed as they come; its records in a new folder ``output_dir/<name>-<time>/``.

    When this process is already connected to Ray (a notebook, a sweep), the simulation joins that cluster.
    """
    import ray

    from raykd.launch import launch_simulation

    cfg = cfg if isinstance(cfg, ExperimentConfig) else load_config(cfg)
    check_paths(cfg)
    address = ray.get_runtime_context().gcs_address if ray.is_initialized() else None
    out = cfg.output_dir / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    return launch_simulation(cfg, out, address, echo=True)


def load_student(path: str | Path) -> nn.Module:
    """The distilled student saved at ``path``, rebuilt in eval mode (see ``raykd.students``)."""
    from raykd.students import load_student as load  # torch loads with the first student

    return load(Path(path))


def predict(student: str | Path | nn.Module, inputs: Any) -> torch.Tensor:
    """A classifier student's logits (N, classes) for raw ``inputs``, preprocessed as its file says: image files
    or PIL images for an image-folder student, else raw arrays (see ``raykd.students.predict``)."""
    from raykd.students import predict as logits  # torch loads with the first student

    return logits(student if not isinstance(student, (str, Path)) else Path(student), inputs)


def export_student(student: str | Path, format: str, out: str | Path | None = None) -> Path:
    """Write a student file as ONNX or TorchScript, its preprocessing in the metadata (see ``raykd.export``)."""
    from raykd.export import export_student as export  # torch (and onnx) load with the first export

    return export(student, format, out)


def generate(student: str | Path, prompt: str, new_tokens: int = 60) -> str:
    """The greedy continuation of ``prompt`` by a language-model student file (it carries its tokenizer)."""
    from raykd.lm.samples import generate as continue_text  # torch loads with the first sample

    return continue_text(Path(student), prompt, new_tokens)
