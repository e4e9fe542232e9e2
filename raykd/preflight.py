"""The one preflight: what a run will do, resolved and checked once, before Ray starts or anything is written.

Every entry point makes its Plan here once and passes it on (``raykd.plan`` and ``raykd.run`` of the Python API,
``python -m raykd.tune`` through ``raykd.run``, ``python -m federated.simulate``); nothing downstream resolves or
checks it again. The cross-field rules come first (``raykd.config.rules``, no data needed), then the folders the run
writes, the MLflow store, then every cell's data against its config. What needs the cluster (its capacity) is
checked against the Plan once Ray is up (``raykd.cluster``); each Ray task or actor then trains on the device Ray
gave it (``raykd.cluster.given_device``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raykd.config import (
    Cell,
    ExperimentConfig,
    check_faults,
    check_federated,
    check_paths,
    check_requests,
    study_cells,
)
from raykd.data.preprocess import describe
from raykd.files import held_writes
from raykd.nodes import TEACHER_FIELD, dataset_of, start_model
from raykd.tracking import check_reachable, check_run_exists, resolve_uri

if TYPE_CHECKING:
    from raykd.sweep.state import Sweep


@dataclass(frozen=True)
class Plan:
    """What a preflight resolved, once: the config, its cells (a simulation's one), the MLflow store's URI and the
    folders the run writes (by the key that names each). The cluster check and the run take it as it is."""

    config: ExperimentConfig
    cells: list[Cell]
    uri: str
    folders: dict[str, Path]
    simulation: bool = False


def preflight(cfg: ExperimentConfig, sweep: Sweep | None = None, simulation: bool = False) -> Plan:
    """Check ``cfg`` for a sweep (continuing ``sweep`` when given) or, with ``simulation``, for one Flower
    simulation; returns its Plan.

    Loading the datasets fills the on-disk dataset cache before any worker needs it, but that write is held until
    every check has passed: a refused input writes nothing.
    """
    cells = simulation_cells(cfg) if simulation else sweep_cells(cfg)
    folders = check_paths(cfg)
    uri = sweep.uri if sweep else resolve_uri(cfg.tracking.uri)
    check_reachable(uri)
    if sweep:
        check_run_exists(uri, str(sweep.parent_run_id), f"--resume {sweep.out}")
    with held_writes():
        records = [checked_data(cell.config, simulation or simulates(cell.config)) for cell in cells]
    for line in dict.fromkeys(describe(r) for r in records if r["inputs"] == "image"):
        print(line, flush=True)
    return Plan(cfg, cells, uri, folders, simulation)


def simulates(cfg: ExperimentConfig) -> bool:
    """Whether a sweep of ``cfg`` runs Flower simulations: as its trials, or after it."""
    return cfg.federated.after_sweep or cfg.tune.trial == "simulation"


def sweep_cells(cfg: ExperimentConfig) -> list[Cell]:
    """A sweep's cells, after the rules of what it runs: knobs its modes would ignore, the faults it rehearses, and
    the federated rules of each cell it simulates."""
    check_requests(cfg)
    check_faults(cfg)
    cells = study_cells(cfg)
    for cell in cells if simulates(cfg) else ():
        check_federated(cell.config)
    return cells


def simulation_cells(cfg: ExperimentConfig) -> list[Cell]:
    """A simulation's one cell, after the federated rules (its faults' included)."""
    check_federated(cfg)
    return [Cell({}, cfg)]


def checked_data(cfg: ExperimentConfig, simulated: bool) -> dict[str, Any]:
    """The data against the whole config (splits, partitions, every node's model and weights: ``dataset_of``) and,
    when it is simulated, the kd teacher's model; returns the data's preprocessing record."""
    data = dataset_of(cfg)
    teacher = cfg.federated.teacher
    if simulated and teacher is not None:
        start_model(teacher, data.input_shape, data.num_classes, TEACHER_FIELD, data.tokens)
    return data.preprocess
