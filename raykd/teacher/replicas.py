"""``teacher.replicas``: several TeacherServer actors where one is not enough, passed around as one ``ServerPool``.

One server is one process: on the CPU its torch threads, on a GPU one stream of CUDA work. Replicas (each its own
actor reserving ``teacher.num_cpus`` and ``teacher.num_gpus``, so 4 at 0.25 GPU share one device) run forwards
side by side. Replica 0 keeps the server's name, replica r is ``{name}-{r}`` in the same namespace, so a trial or
a Flower client that knows the name finds them all. Each student spreads its own requests (``Spread``): no
coordinator sits in the requests' path.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import ray

from raykd.cluster import ANSWER_TIMEOUT_S, get_within

#: Counters a pool's stats add over its replicas; the rest are derived, the largest, or where each replica runs.
SUMMED = ("requests", "rows", "batches", "wait_s", "compute_s", "peak_rss_mb")


def replica_name(name: str | None, replica: int) -> str | None:
    """Replica ``replica``'s actor name: the server's own for replica 0 (so one replica is named as before)."""
    return name if name is None or replica == 0 else f"{name}-{replica}"


@dataclass(frozen=True)
class ServerPool:
    """A teacher server's replicas (Ray actor handles, which pickle): the one thing a caller starts, passes to
    trials and clients, asks for statistics and kills."""

    replicas: tuple[Any, ...]

    def __len__(self) -> int:
        return len(self.replicas)

    @classmethod
    def of(cls, server: Any) -> ServerPool:
        """``server`` as a pool: a pool as it is, a bare actor handle (or a stand-in) as the one replica."""
        return server if isinstance(server, ServerPool) else cls((server,))

    @classmethod
    def named(cls, name: str, namespace: str | None = None) -> ServerPool:
        """The replicas of the server named ``name``: replica 0, then each next name until one is missing (every
        replica started before anyone looks, so the count needs no second source that could disagree)."""
        handles = [ray.get_actor(name, namespace=namespace)]
        while True:
            try:
                handles.append(ray.get_actor(replica_name(name, len(handles)), namespace=namespace))
            except ValueError:
                return cls(tuple(handles))

    def each_stats(self, timeout_s: float = ANSWER_TIMEOUT_S) -> list[dict[str, Any]]:
        """Every replica's ``TeacherServer.stats()``, in replica order."""
        refs = [r.stats.remote() for r in self.replicas]
        return get_within(refs, timeout_s, "teacher.mode=server: the server's statistics")

    def stats(self, timeout_s: float = ANSWER_TIMEOUT_S) -> dict[str, Any]:
        """The replicas' statistics as one server's (one replica: exactly its own)."""
        return combined(self.each_stats(timeout_s))

    def kill(self, no_restart: bool = True) -> None:
        for replica in self.replicas:
            ray.kill(replica, no_restart=no_restart)


def combined(each: list[dict[str, Any]]) -> dict[str, Any]:
    """Several replicas' statistics as one: counters and memory summed, the largest batch, the mean batch over all,
    the distinct devices and nodes, ``replicas`` and each replica's requests (``replica{r}.requests``)."""
    if len(each) == 1:
        return each[0]
    out: dict[str, Any] = {k: sum(s[k] for s in each) for k in SUMMED}
    out["max_batch_rows"] = max(s["max_batch_rows"] for s in each)
    out["mean_batch_rows"] = out["rows"] / max(out["batches"], 1)
    for where in ("device", "node_id"):
        out[where] = ",".join(sorted({str(s[where]) for s in each}))
    out["replicas"] = len(each)
    out.update({f"replica{r}.requests": s["requests"] for r, s in enumerate(each)})
    return out


class Spread:
    """One student's choice of replica per request: the one with the fewest of its requests outstanding, ties taken
    round-robin from an offset of this requester's own, so students that start together begin on different
    replicas and a student with a request in flight sends the next one elsewhere."""

    def __init__(self, replicas: int) -> None:
        self.replicas = replicas
        self.next = requester_offset() % replicas if replicas > 1 else 0

    def pick(self, outstanding: Mapping[int, int]) -> int:
        if self.replicas == 1:
            return 0
        chosen = min(range(self.replicas), key=lambda r: (outstanding.get(r, 0), (r - self.next) % self.replicas))
        self.next = (chosen + 1) % self.replicas
        return chosen


def requester_offset() -> int:
    """A number of this process's own (its Ray worker id's hash; its pid outside Ray): where its round-robin starts."""
    who = ray.get_runtime_context().get_worker_id() if ray.is_initialized() else str(os.getpid())
    return zlib.crc32(who.encode())
