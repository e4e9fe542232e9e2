"""Where a served request's time goes, and served rows/s at 1, 4 and 8 requesters against plain inference.

    git show main:raykd/teacher/server.py > /tmp/server_main.py
    PYTHONPATH=$PWD python benchmarks/serve_overhead.py [--baseline /tmp/server_main.py] [--seconds 3] [--rounds 2]
    PYTHONPATH=$PWD python benchmarks/serve_overhead.py --replicas 1 2 --requesters 4 8 --seconds 1 --rounds 2

Light teachers, where a request's overhead rivals its forward: ``cnn1d`` (width 25) on MNIST-1D's (1, 40) rows
and ``cnn2d`` (width 4, one block) on CIFAR's (3, 32, 32), 256-row requests, random weights and inputs, one torch thread
everywhere, each server reserving 0.5 CPU of a local Ray with 2. Contenders, alternated in every round in this one
process:
``current`` (this tree's ``raykd.teacher.server``, ``batch_wait_ms`` 0), ``current-wait-2ms`` (the same with the
old default wait) and, with ``--baseline``, ``baseline`` (another version of that file, ``batch_wait_ms`` 2, loaded
as its own module and shipped to Ray by value), each with its own ``ServedTeacher``. With ``--replicas N ...`` the
contenders are instead ``current xN``: this tree's server as N replicas (``teacher.replicas``, 0.5 CPU each), each
requester spreading its requests over them; every rate line then also gives each contender's rows/s over the first's.

1. profile: one requester, no prefetch, one request at a time: the mean latency beside the server's counters
   (queue wait, compute = merge + forward + split) and the in-process forward, the rest being Ray's round trip
   and (de)serialisation; plus the bytes and time Ray's serialiser takes for one request and one reply.
2. rates: K = 1, 4, 8 requester actors drive ``ServedTeacher`` (prefetch 1) as trials do, for ``--seconds``;
   rows/s = all rows / the longest wall. Plain: the same model in this process on 256-row batches.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import gpu_speed  # a sibling script: the requesting loop both benchmarks share
import ray
import torch
from gpu_speed import served_rows

from raykd.config import ModelSpec, TeacherConfig
from raykd.engine import Batch
from raykd.files import file_digest
from raykd.models import build_model
from raykd.teacher.replicas import ServerPool

ray.cloudpickle.register_pickle_by_value(gpu_speed)  # the requesters' processes need not find the script

ROWS, CLASSES, PROFILE_REQUESTS = 256, 10, 200
CASES = {
    "cnn1d-25 (1,40)": (ModelSpec(name="cnn1d", width=25), (1, 40)),
    "cnn2d-4 (3,32,32)": (ModelSpec(name="cnn2d", width=4, depth=1), (3, 32, 32)),
}


def load_baseline(path: Path) -> ModuleType:
    """``path`` as module ``raykd_server_baseline``, pickled by value so Ray's workers need no copy of it."""
    spec = importlib.util.spec_from_file_location("raykd_server_baseline", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    ray.cloudpickle.register_pickle_by_value(module)
    return module


@ray.remote(num_cpus=0)
class Requester:
    """One student's side: ``ServedTeacher`` of the contender's module over 4 cycled 256-row batches."""

    def __init__(self, shape: tuple[int, ...], seed: int) -> None:
        torch.set_num_threads(1)
        g = torch.Generator().manual_seed(seed)
        rows, keep = torch.arange(ROWS), torch.ones(ROWS, dtype=torch.bool)
        self.batches = [Batch(torch.randn(ROWS, *shape, generator=g), rows * 0, keep, rows) for _ in range(4)]

    def run(self, served: type, server: Any, key: str, seconds: float, prefetch: int) -> tuple[int, float]:
        """Rows answered and the wall they took, requesting like ``fit`` (``prefetch`` batches ahead)."""
        return served_rows(served(server, [key], None, prefetch=prefetch), self.batches, seconds)

    def count(self, served: type, server: Any, key: str, requests: int) -> float:
        """Mean wall of ``requests`` requests sent one at a time (no prefetch)."""
        teacher = served(server, [key], None, prefetch=0)
        start = time.perf_counter()
        for i in range(requests):
            teacher(self.batches[i % 4])
        return (time.perf_counter() - start) / requests


@torch.no_grad()
def plain_rate(model: torch.nn.Module, shape: tuple[int, ...], seconds: float) -> tuple[float, float]:
    """In-process rows/s on 256-row batches, and the ms one forward takes."""
    x, done, start = torch.randn(ROWS, *shape), 0, time.perf_counter()
    while time.perf_counter() - start < seconds or done == 0:
        done += model(x).shape[0]
    wall = time.perf_counter() - start
    return done / wall, 1000 * wall * ROWS / done


def wire_cost(module: ModuleType, shape: tuple[int, ...]) -> str:
    """Bytes and serialiser time of one request's input and one reply taken from a merged 2048-row answer."""
    ctx = ray._private.worker.global_worker.get_serialization_context()
    x, merged = torch.randn(ROWS, *shape), torch.randn(2048, 1, CLASSES)
    wire = getattr(module, "Carried", None)
    request = wire(x) if wire else x
    reply = wire(merged[:ROWS], rows_first=True) if wire else merged.transpose(0, 1)[:, :ROWS].clone()
    out = []
    for name, obj in (("request", request), ("reply", reply)):
        start = time.perf_counter()
        for _ in range(20):
            size = ctx.serialize(obj).total_bytes
        out.append(f"{name} {size:,} B in {(time.perf_counter() - start) / 20 * 1e6:.0f} us")
    return ", ".join(out)


def counters(server: Any) -> dict[str, float]:
    """The server's counters summed over its replicas (a baseline's bare actor is one), and each replica's requests."""
    stats = ServerPool.of(server).stats()
    keys = ("requests", "rows", "batches", "wait_s", "compute_s")
    return {k: float(v) for k, v in stats.items() if k in keys or k.endswith(".requests")}


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before[k] for k in after}


def profile(module: ModuleType, name: str, server: Any, key: str, shape: tuple[int, ...], forward_ms: float) -> None:
    """One requester, one request at a time: where the mean latency goes."""
    one = Requester.remote(shape, 0)
    ray.get(one.count.remote(module.ServedTeacher, server, key, 20))  # warm-up
    before = counters(server)
    latency = ray.get(one.count.remote(module.ServedTeacher, server, key, PROFILE_REQUESTS))
    d = delta(counters(server), before)
    n = d["requests"]
    wait, compute = 1000 * d["wait_s"] / n, 1000 * d["compute_s"] / n
    rest = 1000 * latency - wait - compute
    print(
        f"profile {name}: {1000 * latency:.2f} ms a request = queue wait {wait:.2f} + compute {compute:.2f} "
        f"(in-process forward {forward_ms:.2f}) + Ray round trip and (de)serialisation {rest:.2f}; "
        f"{wire_cost(module, shape)}",
        flush=True,
    )
    ray.kill(one)


def rates(
    contenders: dict[str, tuple[ModuleType, Any]], model: torch.nn.Module, key: str, shape: tuple[int, ...], a: Any
) -> None:
    """Served rows/s at each requester count, contenders alternated within every round (plain inference once per
    round, between them); medians of the rounds."""
    plains: list[float] = []
    pool = [Requester.remote(shape, i) for i in range(max(a.requesters))]
    got: dict[tuple[str, int], list[float]] = {}
    busy: dict[tuple[str, int], list[float]] = {}
    batch: dict[tuple[str, int], list[float]] = {}
    for r in range(a.rounds):
        plains.append(plain_rate(model, shape, a.seconds)[0])
        for k in a.requesters:
            order = list(contenders) if r % 2 == 0 else list(reversed(contenders))
            for name in order:
                module, server = contenders[name]
                before = counters(server)
                done = ray.get([q.run.remote(module.ServedTeacher, server, key, a.seconds, 1) for q in pool[:k]])
                d, wall = delta(counters(server), before), max(w for _, w in done)
                split = [v for key, v in sorted(d.items()) if key.endswith(".requests")]
                if split and r == 0:
                    print(f"{name} K={k}: requests per replica {split}", flush=True)
                got.setdefault((name, k), []).append(sum(rows for rows, _ in done) / wall)
                busy.setdefault((name, k), []).append(d["compute_s"] / wall)
                batch.setdefault((name, k), []).append(d["rows"] / max(d["batches"], 1))
    for q in pool:
        ray.kill(q)
    plain = statistics.median(plains)
    print(f"plain in-process: {plain:,.0f} rows/s (median of {a.rounds} rounds)", flush=True)
    first = next(iter(contenders))
    for k in a.requesters:
        rate = {name: statistics.median(got[name, k]) for name in contenders}
        line = ", ".join(
            f"{name} {rate[name]:,.0f} rows/s ({rate[name] / plain:.2f} of plain; server busy "
            f"{100 * statistics.median(busy[name, k]):.0f}%, mean batch {statistics.median(batch[name, k]):.0f} rows"
            + (f"; {rate[name] / rate[first]:.2f}x {first}" if a.replicas and name != first else "")
            + ")"
            for name in contenders
        )
        print(f"rate K={k}: {line}", flush=True)


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--baseline", type=Path, help="another raykd/teacher/server.py to compare with this tree's")
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--requesters", type=int, nargs="+", default=[1, 4, 8])
    p.add_argument("--replicas", type=int, nargs="+", help="contenders: this tree's server as this many replicas each")
    return p.parse_args()


def main() -> None:
    a = parse()
    torch.set_num_threads(1)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    from raykd.teacher import server as current

    variants = [("current", current, 0.0, 1), ("current-wait-2ms", current, 2.0, 1)]  # 2 ms: the old default wait
    if a.replicas:
        variants = [(f"current x{n}", current, 0.0, n) for n in a.replicas]
    variants += [("baseline", load_baseline(a.baseline), 2.0, 1)] if a.baseline else []
    folder = Path(tempfile.mkdtemp(prefix="raykd-serve-overhead-"))
    cfg = TeacherConfig(mode="server", num_cpus=0.5, device="cpu")  # one torch thread each
    for case, (spec, shape) in CASES.items():
        torch.manual_seed(0)
        model = build_model(spec, shape, CLASSES).eval()
        path = folder / f"{spec.name}.pt"
        torch.save({"state_dict": model.state_dict()}, path)
        key = file_digest(path)
        forward_ms = plain_rate(model, shape, a.seconds)[1]
        print(f"{case}: a 256-row forward in this process takes {forward_ms:.2f} ms", flush=True)
        contenders = {}
        for name, module, wait_ms, replicas in variants:
            run_cfg = cfg.model_copy(update={"batch_wait_ms": wait_ms, "replicas": replicas})
            server = module.start_server([module.served_model(key, path, spec, shape, CLASSES)], run_cfg)
            contenders[name] = (module, server)
            profile(module, f"{case} {name}", server, key, shape, forward_ms)
        rates(contenders, model, key, shape, a)
        for _, server in contenders.values():
            ServerPool.of(server).kill()
    ray.shutdown()


if __name__ == "__main__":
    main()
