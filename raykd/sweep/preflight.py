"""Everything a sweep can check before Ray starts or MLflow is written, so bad input costs one line and no work."""

from __future__ import annotations

from raykd.config import ExperimentConfig, study_cells
from raykd.data import check_dataset
from raykd.errors import ConfigError
from raykd.federated_checks import check_federated
from raykd.models import build_model
from raykd.nodes import dataset_of, prepare
from raykd.sweep.state import Sweep
from raykd.tracking import check_reachable, check_run_exists, resolve_uri


def preflight(cfg: ExperimentConfig, sweep: Sweep | None = None) -> str:
    """Check the config, every cell's data, partitions and models, and the MLflow store; returns the tracking URI.

    Loading the dataset here also fills the on-disk dataset cache before any worker needs it.
    """
    check_fault(cfg)
    for cell in study_cells(cfg):
        if cfg.federated.after_sweep:
            check_federated(cell.config)
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
        check_run_exists(uri, str(sweep.parent_run_id), f"--resume {sweep.out}")
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
