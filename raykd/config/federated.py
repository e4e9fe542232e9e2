"""The ``federated`` section: how a Flower simulation runs (its knobs of learning live in the method rows)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from raykd.config.base import ModelSpec, Section, TrainConfig

#: KD temperature of the server's pool distillation when no method row has a ``temperature`` knob.
SERVER_TEMPERATURE = 4.0
_KD_ROW, _FML_ROW = (
    "{name: kd, temperature: 4, alpha: 0.5}",
    "{name: 'federated.fml:FederatedMutualLearning', alpha: 0.5, beta: 0.5}",
)
#: Former federated knobs and (their method-row knob, an example row): each knob has one home, the method row.
MOVED_FEDERATED_KEYS = {
    "temperature": ("temperature", _KD_ROW),
    "kd_alpha": ("alpha", _KD_ROW),
    "fml_alpha": ("alpha", _FML_ROW),
    "fml_beta": ("beta", _FML_ROW),
}


Strategy = Literal["fedavg", "kd", "fml", "consolidation", "feddf", "logit-exchange"]


class ExchangeConfig(Section):
    """Strategy logit-exchange (FedMD / DS-FL): what clients send instead of weights, and how the server merges it."""

    top_k: int = Field(
        32,
        ge=1,
        description="each public row's (token's) K largest log-probabilities sent, with the "
        "dropped mass; K >= the classes (vocabulary) sends them all",
    )
    aggregate: Literal["mean", "era"] = Field(
        "mean",
        description="mean: the clients' probabilities averaged; era: DS-FL's entropy-reduction averaging (the mean "
        "sharpened at era_temperature)",
    )
    era_temperature: float = Field(0.5, gt=0, le=1, description="era: the average's softmax temperature (< 1 sharpens)")
    public_rows: int | None = Field(
        None,
        ge=1,
        description="shared public rows (pool samples; text: pool sequences) used, the first of a fixed "
        "draw; unset: the whole pool (data.pool_fraction)",
    )


class FederatedConfig(Section):
    """Flower simulation (``python -m federated.simulate``): the clients are the partition's nodes."""

    strategy: Strategy = Field(
        "fedavg",
        description="fedavg; kd: clients distil a frozen teacher (federated.teacher, else the global model) into their "
        "update; fml: private + meme models; consolidation: FedAvg from random, averaged and KD-consolidated node "
        "models; feddf: server ensemble KD on the pool; logit-exchange: clients send top-k logits on the public pool "
        "instead of weights and distil the consensus (models may differ: nodes.models)",
    )
    compare: list[Strategy] = Field(
        [],
        description="strategies run one after another in this simulation on the same clients and compared in one "
        "table (replaces strategy; e.g. [fedavg, kd, logit-exchange])",
    )
    teacher: ModelSpec | None = Field(
        None,
        description="kd: a frozen teacher model every client distils (a checkpoint, hf:/gguf: model, or trained once "
        "on the public pool with nodes.train); teacher.mode server serves it from one Ray actor (teacher.top_k)",
    )
    exchange: ExchangeConfig = Field(ExchangeConfig(), description="strategy logit-exchange")
    rounds: int = Field(5, ge=1, description="federated rounds")
    fraction: float = Field(1.0, gt=0, le=1, description="fraction of clients sampled each round, in (0, 1]")
    min_clients: int = Field(2, ge=1, description="clients sampled each round at least (<= partition.num_nodes)")
    fraction_evaluate: float | None = Field(
        None,
        gt=0,
        le=1,
        description="fraction of clients that evaluate the global model on their validation split, in (0, 1], at "
        "least min_clients; unset: the training fraction",
    )
    evaluate_every: int = Field(
        1,
        ge=1,
        description="client evaluation in rounds that are multiples of this and in the last round (>= 1); the "
        "server's global test evaluation runs every round",
    )
    min_successful: int = Field(
        1, ge=1, description="successful clients a round needs to aggregate, else it is skipped"
    )
    local: TrainConfig = Field(TrainConfig(epochs=1, lr=3e-3), description="each client's local training per round")
    server: TrainConfig = Field(
        TrainConfig(epochs=3, lr=3e-3),
        description="server-side KD on the shared pool (feddf, consolidation), at the temperature of the first "
        f"method row that has one, else {SERVER_TEMPERATURE:g}",
    )
    target_acc: float = Field(0.6, gt=0, le=1, description="test accuracy whose first round is reported")
    client_cpus: float = Field(1.0, gt=0, description="CPUs reserved by each simulated client")
    client_gpus: float = Field(0.0, ge=0, description="GPUs reserved by each simulated client")
    poll_interval: float = Field(
        0.1,
        gt=0,
        le=1,
        description="seconds between the simulation's looks for messages, by the engine (to hand them to clients) "
        "and by the server (for replies); each message fan-out waits up to twice this (Flower's value: 0.1)",
    )
    fail_client: int | None = Field(None, ge=0, description="fault injection: this client raises during training")
    fail_rounds: list[int] = Field([], description="rounds in which fail_client raises (empty: every round)")
    after_sweep: bool = Field(
        False,
        description="python -m raykd.tune: after the sweep, run this simulation for every seed and every distinct "
        "partition of the study's cells, and add its rounds-to-target table to the report",
    )

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, value: Any) -> Any:
        """Keys that moved to the method row: one line naming the new home, not 'unknown key'."""
        if not isinstance(value, dict):
            return value
        if "grid" in value:
            raise ValueError(
                "federated.grid: a search over simulations is a sweep; set tune.trial: simulation, give the method "
                "row's knobs as lists and vary federated.* knobs with axes"
            )
        for key in value:
            if key in MOVED_FEDERATED_KEYS:
                knob, example = MOVED_FEDERATED_KEYS[key]
                raise ValueError(
                    f"federated.{key}: moved to the method row; set methods.0.{knob} (e.g. methods: [{example}])"
                )
        return value

    @property
    def strategies(self) -> list[str]:
        """The strategies this simulation runs, in order: ``compare``, else ``strategy`` alone."""
        return list(self.compare) or [self.strategy]

    def evaluates_clients(self, server_round: int) -> bool:
        """Whether clients evaluate in ``server_round``: every ``evaluate_every`` rounds, and always in the last
        (the run ends with every evaluated client's accuracy of the final model)."""
        return server_round % self.evaluate_every == 0 or server_round == self.rounds

    @property
    def evaluate_fraction(self) -> float:
        """The fraction of clients evaluated when clients evaluate: ``fraction_evaluate``, else ``fraction``."""
        return self.fraction if self.fraction_evaluate is None else self.fraction_evaluate
