"""Deep mutual learning on Ray: K peers as K actors that exchange logits every step.

Each actor runs the in-process trial (``raykd.experiment.run_trial``) for its one peer, so the fit loop is the
engine's: every step it posts its logits to a ``Board`` actor and gets every peer's back (``fit``'s ``exchange``),
then minimises its own DML loss with the others' logits as constants. Adam is per parameter, so K optimizers equal
the in-process joint one and the result matches ``run_trial`` for the same seed. The student (peer 0) sends its
epoch reports through the board to the driver, which hands them to ``report``.
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

import ray
import torch
from torch import Tensor

from raykd.cluster import START_TIMEOUT_S, get_within, given_device
from raykd.config import ExperimentConfig
from raykd.engine import Exchange
from raykd.experiment import Peer, Report, run_trial


class Board:
    """Where the K peers meet every step, and where the student's epoch reports wait for the driver."""

    def __init__(self, peers: int) -> None:
        self.peers = peers
        self.posted: dict[int, list[Tensor | None]] = {}
        self.ready: dict[int, asyncio.Event] = {}
        self.read: dict[int, int] = {}
        self.reports: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def swap(self, step: int, index: int, logits: Tensor) -> list[Tensor | None]:
        """Post peer ``index``'s logits of ``step``; answer every peer's once all K have posted theirs."""
        posted = self.posted.setdefault(step, [None] * self.peers)
        ready = self.ready.setdefault(step, asyncio.Event())
        posted[index] = logits
        if all(z is not None for z in posted):
            ready.set()
        await ready.wait()
        self.read[step] = self.read.get(step, 0) + 1
        if self.read[step] == self.peers:  # every peer has them: forget the step
            del self.posted[step], self.ready[step], self.read[step]
        return posted

    async def post(self, metrics: dict[str, Any]) -> None:
        await self.reports.put(metrics)

    async def next_report(self) -> dict[str, Any]:
        return await self.reports.get()


class PeerActor:
    """One mutual-learning peer: the trial, training only its own model (one torch thread, as Tune's trials)."""

    def __init__(self) -> None:
        torch.set_num_threads(1)

    def ready(self) -> bool:
        return True

    def train(
        self,
        cfg: ExperimentConfig,
        label: str,
        setting: dict[str, Any],
        seed: int,
        index: int,
        board: Any,
        save_to: Path | None,
    ) -> dict[str, Any]:
        """The trial as peer ``index``; the student (peer 0) reports to the board and saves ``save_to``."""
        report: Report = (lambda m: ray.get(board.post.remote(m))) if index == 0 else (lambda m: None)
        peer = Peer(index, exchange_through(board, index))
        return run_trial(cfg, label, setting, seed, report, device=given_device(), save_to=save_to, peer=peer)


def exchange_through(board: Any, index: int) -> Exchange:
    """Peer ``index``'s step for ``fit``: its logits to the board, every peer's back (its own keep their gradient)."""
    steps = itertools.count()

    def exchange(own: list[Tensor]) -> list[Tensor]:
        everyone = ray.get(board.swap.remote(next(steps), index, own[0].detach()))
        return [own[0] if k == index else z for k, z in enumerate(everyone)]

    return exchange


def run_mutual_learning(
    cfg: ExperimentConfig,
    label: str,
    setting: dict[str, Any],
    seed: int,
    report: Report = lambda m: None,
    save_to: Path | None = None,
) -> dict[str, Any]:
    """The DML trial with one actor per peer; reports the student's (peer 0's) metrics every epoch and, with
    ``save_to``, saves the student (peer 0) there."""
    count = len(cfg.node_ids())
    board = ray.remote(num_cpus=0)(Board).remote(count)  # it only relays: no CPU of the trial's group
    peers = [ray.remote(num_cpus=cfg.learners.cpus_per_worker)(PeerActor).remote() for _ in range(count)]
    try:
        what = f"learners.peer_actors: {count} DML peer actors x {cfg.learners.cpus_per_worker:g} CPUs starting"
        get_within([p.ready.remote() for p in peers], START_TIMEOUT_S, what)
        saves = [save_to, *[None] * (count - 1)]  # the student (peer 0) is the product
        runs = [p.train.remote(cfg, label, setting, seed, k, board, saves[k]) for k, p in enumerate(peers)]
        for _ in range(cfg.transfer.train.epochs):
            report(relay(board, runs))
        return ray.get(runs[0])
    finally:
        for actor in [*peers, board]:
            ray.kill(actor)


def relay(board: Any, runs: list[Any]) -> dict[str, Any]:
    """The student's next epoch report; a peer that fails meanwhile raises here, not leaving the driver waiting."""
    waiting = board.next_report.remote()
    while not ray.wait([waiting], timeout=1.0)[0]:
        ray.get(ray.wait(runs, num_returns=len(runs), timeout=0)[0])  # finished peers: a failed one's error
    return ray.get(waiting)
