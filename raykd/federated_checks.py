"""Cross-field rules of the ``federated`` section, checked before a Flower simulation (or a sweep's follow-up) runs.

They are not part of the schema itself: a sweep that never simulates may set what a simulation could not run
(per-node architectures, for one), so each command that simulates calls ``check_federated`` in its preflight.
"""

from __future__ import annotations

from raykd.config import ExperimentConfig
from raykd.errors import ConfigError

#: Strategies whose server distils on the shared unlabelled pool.
POOL_STRATEGIES = ("feddf", "consolidation")
#: The method row strategy fml's clients train with (a method class of the federated app, named by reference).
FML_METHOD = "federated.fml:FederatedMutualLearning"


def check_federated(cfg: ExperimentConfig) -> None:
    """Cross-field rules of the federated section; each failure is one line naming its field."""
    f, nodes = cfg.federated, cfg.partition.num_nodes
    if cfg.data.task == "lm":
        raise ConfigError(
            "data.task: lm runs in sweeps (python -m raykd.tune); Flower simulations and a sweep's federated "
            "follow-up take classification data only for now; allowed: classify"
        )
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
    if f.fail_client is not None and f.fail_client >= nodes:
        raise ConfigError(f"federated.fail_client: client {f.fail_client} does not exist; allowed: 0..{nodes - 1}")
    bad_round = next((r for r in f.fail_rounds if not 1 <= r <= f.rounds), None)
    if bad_round is not None:
        raise ConfigError(f"federated.fail_rounds: round {bad_round} does not exist; allowed: 1..{f.rounds}")
    if cfg.nodes.models and f.strategy != "fml":
        raise ConfigError(
            f"nodes.models: per-node architectures need federated.strategy=fml (only its private models differ; "
            f"{f.strategy} averages one architecture)"
        )
    if f.strategy in POOL_STRATEGIES and cfg.data.pool_fraction == 0:
        raise ConfigError(f"data.pool_fraction: federated.strategy={f.strategy} distils on the pool; allowed: > 0")
    _check_client_method(cfg)


def _check_client_method(cfg: ExperimentConfig) -> None:
    """Strategies kd and fml train with the first method row: it must be a loss their clients can run."""
    strategy, row = cfg.federated.strategy, cfg.methods[0]
    if strategy == "fml" and row.name != FML_METHOD:
        raise ConfigError(
            f"methods[0].name: federated.strategy=fml trains with the first method row, {row.name!r} is not FML; "
            f"e.g. methods: [{{name: '{FML_METHOD}', alpha: 0.5, beta: 0.5}}]"
        )
    if strategy == "kd" and row.build(row.grid()[0]).teachers == "peers":
        raise ConfigError(
            f"methods[0].name: federated.strategy=kd distils the frozen global model into each client; "
            f"{row.name!r} trains peers (FML is strategy fml); e.g. methods: [{{name: kd, alpha: 0.5}}]"
        )
