"""Cross-field rules of the ``federated`` section, checked before a Flower simulation (or a sweep's follow-up) runs.

They are not part of the schema itself: a sweep that never simulates may set what a simulation could not run
(per-node architectures, for one), so each command that simulates calls ``check_federated`` in its preflight.
"""

from __future__ import annotations

from raykd.config import ExperimentConfig, check_faults
from raykd.errors import ConfigError

#: Strategies that use the shared unlabelled pool: the server distils on it, or the clients predict on it.
POOL_STRATEGIES = ("feddf", "consolidation", "logit-exchange")
#: Strategies whose clients may each hold their own architecture (``nodes.models``): only predictions are shared.
OWN_MODELS = ("fml", "logit-exchange")
#: Strategies a language model (``data.task: lm``) runs with.
TEXT_STRATEGIES = ("fedavg", "kd", "feddf", "logit-exchange")
#: The method row strategy fml's clients train with (a method class of the federated app, named by reference).
FML_METHOD = "federated.fml:FederatedMutualLearning"


def check_federated(cfg: ExperimentConfig) -> None:
    """Cross-field rules of the federated section, for each strategy it runs; each failure is one line naming its
    field."""
    f, nodes = cfg.federated, cfg.partition.num_nodes
    if f.min_clients > nodes:
        raise ConfigError(
            f"federated.min_clients: {f.min_clients} clients per round but partition.num_nodes is {nodes}; "
            f"allowed: 1..{nodes}"
        )
    sampled = max(int(nodes * f.fraction), f.min_clients)
    if f.min_successful > sampled:
        raise ConfigError(
            f"federated.min_successful: {f.min_successful} but only {sampled} clients are sampled per round "
            f"(fraction {f.fraction:g} of {nodes}, at least min_clients {f.min_clients}); allowed: 1..{sampled}"
        )
    check_faults(cfg)
    _check_teacher(cfg)
    for strategy in f.strategies:
        _check_strategy(cfg, strategy)


def _check_strategy(cfg: ExperimentConfig, strategy: str) -> None:
    """The rules that depend on the strategy: data task, architectures, pool, the clients' method row."""
    field = "federated.compare" if cfg.federated.compare else "federated.strategy"
    if cfg.data.task == "lm" and strategy not in TEXT_STRATEGIES:
        raise ConfigError(f"{field}: {strategy} takes classification data only; with data.task lm allowed: "
                          f"{', '.join(TEXT_STRATEGIES)}")  # fmt: skip
    if cfg.nodes.models and strategy not in OWN_MODELS:
        raise ConfigError(
            f"nodes.models: per-node architectures need {field}={' or '.join(OWN_MODELS)} (only their clients keep "
            f"models of their own; {strategy} averages one architecture)"
        )
    if strategy in POOL_STRATEGIES and cfg.data.pool_fraction == 0:
        raise ConfigError(f"data.pool_fraction: {field}={strategy} uses the shared pool; allowed: > 0")
    _check_client_method(cfg, strategy)


def _check_teacher(cfg: ExperimentConfig) -> None:
    """``federated.teacher`` serves kd only, inline or from a TeacherServer."""
    f = cfg.federated
    if f.teacher is None:
        return
    if "kd" not in f.strategies:
        raise ConfigError(
            "federated.teacher: only strategy kd distils a teacher; set federated.strategy: kd or unset it"
        )
    if cfg.teacher.mode == "cache":
        raise ConfigError("teacher.mode: cache holds node models' logits; federated.teacher allowed: inline, server")


def _check_client_method(cfg: ExperimentConfig, strategy: str) -> None:
    """Strategies kd, fml and logit-exchange train with the first method row: it must be a loss their clients can
    run."""
    row = cfg.methods[0]
    if strategy == "fml" and row.name != FML_METHOD:
        raise ConfigError(
            f"methods[0].name: federated.strategy=fml trains with the first method row, {row.name!r} is not FML; "
            f"e.g. methods: [{{name: '{FML_METHOD}', alpha: 0.5, beta: 0.5}}]"
        )
    if strategy in ("kd", "logit-exchange") and row.build(row.first()).teachers == "peers":
        raise ConfigError(
            f"methods[0].name: federated.strategy={strategy} distils a frozen teacher into each client; "
            f"{row.name!r} trains peers (FML is strategy fml); e.g. methods: [{{name: kd, alpha: 0.5}}]"
        )
