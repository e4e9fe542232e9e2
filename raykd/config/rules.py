"""Every cross-field rule of a config that needs neither its data nor a cluster: one home, one line per refusal.

``check_config`` runs whenever a config is validated (the schema's last step): loading refuses a bad combination.
The rest run in the preflight of the commands they concern: ``check_requests`` (knobs the chosen mode would silently
ignore) and ``check_faults`` before a sweep, ``check_federated`` (with ``check_faults``) before a simulation; a sweep
that never simulates may set what a simulation could not run (per-node architectures, for one). A rule that needs
the loaded data lives in ``raykd.data.checks``; one that needs the cluster's capacity in ``raykd.cluster``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from raykd.config.data import DATASET_ROOTS
from raykd.errors import ConfigError
from raykd.methods import SAMPLE_LEVEL
from raykd.methods.schema import KnobRange

if TYPE_CHECKING:
    from raykd.config.schema import ExperimentConfig

#: Strategies that use the shared unlabelled pool: the server distils on it, or the clients predict on it.
POOL_STRATEGIES = ("feddf", "consolidation", "logit-exchange")
#: Strategies whose clients may each hold their own architecture (``nodes.models``): only predictions are shared.
OWN_MODELS = ("fml", "logit-exchange")
#: Strategies a language model (``data.task: lm``) runs with.
TEXT_STRATEGIES = ("fedavg", "kd", "feddf", "logit-exchange")
#: The method row strategy fml's clients train with (a method class of the federated app, named by reference).
FML_METHOD = "federated.fml:FederatedMutualLearning"


def highest(knob: Any) -> float:
    """A knob's largest value: its list's maximum, or its range's high end."""
    return knob.high if isinstance(knob, KnobRange) else max(knob)


def check_config(cfg: ExperimentConfig) -> None:
    """The rules every validated config keeps (raised as ``ValueError``: pydantic reports them, loading makes one
    line): nodes that exist, a selection metric the run reports, data a run can split, distinct row labels."""
    nodes = cfg.partition.num_nodes
    roles = {"transfer.student": [cfg.transfer.student], "transfer.teachers": cfg.transfer.teachers}
    for field, ids in roles.items():
        bad = [i for i in ids if not 0 <= i < nodes]
        if bad:
            raise ValueError(f"{field}: node {bad[0]} does not exist; allowed: 0..{nodes - 1}")
    if cfg.transfer.student in cfg.transfer.teachers:
        raise ValueError("transfer.teachers: must not include the student node")
    twice = next((t for t in cfg.transfer.teachers if cfg.transfer.teachers.count(t) > 1), None)
    if twice is not None:
        raise ValueError(f"transfer.teachers: node {twice} is listed twice; give each teacher once")
    if cfg.tune.select_on == "local_val_acc" and cfg.partition.local_val_fraction == 0:
        raise ValueError(
            "tune.select_on: local_val_acc needs a local validation split but partition.local_val_fraction "
            "is 0; allowed: val_acc, or local_val_fraction > 0"
        )
    if cfg.tune.select_on == "val_ppl" and cfg.data.task != "lm":
        raise ValueError("tune.select_on: val_ppl is a language-model metric; allowed: val_acc, local_val_acc")
    bad_nodes = [n for n in cfg.nodes.models if not 0 <= n < nodes]
    if bad_nodes:
        raise ValueError(f"nodes.models: node {bad_nodes[0]} does not exist; allowed: 0..{nodes - 1}")
    if cfg.data.dataset in DATASET_ROOTS and cfg.data.root is None:
        needs = DATASET_ROOTS[cfg.data.dataset]
        raise ValueError(f"data.root: {cfg.data.dataset} needs {needs} (data.root=PATH)")
    if cfg.data.augment and cfg.teacher.mode == "cache":
        raise ValueError(
            "data.augment: teacher.mode=cache holds logits of un-augmented inputs, so the student would distil "
            "views the teacher never saw; use teacher.mode inline or server with augmentation"
        )
    if cfg.transfer.set != "local" and cfg.data.pool_fraction == 0:
        raise ValueError(f"data.pool_fraction: transfer.set={cfg.transfer.set} needs a pool; allowed: > 0")
    _search_rules(cfg)
    _precision_rules(cfg)
    _language_model_rules(cfg)
    labels = [m.display() for m in cfg.methods]
    duplicate = next((x for x in labels if labels.count(x) > 1), None)
    if duplicate:
        raise ValueError(f"methods: two rows are called {duplicate!r}; give each a distinct 'label'")


def _precision_rules(cfg: ExperimentConfig) -> None:
    """fp16 where the config itself says the training runs on the CPU (no GPU reserved); a reserved GPU the
    process cannot see is refused when training starts (``raykd.precision``)."""
    budgets = [
        ("nodes.train", cfg.nodes.train, cfg.tune.gpus_per_trial == 0),
        ("transfer.train", cfg.transfer.train, cfg.tune.gpus_per_trial == 0 and not cfg.learners.use_gpu),
        ("federated.local", cfg.federated.local, cfg.federated.client_gpus == 0),
    ]
    for field, budget, on_cpu in budgets:
        if budget.precision == "fp16" and on_cpu:
            raise ValueError(
                f"{field}.precision: fp16 needs a GPU and this config trains on the CPU (no GPU reserved); "
                "allowed: fp32, bf16, or fp16 with GPUs reserved"
            )


def _search_rules(cfg: ExperimentConfig) -> None:
    """Ranges are sampled, never gridded; ASHA ranks trials of different seeds by their gain on the global
    validation split (each seed's start subtracted), which a local split does not report."""
    for i, row in enumerate(cfg.methods):
        knob = next(iter(row.ranges()), None)
        if knob is not None and cfg.tune.search == "grid":
            raise ValueError(
                f"methods[{i}].{knob}: a range is sampled, never a grid axis; allowed: a list, or tune.search "
                "random or optuna"
            )
    if cfg.tune.trial == "simulation":
        _simulation_rules(cfg)
    if cfg.tune.scheduler == "asha" and cfg.tune.select_on == "local_val_acc":
        raise ValueError(
            "tune.scheduler: asha ranks trials by their gain on the global validation split; allowed with "
            "tune.select_on val_acc or val_ppl"
        )


def _simulation_rules(cfg: ExperimentConfig) -> None:
    """A simulation trial runs one strategy to its last round and reports once, on the global validation split;
    it is the federated run itself, so the follow-up and the transfer's learners have nothing to do."""
    refused = {
        "tune.scheduler": (cfg.tune.scheduler != "fifo", "fifo (a simulation reports once, at its end)"),
        "tune.select_on": (cfg.tune.select_on == "local_val_acc", "val_acc or val_ppl (the global model's)"),
        "federated.compare": (bool(cfg.federated.compare), "unset; vary federated.strategy with axes instead"),
        "federated.after_sweep": (cfg.federated.after_sweep, "false (every trial is a simulation)"),
        "learners.num_workers": (cfg.learners.num_workers > 0, "0 (Flower's clients train)"),
    }
    for field, (bad, allowed) in refused.items():
        if bad:
            raise ValueError(f"{field}: not with tune.trial simulation; allowed: {allowed}")


def _language_model_rules(cfg: ExperimentConfig) -> None:
    """Methods that learn per sample cannot distil tokens; on-policy rows need text and a teacher that scores
    the student's own samples (inline or server, never the offline cache)."""
    lm = cfg.data.task == "lm"
    sample_level = next((m.name for m in cfg.methods if lm and m.name in SAMPLE_LEVEL), None)
    if sample_level is not None:
        raise ValueError(
            f"methods: {sample_level} learns per sample in its prepare step and distils classifiers only; "
            f"allowed for data.task lm: every method but {', '.join(SAMPLE_LEVEL)}"
        )
    if cfg.transfer.miniplm is not None and not lm:
        raise ValueError(
            "transfer.miniplm: selects documents of text; allowed: unset, or data.task lm (for classes, the "
            "miniplm method row)"
        )
    on_policy = any(highest(getattr(m, "on_policy", [0])) > 0 for m in cfg.methods)
    if on_policy and not lm:
        raise ValueError("methods: on_policy > 0 samples text from the student; allowed: 0, or data.task lm")
    if on_policy and cfg.teacher.mode == "cache":
        raise ValueError(
            "methods: on_policy > 0 needs the teacher to score the student's own samples but teacher.mode=cache "
            "holds logits of the corpus only; allowed: teacher.mode inline or server, or on_policy 0"
        )


def check_requests(cfg: ExperimentConfig) -> None:
    """Knobs the chosen mode would silently ignore, refused before anything runs or is written.

    Only ``teacher.mode=server`` gives the teacher its own device and GPUs (inline and cache teachers run where
    the trial runs, on ``tune.gpus_per_trial``); ``teacher.top_k`` cuts what a server sends or a cache holds;
    ``learners.use_gpu`` needs learners; ``learners.peer_actors`` needs a dml row.
    """
    teacher, learners = cfg.teacher, cfg.learners
    where = f"teacher.mode={teacher.mode} runs the teacher inside each trial (on tune.gpus_per_trial)"
    if teacher.mode != "server" and teacher.num_gpus > 0:
        raise ConfigError(
            f"teacher.num_gpus: {teacher.num_gpus:g} GPUs but {where}; allowed: 0, or teacher.mode=server"
        )
    if teacher.mode != "server" and teacher.replicas > 1:
        raise ConfigError(f"teacher.replicas: {teacher.replicas} but {where}; allowed: 1, or teacher.mode=server")
    if teacher.mode != "server" and teacher.device != "auto":
        raise ConfigError(f"teacher.device: {teacher.device} but {where}; allowed: auto, or teacher.mode=server")
    if teacher.device == "cuda" and teacher.num_gpus == 0:
        raise ConfigError("teacher.device: cuda but teacher.num_gpus is 0 (no GPU reserved); allowed: num_gpus > 0")
    if teacher.device == "cpu" and teacher.num_gpus > 0:
        raise ConfigError(
            f"teacher.num_gpus: {teacher.num_gpus:g} GPUs reserved but teacher.device=cpu never uses them; "
            "allowed: 0, or teacher.device auto or cuda"
        )
    if learners.use_gpu and not learners.num_workers:
        raise ConfigError(
            "learners.use_gpu: true but learners.num_workers is 0 (trials train in their own process, on "
            "tune.gpus_per_trial); allowed: false, or learners.num_workers >= 1"
        )
    if teacher.top_k is not None and teacher.mode == "inline":
        raise ConfigError(
            f"teacher.top_k: {teacher.top_k} cuts what a teacher server sends or the offline cache holds, but "
            "teacher.mode is inline (full logits in the trial); allowed: unset, or teacher.mode server or cache"
        )
    if teacher.dtype == "bfloat16" and teacher.mode != "server":
        raise ConfigError(
            f"teacher.dtype: bfloat16 is for logits a server sends, but teacher.mode is {teacher.mode} (the cache "
            "stores NumPy arrays, which have no bfloat16); allowed: float32, float16, or teacher.mode=server"
        )
    if learners.peer_actors and not any(m.name == "dml" for m in cfg.methods):
        raise ConfigError("learners.peer_actors: true but no method row is dml; allowed: false, or a dml row")


def check_faults(cfg: ExperimentConfig) -> None:
    """A rehearsal must pick work the run has, or it would silently rehearse nothing; each failure is one line."""
    trial, client = cfg.faults.trial, cfg.faults.client
    labels = [m.display() for m in cfg.methods]
    if trial is not None and trial.label not in labels:
        raise ConfigError(f"faults.trial.label: {trial.label!r} is not a method row; allowed: {', '.join(labels)}")
    if trial is not None and trial.seed not in cfg.seeds:
        raise ConfigError(f"faults.trial.seed: {trial.seed} is not one of the sweep's seeds {cfg.seeds}")
    nodes, rounds = cfg.partition.num_nodes, cfg.federated.rounds
    if client is not None and client >= nodes:
        raise ConfigError(f"faults.client: client {client} does not exist; allowed: 0..{nodes - 1}")
    bad_round = next((r for r in cfg.faults.client_rounds if not 1 <= r <= rounds), None)
    if bad_round is not None:
        raise ConfigError(f"faults.client_rounds: round {bad_round} does not exist; allowed: 1..{rounds}")


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
