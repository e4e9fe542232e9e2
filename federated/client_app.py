"""The Flower ClientApp: one simulated node holding one raykd partition (``partition-id`` = node id).

Handlers only unpack the message, call ``federated.task`` and pack the reply. FML's private model
never leaves the client: it lives in the node's ``Context.state`` between rounds. A training reply
carries the client's own wall and CPU seconds in ``client_update`` (``train_s``, ``train_cpu_s``), so
the server can tell Flower's per-round overhead from the clients' compute.
"""

from __future__ import annotations

from functools import cache
from time import perf_counter, process_time

from flwr.app import Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from ray import cloudpickle
from torch import set_num_threads

from federated.task import DIVERGED, client_scores, client_update, for_strategy, settings
from raykd.config import ExperimentConfig
from raykd.engine import NonFiniteLoss, pick_device
from raykd.errors import ConfigError, InjectedFault

PRIVATE = "fml-private"
#: The ConfigRecord key naming the strategy a message belongs to (``federated.compare`` runs several in turn).
STRATEGY = "strategy"
#: The ConfigRecord key naming the simulation's TeacherServer actor (kd with a served ``federated.teacher``).
TEACHER = "teacher-actor"


def experiment_of(msg: Message, context: Context, experiment: ExperimentConfig | None) -> ExperimentConfig:
    """The experiment as the message's strategy runs it."""
    cfg = settings(context.run_config, experiment)
    return for_strategy(cfg, str(msg.content["config"].get(STRATEGY, cfg.federated.strategy)))


def private_key(cfg: ExperimentConfig) -> str:
    """Where a client's private model lives in its ``Context.state``: one per compared strategy."""
    return f"{PRIVATE}-{cfg.federated.strategy}" if cfg.federated.compare else PRIVATE


def node_of(context: Context, cfg: ExperimentConfig) -> int:
    """This client's partition; the federation must have one node per partition (``flwr run``'s num-supernodes)."""
    nodes = int(context.node_config["num-partitions"])
    if nodes != cfg.partition.num_nodes:
        raise ConfigError(
            f"partition.num_nodes: {cfg.partition.num_nodes} partitions but the federation has {nodes} nodes; "
            f"set num-supernodes = {cfg.partition.num_nodes}"
        )
    return int(context.node_config["partition-id"])


def train(msg: Message, context: Context, experiment: ExperimentConfig | None) -> Message:
    """One client's training round: the global model in, the local update (and its own timings) out."""
    cfg = experiment_of(msg, context, experiment)
    node, server_round = node_of(context, cfg), int(msg.content["config"]["server-round"])
    f = cfg.federated
    faults = cfg.faults
    if node == faults.client and (not faults.client_rounds or server_round in faults.client_rounds):
        raise InjectedFault(f"client {node}: injected fault in round {server_round} (faults.client)")
    set_num_threads(max(1, int(f.client_cpus)))
    private = context.state.array_records.get(private_key(cfg))
    wall, cpu = perf_counter(), process_time()
    try:
        served = msg.content["config"].get(TEACHER)
        device = pick_device(f.client_gpus)  # CUDA when this client reserved GPUs
        sent, kept, metrics = client_update(cfg, node, server_round, msg.content["arrays"], private, served, device)
    except NonFiniteLoss as err:  # a diverged update is a result to report, not a crash to trace back
        return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=f"{DIVERGED} {err}"), reply_to=msg)
    timing = {"train_s": perf_counter() - wall, "train_cpu_s": process_time() - cpu}
    if kept is not None:
        context.state[private_key(cfg)] = kept
    reply = RecordDict({"arrays": sent, "metrics": MetricRecord({**metrics, **timing, "partition-id": node})})
    return Message(reply, reply_to=msg)


def evaluate(msg: Message, context: Context, experiment: ExperimentConfig | None) -> Message:
    """One client's evaluation: the scores (accuracy; text: perplexity), on its validation split, of the model it
    would use."""
    cfg = experiment_of(msg, context, experiment)
    node = node_of(context, cfg)
    found = client_scores(cfg, node, msg.content["arrays"], context.state.array_records.get(private_key(cfg)))
    return Message(
        RecordDict({"metrics": MetricRecord({**found, "partition-id": node, "num-examples": 1})}), reply_to=msg
    )


@cache
def thawed(frozen: bytes | None) -> ExperimentConfig | None:
    """The experiment a client app was built with, unpickled once per client actor."""
    return cloudpickle.loads(frozen) if frozen is not None else None


def build(experiment: ExperimentConfig | None = None) -> ClientApp:
    """A ClientApp for the experiment ``experiment`` (the simulate CLI), or for pyproject's run config when None.

    Flower's Ray backend pickles the app with every message it hands a client actor. The experiment goes in
    it as bytes pickled here, once: pickled per message, its method rows (classes pydantic builds at run time)
    cost about 9 ms of the driver's CPU each time and 3 ms to unpickle in the actor (``benchmarks/RESULTS.md``).
    """
    app, frozen = ClientApp(), (cloudpickle.dumps(experiment) if experiment is not None else None)

    @app.train()
    def train_handler(msg: Message, context: Context) -> Message:
        return train(msg, context, thawed(frozen))

    @app.evaluate()
    def evaluate_handler(msg: Message, context: Context) -> Message:
        return evaluate(msg, context, thawed(frozen))

    return app


app = build()
