"""The Flower ServerApp: strategies and start points, one strategy run for each, then the records.

Consolidation compares three starts (random, averaged, KD-consolidated node models) and ``federated.compare``
several strategies on the same clients within one Flower run, so the runs share one simulation and one Ray start.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.superlink.grid import InMemoryGrid
from torch import nn

from federated.client_app import STRATEGY, TEACHER
from federated.record import record
from federated.strategy import FederatedStrategy, RoundLog, ServerStep
from federated.task import (
    distil_on_pool,
    for_strategy,
    from_arrays,
    global_model,
    settings,
    setup_of,
    starting_points,
    to_arrays,
)
from raykd.cluster import actor_nodes, actor_restarts
from raykd.config import ExperimentConfig
from raykd.preflight import Plan, preflight

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


def run(grid: Grid, plan: Plan, teacher: str | None = None, out: Path | None = None) -> Path:
    """Every strategy's and start point's rounds of the ``plan``'s simulation, in order; the records (files, final
    models, MLflow) are written at the end, in the folder returned (``out``, else a new one). ``teacher``: the name
    of the TeacherServer actor the clients ask, if any."""
    cfg = plan.config
    if isinstance(grid, InMemoryGrid):  # the simulation's grid: how often it looks for replies (Flower's 0.1 s)
        grid.pull_interval = cfg.federated.poll_interval
    history: dict[str, list[RoundLog]] = {}
    finals: dict[str, nn.Module] = {}
    compared = len(cfg.federated.strategies) > 1
    for strategy_name in cfg.federated.strategies:
        run_cfg = for_strategy(cfg, strategy_name)
        step = ensemble_distillation(run_cfg) if strategy_name == "feddf" else None
        for start, arrays in starting_points(run_cfg).items():
            label = "-".join(part for part in (strategy_name if compared else "", start) if part)
            if label:
                print(f"{'strategy' if compared else 'start point'}: {label}", flush=True)
            strategy = FederatedStrategy(run_cfg, step)
            config = ConfigRecord({STRATEGY: strategy_name, **({TEACHER: teacher} if teacher else {})})
            result = strategy.start(
                grid=grid,
                initial_arrays=arrays,
                num_rounds=cfg.federated.rounds,
                train_config=config,
                evaluate_config=config,
                evaluate_fn=strategy.evaluate_global,
            )
            history[label] = [strategy.rounds[r] for r in sorted(strategy.rounds)]
            if strategy_name != "logit-exchange":  # its products are the clients' private models
                final = result.arrays if len(result.arrays) else arrays  # no round aggregated: the start is the model
                finals[label] = from_arrays(global_model(cfg, setup_of(cfg)), final)
    return record(cfg, plan.uri, history, finals, actor_restarts(CLIENT_ACTOR), actor_nodes(CLIENT_ACTOR), out)


def build(
    plan: Plan | None = None,
    recorded: Callable[[Path], None] | None = None,
    teacher: str | None = None,
    out: Path | None = None,
) -> ServerApp:
    """A ServerApp for the simulate CLI's ``plan``, or for pyproject's run config when None (``flwr run``: this app
    is the entry point, so it makes the Plan); ``recorded`` is told the records' folder (the simulate CLI reads its
    outcome from there); ``teacher`` names the TeacherServer actor the simulate CLI started
    (``task.serve_teacher``); ``out``: the records' folder, if chosen."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        out_dir = run(grid, plan or preflight(settings(context.run_config, None), simulation=True), teacher, out)
        if recorded is not None:
            recorded(out_dir)

    return app


app = build()
