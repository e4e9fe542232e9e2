"""The Flower ServerApp: start points, one strategy run per start point, then the records.

Consolidation compares three starts (random, averaged, KD-consolidated node models) on the same
clients within one Flower run, so the three FedAvg runs share one simulation and one Ray start.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.superlink.grid import InMemoryGrid
from torch import nn

from federated.record import record
from federated.strategy import FederatedStrategy, RoundLog, ServerStep
from federated.task import (
    distil_on_pool,
    from_arrays,
    global_model,
    settings,
    setup_of,
    starting_points,
    to_arrays,
)
from raykd.cluster import actor_nodes, actor_restarts
from raykd.config import ExperimentConfig
from raykd.federated_checks import check_federated

#: Flower's Ray actor class that runs the ClientApp (``flwr.simulation.ray_transport.ray_actor``).
CLIENT_ACTOR = "ClientAppActor"


def ensemble_distillation(cfg: ExperimentConfig) -> ServerStep:
    """FedDF's server step: the clients' models, as an ensemble, teach their average on the unlabelled pool."""

    def step(client_arrays: list[ArrayRecord], averaged: ArrayRecord) -> ArrayRecord:
        setup = setup_of(cfg)
        teachers = [from_arrays(global_model(cfg, setup), a) for a in client_arrays]
        student = from_arrays(global_model(cfg, setup), averaged)
        return to_arrays(distil_on_pool(cfg, student, teachers))

    return step


def run(grid: Grid, cfg: ExperimentConfig) -> Path:
    """Every start point's rounds, in order; the records (files, final models, MLflow) are written at the end,
    in the folder returned."""
    check_federated(cfg)
    if isinstance(grid, InMemoryGrid):  # the simulation's grid: how often it looks for replies (Flower's 0.1 s)
        grid.pull_interval = cfg.federated.poll_interval
    step = ensemble_distillation(cfg) if cfg.federated.strategy == "feddf" else None
    history: dict[str, list[RoundLog]] = {}
    finals: dict[str, nn.Module] = {}
    for start, arrays in starting_points(cfg).items():
        if start:
            print(f"start point: {start}", flush=True)
        strategy = FederatedStrategy(cfg, step)
        result = strategy.start(
            grid=grid, initial_arrays=arrays, num_rounds=cfg.federated.rounds, evaluate_fn=strategy.evaluate_global
        )
        history[start] = [strategy.rounds[r] for r in sorted(strategy.rounds)]
        final = result.arrays if len(result.arrays) else arrays  # no round aggregated: the start is the model
        finals[start] = from_arrays(global_model(cfg, setup_of(cfg)), final)
    return record(cfg, history, finals, actor_restarts(CLIENT_ACTOR), actor_nodes(CLIENT_ACTOR))


def build(experiment: ExperimentConfig | None = None, recorded: Callable[[Path], None] | None = None) -> ServerApp:
    """A ServerApp for the experiment ``experiment`` (the simulate CLI), or for pyproject's run config when None;
    ``recorded`` is told the records' folder (the simulate CLI reads its outcome from there)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        out = run(grid, settings(context.run_config, experiment))
        if recorded is not None:
            recorded(out)

    return app


app = build()
