"""Every place raykd reaches into a private part of Ray, Flower or MLflow, in one file.

Each touch names the version it was checked against (``CHECKED``) and has a test in ``tests/test_compat.py``
that fails, naming the touch, when an upgrade moves that internal; the rest of raykd uses only these
functions. Each exists because no public API does the job (the reason is in its docstring). Imports are
lazy: the core imports nothing of the shells, and a shell loads only the framework it touches.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: The versions each touch below was checked against; ``tests/test_compat.py`` compares them with the installed.
CHECKED = {"ray": "2.55.1", "flwr": "1.42.0", "mlflow": "3.17.2"}


# -- MLflow ---------------------------------------------------------------------------------------------------


def forget_active_mlflow_runs() -> None:
    """Drop this process's open MLflow runs without asking the store (mlflow 3.17.2).

    ``mlflow.end_run()`` would also mark the run ended in the store, which may be the dead server whose failure
    left the run open (an HTTP store retries for minutes); ``_active_run_stack`` is the list it pops first.
    """
    import mlflow.tracking.fluent

    mlflow.tracking.fluent._active_run_stack.get().clear()


def logged_trial_runs(callback: Any) -> dict[Any, str]:
    """The MLflow run id of each trial a ``MLflowLoggerCallback`` has started (ray 2.55.1: ``_trial_runs``; the
    callback exposes no public way to find the run it writes a trial to)."""
    runs: dict[Any, str] = callback._trial_runs
    return runs


def callback_experiment_id(callback: Any) -> str:
    """The experiment a ``MLflowLoggerCallback`` writes to, as resolved by its private ``_MLflowLoggerUtil``
    (ray 2.55.1), which may differ from the name it was given when MLFLOW_EXPERIMENT_ID is set."""
    return str(callback.mlflow_util.experiment_id)


def tuner_callbacks(tuner: Any) -> list[Any]:
    """The callbacks a Tuner will run (ray 2.55.1: ``Tuner._local_tuner``): ``Tuner.restore`` takes none and brings
    back the ones it pickled, so only this reaches a restored one."""
    callbacks: list[Any] = tuner._local_tuner.get_run_config().callbacks or []
    return callbacks


# -- Ray ------------------------------------------------------------------------------------------------------


def loopback_node() -> dict[str, str]:
    """``ray.init`` arguments that start a new local Ray on loopback (ray 2.55.1 reads ``_node_ip_address`` from its
    ``**kwargs``; there is no public argument): a plain ``ray.init()`` picks the address of the machine's network
    interface, which a sandbox or a laptop off-line may not route."""
    return {"_node_ip_address": "127.0.0.1"}


def gcs_actor_table() -> list[dict[str, Any]]:
    """Every actor of the cluster, alive or dead, from the GCS (ray 2.55.1: ``ray._private.state.actors``).

    The public ``ray.util.state.list_actors`` needs the dashboard, which raykd's local Ray does not start.
    """
    from ray._private.state import actors

    return list(actors().values())


class QuietTuneInterruption(logging.Filter):
    """Drops Tune's own Ctrl-C messages (several lines ending in a ``Tuner.restore`` recipe) so raykd's one line
    stands alone; keyed on their wording in ray 2.55.1's ``ray/tune/tune.py``, logger ``ray.tune.tune``."""

    LOGGER = "ray.tune.tune"
    MESSAGES = ("Stop signal received", "Trials did not complete", "Experiment has been interrupted")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.MESSAGES)


# -- Flower ---------------------------------------------------------------------------------------------------


class FlowerClientTracebacks(logging.Filter):
    """Drops the traceback Flower's simulation engine logs for every failed client message: the strategy
    reports each round's failures in one line. Keyed on the files and functions that log them in flwr 1.42.0
    (its records carry no other mark)."""

    ENGINE = {("vce_api.py", "worker"), ("raybackend.py", "process_message")}

    def filter(self, record: logging.LogRecord) -> bool:
        engine = (Path(record.pathname).name, record.funcName) in self.ENGINE
        return not (engine and record.levelno >= logging.ERROR)


def flower_extractor() -> Callable[..., None]:
    """The function Flower's simulation engine uses now to hand messages to client actors (flwr 1.42.0:
    ``vce_api.add_messages_to_queue(state, queue, nodes_mapping, f_stop)``, looked up per run)."""
    from flwr.server.superlink.fleet.vce import vce_api

    extractor: Callable[..., None] = vce_api.add_messages_to_queue
    return extractor


def use_flower_extractor(extractor: Callable[..., None]) -> None:
    """Make this process's simulations hand out messages with ``extractor``: Flower has no hook for it."""
    from flwr.server.superlink.fleet.vce import vce_api

    vce_api.add_messages_to_queue = extractor


def undelivered_destinations(state: Any) -> set[int]:
    """The destination nodes of the messages an ``InMemoryLinkState`` holds that no node has taken yet, read
    under its lock from its private store (flwr 1.42.0: ``lock``, ``message_ins_store``, ``delivered_at``)."""
    with state.lock:
        return {m.metadata.dst_node_id for m in state.message_ins_store.values() if m.metadata.delivered_at == ""}
