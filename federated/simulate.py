"""``python -m federated.simulate``: an experiment config -> one Flower simulation on Ray -> round table, plot, MLflow.

This process is the simulation's Ray driver: it starts a local Ray instance on loopback or joins an
existing cluster (``ray.address`` / ``--address`` / RAY_ADDRESS), and Flower's ``ray.shutdown()`` at
the end then only stops what this process started (or disconnects it from the cluster). Embedding
a simulation in another Ray driver (a test session, a Tune trial) would shut that driver's Ray down,
so callers start this module as a child process instead.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path
from types import FrameType

import federated  # noqa: F401  (sets Flower's environment before flwr is imported)
from raykd.cli import EXIT_INTERRUPTED, add_run_arguments, config_from_args, run_command
from raykd.config import ExperimentConfig, describe_schema
from raykd.federated_checks import check_federated

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "tune_configs" / "federated_kd.yaml"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m federated.simulate",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run a federated simulation (Flower on Ray) of raykd's partitions, models and KD methods.",
        epilog="config keys (the federated.* section drives the simulation; clients = partition.num_nodes):\n"
        + describe_schema()
        + "\n\nexample:\n  python -m federated.simulate --config tune_configs/federated_kd.yaml "
        "--set federated.strategy=fml --set federated.rounds=3",
    )
    add_run_arguments(parser, DEFAULT_CONFIG)
    return parser


def preflight(cfg: ExperimentConfig) -> None:
    """Everything checkable before Ray starts: cross-field rules, architectures, the MLflow store."""
    # The core and MLflow load here, after parsing: --help never pays for torch or mlflow.
    from raykd.data import check_dataset
    from raykd.models import build_model
    from raykd.nodes import check_checkpoints, dataset_of
    from raykd.tracking import check_reachable, resolve_uri

    check_federated(cfg)
    data = dataset_of(cfg)
    check_dataset(cfg, data)
    build_model(cfg.nodes.model, data.input_shape, data.num_classes)
    for node, spec in cfg.nodes.models.items():
        build_model(spec, data.input_shape, data.num_classes, f"nodes.models.{node}")
    check_checkpoints(cfg, data.input_shape, data.num_classes)
    check_reachable(resolve_uri(cfg.tracking.uri))


def simulate(cfg: ExperimentConfig) -> None:
    """Run the configured simulation in this (driver) process; Flower shuts Ray down when it ends."""
    # Flower's simulation engine and the apps (torch, flwr) load only when a simulation runs.
    from flwr.simulation import run_simulation

    from federated import client_app, server_app

    f = cfg.federated
    run_simulation(
        server_app=server_app.build(cfg),
        client_app=client_app.build(cfg),
        num_supernodes=cfg.partition.num_nodes,
        backend_config={"client_resources": {"num_cpus": f.client_cpus, "num_gpus": f.client_gpus}},
    )


def _simulate(args: argparse.Namespace) -> int:
    import ray  # after parsing: --help never pays for Ray

    from raykd.cluster import Capacity, check_flower_pool, connect_ray

    cfg = config_from_args(args, DEFAULT_CONFIG)
    preflight(cfg)
    if ray.is_initialized():
        raise RuntimeError("federated.simulate must be its own Ray driver process (Flower shuts Ray down at the end)")
    connect_ray(cfg, log_to_driver=True)
    check_flower_pool(cfg, Capacity.now())
    simulate(cfg)
    return 0


def _stop_on_ctrl_c(signum: int, frame: FrameType | None) -> None:
    """Ctrl-C: Flower's threads would log every client call it cuts off as a traceback; quiet them, then stop."""
    logging.getLogger("flwr").disabled = True
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; bad input is one line on stderr and exit status 2, Ctrl-C one line and 130."""
    args = build_parser().parse_args(argv)
    previous = signal.signal(signal.SIGINT, _stop_on_ctrl_c)
    try:
        code = run_command(lambda: _simulate(args))
    finally:
        signal.signal(signal.SIGINT, previous)
    if code == EXIT_INTERRUPTED:  # Flower's ServerApp thread is no daemon and never ends once cut off: exit now
        import ray

        ray.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
