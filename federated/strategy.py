"""Flower's FedAvg with what raykd's study needs: traffic, failures, per-client scores, a server step.

All six strategies are this one server loop: they differ in what clients do (``task.client_update``),
where the rounds start (``task.starting_points``), for FedDF a server step applied to the average and, for
logit-exchange, what is merged: the clients' predictions on the public rows (``exchange.consensus``), not weights.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from federated.exchange import consensus
from federated.task import DIVERGED, global_scores, payload_bytes, setup_of
from raykd.config import ExperimentConfig
from raykd.engine import NonFiniteLoss
from raykd.files import last_line

log = logging.getLogger("federated")

#: (the successful clients' arrays, their weighted average) -> the round's new global model
ServerStep = Callable[[list[ArrayRecord], ArrayRecord], ArrayRecord]
#: Up to this many evaluated clients, a round's log line lists each one's accuracy; beyond, it summarises them.
LISTED_CLIENTS = 8


@dataclass
class RoundLog:
    """What the server saw in one round (round 0: the starting model's test accuracy only).

    Timings are wall seconds on the server: ``round_s`` from configuring training to the end of the
    global evaluation, ``train_phase_s`` until every training reply is in (Flower's fan-out and the
    clients' work), ``server_eval_s`` the global evaluation alone. ``client_train_s`` and
    ``client_train_cpu_s`` are what each successful client measured of its own local training.
    ``evaluated`` counts the clients asked to evaluate (0 in a round without client evaluation),
    ``diverged`` the failed clients whose loss was not finite, ``eval_failed`` the failed evaluations;
    ``errors`` holds each failure's one-line reason, so the run can say at its end what it lost and why.
    """

    round: int
    sampled: int = 0
    evaluated: int = 0
    succeeded: int = 0
    failed: int = 0
    diverged: int = 0
    eval_failed: int = 0
    skipped: bool = False
    bytes_down: int = 0
    bytes_up: int = 0
    train_loss: float | None = None
    test_acc: float | None = None
    test_ppl: float | None = None  # text: perplexity per token (logit-exchange: the evaluated clients' mean)
    val_acc: float | None = None  # the global validation split (logit-exchange: the clients' own, their mean)
    val_ppl: float | None = None
    client_acc: dict[int, float] = field(default_factory=dict)
    client_ppl: dict[int, float] = field(default_factory=dict)
    teacher_bytes: int = 0  # kd with a served teacher: the top-k logits its TeacherServer sent the clients
    round_s: float | None = None
    train_phase_s: float | None = None
    server_eval_s: float | None = None
    client_train_s: dict[int, float] = field(default_factory=dict)
    client_train_cpu_s: dict[int, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def reason_of(error: str) -> str:
    """A failed reply's cause in one line, without Flower's wrapping ("<class ...>:<'... Message: CAUSE'>")."""
    return last_line(error).rpartition("Message: ")[2].removesuffix("'>")


def client_acc_text(acc: dict[int, float], name: str = "client acc %", scale: float = 100.0) -> str:
    """A round's client scores for its log line (accuracies in %, or perplexities with ``scale`` 1): each client's
    when few, else their count, mean, min and max, so the line stays one screen wide however many clients evaluate
    (rounds.csv keeps every value)."""
    if not acc:
        return f"{name.removesuffix(' %')} - (not evaluated this round)"
    if len(acc) <= LISTED_CLIENTS:
        return f"{name} " + " ".join(f"{c}:{scale * a:.1f}" for c, a in sorted(acc.items()))
    values = [scale * a for a in acc.values()]
    return f"{name} n={len(values)} mean {sum(values) / len(values):.1f} min {min(values):.1f} max {max(values):.1f}"


def round_line(entry: RoundLog) -> str:
    """The round's one log line: test score, clients that trained, their scores, traffic (a text's perplexities)."""
    skipped = " (round skipped)" if entry.skipped else ""
    test = f"test acc {100 * (entry.test_acc or 0):.1f}%"
    clients = client_acc_text(entry.client_acc)
    if entry.test_ppl is not None or entry.client_ppl:
        test = f"test ppl {entry.test_ppl:.1f}" if entry.test_ppl is not None else "test ppl -"
        clients = client_acc_text(entry.client_ppl, "client ppl", 1.0)
    teacher = f" teacher {entry.teacher_bytes}" if entry.teacher_bytes else ""
    return (
        f"round {entry.round}: {test} | clients ok {entry.succeeded}/{entry.sampled}{skipped} | {clients} | "
        f"bytes down {entry.bytes_down} up {entry.bytes_up}{teacher}"
    )


def finite(arrays: ArrayRecord) -> bool:
    """Whether every weight of a model is a finite number (a diverged average must not become the global model)."""
    return all(bool(torch.isfinite(t).all()) for t in arrays.to_torch_state_dict().values())


class FederatedStrategy(FedAvg):
    """FedAvg that counts bytes each way and failed clients, and aggregates only with enough successes.

    A client that raises comes back as an error reply: it is logged and counted, and the round
    aggregates the others. With fewer than ``federated.min_successful`` successes the round is skipped
    and the previous global model is kept, so nothing already aggregated is lost. Client evaluation
    costs what training does: a sampled fraction of the clients (``federated.fraction_evaluate``), in
    the rounds ``federated.evaluate_every`` picks.
    """

    def __init__(self, cfg: ExperimentConfig, server_step: ServerStep | None = None) -> None:
        f = cfg.federated
        super().__init__(
            fraction_train=f.fraction,
            fraction_evaluate=f.evaluate_fraction,
            min_train_nodes=f.min_clients,
            min_evaluate_nodes=f.min_clients,
            min_available_nodes=cfg.partition.num_nodes,
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
        """The successful replies; the round's failures in this stage are one warning line, by reason."""
        replies = list(replies)
        ok = [r for r in replies if not r.has_error()]
        reasons = [reason_of(r.error.reason) for r in replies if r.has_error()]
        if reasons:
            entry = self._round(server_round)
            entry.errors += reasons
            entry.diverged += sum(reason.startswith(DIVERGED) for reason in reasons)
            counted = "; ".join(f"{reason} (x{reasons.count(reason)})" for reason in dict.fromkeys(reasons))
            log.warning(
                "round %d: %d of %d clients failed in %s: %s", server_round, len(reasons), len(replies), stage, counted
            )
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
            entry.teacher_bytes += int(metrics.get("teacher_bytes", 0))
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
        if self.cfg.federated.strategy == "logit-exchange":
            return self._consensus(ok)
        arrays, metrics = super().aggregate_train(server_round, ok)
        if arrays is not None:
            arrays = self._new_global(server_round, [m.content[self.arrayrecord_key] for m in ok], arrays)
            if arrays is None:
                return None, None
        entry.train_loss = float(metrics["train_loss"]) if metrics is not None else None
        return arrays, metrics

    def _consensus(self, ok: list[Message]) -> tuple[ArrayRecord, MetricRecord | None]:
        """logit-exchange's aggregate: the clients' predictions merged into the next consensus (no weights)."""
        contents, x = [m.content for m in ok], self.cfg.federated.exchange
        classes = setup_of(self.cfg).dataset.num_classes
        merged = consensus(
            [c[self.arrayrecord_key] for c in contents], classes, x.top_k, x.aggregate, x.era_temperature
        )
        return merged, self.train_metrics_aggr_fn(contents, self.weighted_by_key)

    def _new_global(self, server_round: int, clients: list[ArrayRecord], averaged: ArrayRecord) -> ArrayRecord | None:
        """The round's new global model (the average, after FedDF's server step), or None when it diverged:
        the round is then skipped and the previous global model kept."""
        try:
            arrays = self.server_step(clients, averaged) if self.server_step is not None else averaged
            if finite(arrays):
                return arrays
            reason = f"{DIVERGED} the new global model has non-finite weights"
        except NonFiniteLoss as err:
            reason = f"{DIVERGED} server step: {err}"
        entry = self._round(server_round)
        entry.skipped = True
        entry.errors.append(reason)
        log.warning("round %d: %s; keeping the previous global model", server_round, reason)
        return None

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The round's evaluation messages; none in a round without client evaluation (Flower then sends and
        aggregates nothing)."""
        if not self.cfg.federated.evaluates_clients(server_round):
            return []
        if self.cfg.federated.strategy == "logit-exchange":  # clients evaluate their own models: nothing to send
            arrays = ArrayRecord()
        messages = self._sent(server_round, super().configure_evaluate(server_round, arrays, config, grid))
        self._round(server_round).evaluated = len(messages)
        return messages

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        replies = list(replies)
        ok = self._split(server_round, replies, "evaluation")
        self._round(server_round).eval_failed = len(replies) - len(ok)
        entry = self._round(server_round)
        tested: dict[str, list[float]] = {"acc": [], "ppl": []}
        for reply in ok:
            metrics, node = reply.content["metrics"], int(reply.content["metrics"]["partition-id"])
            entry.client_acc[node] = float(metrics["acc"])
            if "ppl" in metrics:
                entry.client_ppl[node] = float(metrics["ppl"])
            for name, values in tested.items():
                if f"test_{name}" in metrics:
                    values.append(float(metrics[f"test_{name}"]))
        if tested["acc"]:  # logit-exchange: no global model, so the global numbers are the clients' mean
            entry.test_acc = sum(tested["acc"]) / len(tested["acc"])
            entry.test_ppl = sum(tested["ppl"]) / len(tested["ppl"]) if tested["ppl"] else None
            entry.val_acc = sum(entry.client_acc.values()) / len(entry.client_acc)
            entry.val_ppl = sum(entry.client_ppl.values()) / len(entry.client_ppl) if entry.client_ppl else None
        return super().aggregate_evaluate(server_round, ok)

    def evaluate_global(self, server_round: int, arrays: ArrayRecord) -> MetricRecord:
        """Server-side test scores of the global model; called before round 1 and after every round (logit-exchange
        has no global model: its numbers come from the clients' evaluation)."""
        entry = self._round(server_round)
        started = time.perf_counter()
        if self.cfg.federated.strategy != "logit-exchange":
            found = global_scores(self.cfg, arrays)
            entry.test_acc, entry.test_ppl = found["acc"], found.get("ppl")
            entry.val_acc, entry.val_ppl = found["val_acc"], found.get("val_ppl")
        entry.server_eval_s = time.perf_counter() - started
        if server_round in self._started:
            entry.round_s = time.perf_counter() - self._started[server_round]
        if server_round > 0:
            print(round_line(entry), flush=True)
        return MetricRecord({"test_acc": entry.test_acc} if entry.test_acc is not None else {})
