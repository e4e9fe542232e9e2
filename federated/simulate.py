"""``python -m federated.simulate``: an experiment config -> one Flower simulation on Ray -> round table, plot, MLflow.

This process is the simulation's Ray driver: it starts a local Ray instance on loopback or joins an
existing cluster (``ray.address`` / ``--address`` / RAY_ADDRESS), and Flower's ``ray.shutdown()`` at
the end then only stops what this process started (or disconnects it from the cluster). Embedding
a simulation in another Ray driver (a test session, a Tune trial) would shut that driver's Ray down,
so callers start this module as a child process instead.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import federated  # noqa: F401  (sets Flower's environment before flwr is imported)
from raykd.config import ExperimentConfig, describe_schema
from raykd.errors import ConfigError
from raykd.tune import connect_ray

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
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="experiment YAML (default: %(default)s)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a config key"
    )
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (same as --set tracking.uri=URI)")
    parser.add_argument("--address", help="join this Ray cluster (same as --set ray.address=ADDR)")
    return parser


def preflight(cfg: ExperimentConfig) -> None:
    """Everything checkable before Ray starts: cross-field rules, architectures, the MLflow store."""
    from federated.task import check
    from raykd.models import build_model
    from raykd.nodes import dataset_of
    from raykd.tracking import check_reachable, resolve_uri

    check(cfg)
    data = dataset_of(cfg)
    build_model(cfg.nodes.model, data.input_shape, data.num_classes)
    for node, spec in cfg.nodes.models.items():
        build_model(spec, data.input_shape, data.num_classes, f"nodes.models.{node}")
    check_reachable(resolve_uri(cfg.tracking.uri))


def connect(cfg: ExperimentConfig) -> None:
    """Become a Ray driver: join the configured cluster, or start a local instance on loopback."""
    import ray

    if ray.is_initialized():
        raise RuntimeError("federated.simulate must be its own Ray driver process (Flower shuts Ray down at the end)")
    connect_ray(cfg, log_to_driver=True)


def check_capacity(cfg: ExperimentConfig) -> None:
    """Refuse a client size whose actor pool cannot be placed now.

    Flower sizes its pool as the sum over Ray nodes of floor(node CPUs / client CPUs) and waits for
    every actor, so a pool that does not fit (CPUs held by other work) hangs without a word.
    """
    import ray

    f = cfg.federated
    nodes = [n["Resources"] for n in ray.nodes() if n["Alive"] and n["Resources"]]
    pool = sum(int(n.get("CPU", 0) / f.client_cpus) for n in nodes)
    gpus = sum(n.get("GPU", 0) for n in nodes)
    if f.client_gpus > 0 and f.client_gpus > max((n.get("GPU", 0) for n in nodes), default=0):
        raise ConfigError(f"federated.client_gpus: {f.client_gpus:g} GPUs per client but the cluster has {gpus:g}")
    largest = max((n.get("CPU", 0) for n in nodes), default=0)
    if pool == 0:
        raise ConfigError(
            f"federated.client_cpus: {f.client_cpus:g} CPUs per client but the largest Ray node has {largest:g}; "
            f"allowed: up to {largest:g}"
        )
    free = ray.available_resources().get("CPU", 0)
    if free + 1e-9 < pool * f.client_cpus:
        raise ConfigError(
            f"federated.client_cpus: Flower places {pool} clients x {f.client_cpus:g} CPUs but only {free:g} CPUs "
            f"of the cluster are free (the rest are held elsewhere); free CPUs or lower federated.client_cpus"
        )


def simulate(cfg: ExperimentConfig) -> None:
    """Run the configured simulation in this (driver) process; Flower shuts Ray down when it ends."""
    from flwr.simulation import run_simulation

    from federated import client_app, server_app

    raw = cfg.model_dump(mode="json")
    f = cfg.federated
    run_simulation(
        server_app=server_app.build(raw),
        client_app=client_app.build(raw),
        num_supernodes=cfg.partition.num_nodes,
        backend_config={"client_resources": {"num_cpus": f.client_cpus, "num_gpus": f.client_gpus}},
    )


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; bad input is one line on stderr and exit status 2."""
    from raykd.tune import load

    args = build_parser().parse_args(argv)
    try:
        cfg = load(args)
        preflight(cfg)
        connect(cfg)
        check_capacity(cfg)
    except ConfigError as err:
        print(f"raykd: error: {err}", file=sys.stderr)
        return 2
    simulate(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
