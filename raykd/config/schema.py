"""The experiment schema: every section, key and default, and each section's own rules, as frozen pydantic models.

A list given for a method knob (``temperature: [1, 2, 4]``) or for ``seeds`` is a Ray Tune grid
axis; scalars are fixed values. Cross-field rules that need no data live in ``raykd.config.rules`` (the schema
runs its ``check_config`` on every validation); those that need the data run in ``raykd.data.check_dataset``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AliasChoices, Field, field_validator, model_validator

from raykd.config.base import ModelSpec, Section, TrainConfig
from raykd.config.data import DataConfig
from raykd.config.faults import FaultsConfig, without_moved_fault_keys
from raykd.config.federated import FederatedConfig
from raykd.config.rules import check_config
from raykd.files import MAX_COMPONENT, plain_component
from raykd.methods.schema import LABEL, LABEL_RULE, AnyMethodConfig, MethodConfig

#: Config sections an ``axes`` variant may change: what the data, nodes and transfer are, not how the sweep runs.
CELL_SECTIONS = ("data", "partition", "nodes", "transfer", "federated")
#: Seeds seed NumPy, scikit-learn and torch; NumPy and scikit-learn take 0 <= seed < 2**32.
Seed = Annotated[int, Field(ge=0, lt=2**32)]


def _as_list(value: Any) -> Any:
    return value if isinstance(value, list) else [value]


class PartitionConfig(Section):
    scheme: Literal["iid", "dirichlet", "pathological"] = Field("dirichlet", description="how train is split")
    num_nodes: int = Field(4, ge=2, description="number of nodes (at least 2)")
    alpha: float = Field(0.5, gt=0, description="Dirichlet concentration (> 0); smaller is more skewed")
    classes_per_node: int = Field(2, ge=1, description="classes per node for 'pathological'")
    min_samples: int = Field(20, ge=1, description="fewest training samples any node may hold")
    local_val_fraction: float = Field(0.2, ge=0, lt=0.5, description="each node's local validation split")


class NodesConfig(Section):
    model: ModelSpec = Field(
        ModelSpec(name="cnn1d"),
        description="every node's model: {name, width, depth, kwargs, checkpoint: PATH (not trained), init: PATH}",
    )
    models: dict[int, ModelSpec] = Field({}, description="per-node overrides of nodes.model, by node id")
    train: TrainConfig = TrainConfig()
    cache_dir: Path = Field(Path(".raykd_cache"), description="where node models and datasets are cached")

    def model_of(self, node: int) -> ModelSpec:
        return self.models.get(node, self.model)


class TransferConfig(Section):
    student: int = Field(0, ge=0, description="node whose model learns")
    teachers: list[int] = Field([1], min_length=1, description="nodes whose models teach")
    set: Literal["local", "pool", "both"] = Field(
        "pool",
        description="local: KD on the student's data; pool: CE on local data, KD on the shared pool; both",
    )
    train: TrainConfig = TrainConfig(epochs=10, lr=3e-3)
    miniplm: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="lm: keep this fraction of the transfer documents the teacher finds likelier than the student's "
        "start does (MiniPLM's difference sampling, once before transfer)",
    )


class TeacherConfig(Section):
    """Where the frozen teachers' logits come from; methods see the same logits in every mode."""

    mode: Literal["inline", "server", "cache"] = Field(
        "inline",
        description="inline: teacher runs in each trial; server: one shared Ray actor; cache: logits computed once",
    )
    dtype: Literal["float32", "float16", "bfloat16"] = Field(
        "float32", description="dtype of served and cached logits (bfloat16: server only)"
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="server device; auto = cuda when it has GPUs")
    num_gpus: float = Field(0.0, ge=0, description="GPUs reserved by each server replica (fractions allowed)")
    num_cpus: float = Field(1.0, gt=0, description="CPUs reserved by each server replica (its torch threads)")
    replicas: int = Field(
        1,
        ge=1,
        description="server: TeacherServer actors, each reserving num_cpus and num_gpus (4 at num_gpus 0.25 share one "
        "GPU); each student spreads its requests over them",
    )
    max_batch_rows: int = Field(4096, ge=1, description="continuous batching: most rows merged into one forward")
    batch_wait_ms: float = Field(
        0.0, ge=0, le=1000, description="an idle server's wait for more rows before it starts a forward (0: none)"
    )
    max_restarts: int = Field(3, ge=0, description="server restarts after a crash; in-flight requests are retried")
    prefetch: int = Field(
        1, ge=0, le=64, description="server: batches whose logits are requested ahead of the student's step (0: none)"
    )
    top_k: int | None = Field(
        None,
        ge=1,
        validation_alias=AliasChoices("top_k", "cache_top_k"),  # cache_top_k: its name before the server sent top-k
        description="server and cache modes: each row's (token's) K largest logits only; K < classes (vocabulary)",
    )
    top_k_fill: Literal["min", "mass"] = Field(
        "min",
        description="with top_k, what the dropped classes read as: min (the row's smallest kept logit) or mass (the "
        "teacher's own tail probability at T=1 spread evenly over them; 4 more bytes a row: the dropped logsumexp)",
    )


class LearnersConfig(Section):
    """Student learners on Ray Train: each trial's transfer runs data-parallel (DDP) on this many workers."""

    num_workers: int = Field(0, ge=0, description="0: train inside the Tune trial; N: N TorchTrainer workers (DDP)")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs reserved per learner worker")
    use_gpu: bool = Field(False, description="one GPU per worker, NCCL backend (gloo on CPU)")
    peer_actors: bool = Field(False, description="DML: run each peer as its own Ray actor (cpus_per_worker each)")


class TuneConfig(Section):
    trial: Literal["transfer", "simulation"] = Field(
        "transfer",
        description="what one trial is: transfer (a method row distils pre-trained nodes' knowledge into a student) "
        "or simulation (a whole Flower simulation of the federated section at one seed, the row as the clients' loss; "
        "axes may vary federated.* knobs; chosen on the global model's validation score)",
    )
    select_on: Literal["val_acc", "local_val_acc", "val_ppl"] = Field(
        "val_acc",
        description="metric the best grid point is chosen on (never the test set); val_ppl (lowest wins, the "
        "default for data.task lm): validation perplexity",
    )
    cpus_per_trial: float = Field(1.0, gt=0, description="CPUs each trial reserves (node pre-training tasks: 1)")
    gpus_per_trial: float = Field(
        0.0, ge=0, description="GPUs each trial and node pre-training task reserves (fractions share a GPU); > 0: CUDA"
    )
    max_concurrent_trials: int | None = Field(
        None, ge=1, description="trials running at once; unset: as many as the cluster's free CPUs and GPUs hold"
    )
    max_failures: int = Field(0, ge=0, description="retries of a trial that raises before it is recorded as failed")
    search: Literal["grid", "random", "optuna"] = Field(
        "grid",
        description="how a row with several settings is searched: grid (every list point), random or optuna (TPE): "
        "tune.num_samples settings drawn from its lists and ranges, each run at every seed and scored by the mean",
    )
    num_samples: int = Field(8, ge=1, description="random / optuna: settings sampled per searched row and cell")
    search_seed: int = Field(0, ge=0, description="random / optuna: the sampler's seed (the same seed, the same draws)")
    scheduler: Literal["fifo", "asha"] = Field(
        "fifo",
        description="fifo: every trial trains to the end; asha: a searched row's settings behind at a rung stop early "
        "(ranked by their seeds' mean validation gain over each seed's start)",
    )
    grace_epochs: int = Field(2, ge=1, description="asha: transfer epochs every setting trains before it may stop")
    reduction_factor: float = Field(3.0, gt=1, description="asha: 1/reduction_factor of the settings go on at a rung")

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, value: Any) -> Any:
        """``tune.fail`` moved to ``faults.trial``: one line naming it, not 'unknown key'."""
        return without_moved_fault_keys("tune", value) if isinstance(value, dict) else value


class RayConfig(Section):
    address: str | None = Field(
        None,
        description="existing cluster (e.g. 'auto' or 'HOST:PORT'); unset: a new local Ray, never one already running",
    )
    num_cpus: int | None = Field(None, ge=1, description="CPUs of the local Ray instance (all if unset)")


class TrackingConfig(Section):
    uri: str | None = Field(None, description="MLflow tracking URI; default: sqlite:///mlflow.db here")
    experiment: str = Field("raykd", min_length=1, description="MLflow experiment the sweep's runs are logged under")
    parent_run_id: str | None = Field(
        None, description="MLflow run to nest this run under (raykd.tune sets it for its follow-up simulations)"
    )


class ExperimentConfig(Section):
    name: Annotated[str, AfterValidator(plain_component)] = Field(  # a folder under output_dir, never outside it
        "default", description=f"experiment name (output folder, MLflow run): 1..{MAX_COMPONENT} of A-Za-z0-9._=+-"
    )
    seeds: list[Seed] = Field([0, 1, 2], min_length=1, description="seeds: a grid axis; spread is over them")
    data: DataConfig = DataConfig()
    partition: PartitionConfig = PartitionConfig()
    nodes: NodesConfig = NodesConfig()
    transfer: TransferConfig = TransferConfig()
    teacher: TeacherConfig = TeacherConfig()
    learners: LearnersConfig = LearnersConfig()
    methods: list[AnyMethodConfig] = Field(min_length=1, description="the table's rows; lists are grid axes")
    tune: TuneConfig = TuneConfig()
    ray: RayConfig = RayConfig()
    tracking: TrackingConfig = TrackingConfig()
    federated: FederatedConfig = FederatedConfig()
    faults: FaultsConfig = FaultsConfig()
    output_dir: Path = Field(Path("runs"), description="where tables, plots and Tune state are written")
    axes: dict[str, dict[str, dict[str, Any]]] = Field(
        {},
        description="study axes {axis: {variant: {dotted.key: value}}}: every method row runs in every combination "
        f"(cell); keys may set {', '.join(CELL_SECTIONS)}",
    )

    @model_validator(mode="before")
    @classmethod
    def _language_model_defaults(cls, value: Any) -> Any:
        """A language-model study chooses on validation perplexity, and fills a top-k row's dropped vocabulary with
        the teacher's tail mass (benchmarks/lm_topk.py: the row-minimum fill made students worse than no KD),
        unless told otherwise."""
        if not (isinstance(value, dict) and isinstance(value.get("data"), dict) and value["data"].get("task") == "lm"):
            return value
        defaults = {"tune": {"select_on": "val_ppl"}, "teacher": {"top_k_fill": "mass"}}
        for section, keys in defaults.items():
            given = value.get(section) if isinstance(value.get(section), dict) else {}
            value = {**value, section: {**keys, **given}}
        return value

    @field_validator("seeds", mode="before")
    @classmethod
    def _seed_list(cls, value: Any) -> Any:
        return _as_list(value)

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: list[int]) -> list[int]:
        twice = next((s for s in seeds if seeds.count(s) > 1), None)
        if twice is not None:
            raise ValueError(f"seeds: {twice} is listed twice (its trials would count twice); give each seed once")
        return seeds

    @model_validator(mode="after")
    def _consistent(self) -> ExperimentConfig:
        """The cross-field rules every config keeps (``raykd.config.rules``): refused on load, in one line."""
        check_config(self)
        return self

    @field_validator("axes")
    @classmethod
    def _axes_have_variants(cls, axes: dict[str, dict[str, dict[str, Any]]]) -> dict[str, dict[str, dict[str, Any]]]:
        empty = next((axis for axis, variants in axes.items() if not variants), None)
        if empty is not None:
            raise ValueError(f"axes.{empty}: has no variants; give it at least one {{variant: {{dotted.key: value}}}}")
        for axis, variants in axes.items():
            bad = next((name for name in (axis, *variants) if not LABEL.fullmatch(name)), None)
            if bad is not None:
                raise ValueError(f"axes.{axis}: {bad!r} is not a plain axis or variant name; allowed: {LABEL_RULE}")
        return axes

    def method(self, label: str) -> MethodConfig:
        return next(m for m in self.methods if m.display() == label)

    @property
    def trial_epochs(self) -> int:
        """The epochs a trial reports when it runs to its end: the transfer's, or a simulation trial's rounds (one
        that reported fewer was stopped by the scheduler)."""
        return self.federated.rounds if self.tune.trial == "simulation" else self.transfer.train.epochs

    def node_ids(self) -> list[int]:
        return [self.transfer.student, *self.transfer.teachers]
