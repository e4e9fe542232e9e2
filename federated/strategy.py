"""Flower's FedAvg with what raykd's study needs: traffic, failures, per-client accuracy, a server step.

All five strategies are this one server loop: they differ in what clients do (``task.client_update``),
where the rounds start (``task.starting_points``) and, for FedDF, a server step applied to the average.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from federated.task import global_test_accuracy, payload_bytes
from raykd.config import ExperimentConfig
from raykd.files import last_line

log = logging.getLogger("federated")

#: (the successful clients' arrays, their weighted average) -> the round's new global model
ServerStep = Callable[[list[ArrayRecord], ArrayRecord], ArrayRecord]


@dataclass
class RoundLog:
    """What the server saw in one round (round 0: the starting model's test accuracy only).

    Timings are wall seconds on the server: ``round_s`` from configuring training to the end of the
    global evaluation, ``train_phase_s`` until every training reply is in (Flower's fan-out and the
    clients' work), ``server_eval_s`` the global evaluation alone. ``client_train_s`` and
    ``client_train_cpu_s`` are what each successful client measured of its own local training.
    """

    round: int
    sampled: int = 0
    succeeded: int = 0
    failed: int = 0
    skipped: bool = False
    bytes_down: int = 0
    bytes_up: int = 0
    train_loss: float | None = None
    test_acc: float | None = None
    client_acc: dict[int, float] = field(default_factory=dict)
    round_s: float | None = None
    train_phase_s: float | None = None
    server_eval_s: float | None = None
    client_train_s: dict[int, float] = field(default_factory=dict)
    client_train_cpu_s: dict[int, float] = field(default_factory=dict)


class FederatedStrategy(FedAvg):
    """FedAvg that counts bytes each way and failed clients, and aggregates only with enough successes.

    A client that raises comes back as an error reply: it is logged and counted, and the round
    aggregates the others. With fewer than ``federated.min_successful`` successes the round is skipped
    and the previous global model is kept, so nothing already aggregated is lost.
    """

    def __init__(self, cfg: ExperimentConfig, server_step: ServerStep | None = None) -> None:
        f, nodes = cfg.federated, cfg.partition.num_nodes
        super().__init__(
            fraction_train=f.fraction,
            fraction_evaluate=1.0,
            min_train_nodes=f.min_clients,
            min_evaluate_nodes=nodes,
            min_available_nodes=nodes,
        )
        self.cfg, self.server_step = cfg, server_step
        self.rounds: dict[int, RoundLog] = {}
        self._started: dict[int, float] = {}

    def _round(self, server_round: int) -> RoundLog:
        return self.rounds.setdefault(server_round, RoundLog(server_round))

    def _sent(self, server_round: int, messages: Iterable[Message]) -> list[Message]:
        messages = list(messages)
        self._round(server_round).bytes_down += sum(payload_bytes(m.content[self.arrayrecord_key]) for m in messages)
        return messages

    def _split(self, server_round: int, replies: Iterable[Message], stage: str) -> list[Message]:
        """The successful replies; each failure is logged as a warning."""
        ok = []
        for reply in replies:
            if reply.has_error():
                reason = last_line(reply.error.reason)
                log.warning("round %d: a client failed in %s: %s", server_round, stage, reason)
            else:
                ok.append(reply)
        return ok

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._started[server_round] = time.perf_counter()
        messages = self._sent(server_round, super().configure_train(server_round, arrays, config, grid))
        self._round(server_round).sampled = len(messages)
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        entry = self._round(server_round)
        if server_round in self._started:
            entry.train_phase_s = time.perf_counter() - self._started[server_round]
        ok = self._split(server_round, replies, "training")
        for reply in ok:
            metrics = reply.content["metrics"]
            if "train_s" in metrics:
                node = int(metrics["partition-id"])
                entry.client_train_s[node] = float(metrics["train_s"])
                entry.client_train_cpu_s[node] = float(metrics["train_cpu_s"])
        entry.succeeded, entry.failed = len(ok), len(replies) - len(ok)
        entry.bytes_up += sum(payload_bytes(m.content[self.arrayrecord_key]) for m in ok)
        if len(ok) < self.cfg.federated.min_successful:
            entry.skipped = True
            log.warning(
                "round %d: %d of %d clients succeeded, fewer than federated.min_successful=%d; "
                "keeping the previous global model",
                server_round,
                len(ok),
                len(replies),
                self.cfg.federated.min_successful,
            )
            return None, None
        arrays, metrics = super().aggregate_train(server_round, ok)
        if self.server_step is not None and arrays is not None:
            arrays = self.server_step([m.content[self.arrayrecord_key] for m in ok], arrays)
        entry.train_loss = float(metrics["train_loss"]) if metrics is not None else None
        return arrays, metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self._sent(server_round, super().configure_evaluate(server_round, arrays, config, grid))

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        ok = self._split(server_round, replies, "evaluation")
        for reply in ok:
            metrics = reply.content["metrics"]
            self._round(server_round).client_acc[int(metrics["partition-id"])] = float(metrics["acc"])
        return super().aggregate_evaluate(server_round, ok)

    def evaluate_global(self, server_round: int, arrays: ArrayRecord) -> MetricRecord:
        """Server-side test accuracy of the global model; called before round 1 and after every round."""
        entry = self._round(server_round)
        started = time.perf_counter()
        entry.test_acc = global_test_accuracy(self.cfg, arrays)
        entry.server_eval_s = time.perf_counter() - started
        if server_round in self._started:
            entry.round_s = time.perf_counter() - self._started[server_round]
        if server_round > 0:
            clients = " ".join(f"{c}:{100 * a:.1f}" for c, a in sorted(entry.client_acc.items()))
            print(
                f"round {server_round}: test acc {100 * entry.test_acc:.1f}% | clients ok {entry.succeeded}/"
                f"{entry.sampled}{' (round skipped)' if entry.skipped else ''} | client acc % {clients} | "
                f"bytes down {entry.bytes_down} up {entry.bytes_up}",
                flush=True,
            )
        return MetricRecord({"test_acc": entry.test_acc})
