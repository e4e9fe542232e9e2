"""Everything a sweep can check before Ray starts or MLflow is written, so bad input costs one line and no work."""

from __future__ import annotations

from dataclasses import dataclass

from raykd.config import Cell, ExperimentConfig, check_faults, check_federated, check_paths, study_cells
from raykd.data.preprocess import describe
from raykd.files import held_writes
from raykd.nodes import dataset_of
from raykd.sweep.state import Sweep
from raykd.tracking import check_reachable, check_run_exists, resolve_uri


@dataclass(frozen=True)
class Plan:
    """What a sweep's preflight resolved, once: its config, its cells and the MLflow store's URI. The cluster check
    and the sweep take it as it is; nothing downstream resolves or checks them again."""

    config: ExperimentConfig
    cells: list[Cell]
    uri: str


def preflight(cfg: ExperimentConfig, sweep: Sweep | None = None) -> Plan:
    """Check the config, the folders it writes and the MLflow store, then every cell's data, partitions,
    models and weights files (``raykd.nodes.dataset_of``); returns the sweep's Plan.

    The checks that need no data come first. Loading the dataset fills the on-disk dataset cache before
    any worker needs it, but that write is held until every check has passed: a refused input writes nothing.
    """
    check_paths(cfg)
    check_faults(cfg)
    cells = study_cells(cfg)
    for cell in cells if cfg.federated.after_sweep or cfg.tune.trial == "simulation" else ():
        check_federated(cell.config)
    uri = sweep.uri if sweep else resolve_uri(cfg.tracking.uri)
    check_reachable(uri)
    if sweep:
        check_run_exists(uri, str(sweep.parent_run_id), f"--resume {sweep.out}")
    with held_writes():
        records = [dataset_of(cell.config).preprocess for cell in cells]  # checked against the cell
    for line in dict.fromkeys(describe(r) for r in records if r["inputs"] == "image"):
        print(line, flush=True)
    return Plan(cfg, cells, uri)
