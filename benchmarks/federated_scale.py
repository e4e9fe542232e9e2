"""Federated cost against the number of clients, at a fixed number of sampled clients per round.

    python benchmarks/federated_scale.py [--clients 10 100 1000] [--sampled 10] [--rounds 3] [--repeats 2]

FedAvg (``tune_configs/federated_kd.yaml`` with ``federated.strategy=fedavg``) on a synthetic .npz
dataset that gives every client the same work at every federation size: ``--per-client`` samples each
(IID; 80% local train, 20% local validation), 10 classes of 40-long vectors, a fixed 1,000-sample test
set, a small MLP, one local epoch of one batch. ``federated.fraction`` is sampled / clients, so each
round trains and evaluates the same number of clients; ``client_cpus`` 0.5 gives a pool of 4 client
actors on 2 cores at every size.

Each simulation is its own ``python -m federated.simulate`` child process. Its rounds.csv gives the
round times; each stdout line is timestamped as it arrives, so the process's time before round 1 is
split at Flower's first line (before it: imports, preflight, Ray's start; after it: Flower's engine
and ServerApp start, node registration, the start point and its global evaluation), and the time
after the last round (records, MLflow, shutdown) is measured too. Round 1 beyond a steady round is
the client actors' start (a process each, importing torch and raykd) and their first data load.
Sizes alternate over ``--repeats`` passes (10, 100, 1000, then 1000, 100, 10, ...) so a drifting
machine load touches each alike; the table gives the median of each number. Memory: the peak, over
0.2 s samples, of the summed RSS of the child's whole process tree (driver, Ray's own processes,
client actors); RSS counts pages shared between processes once per process, so the sum is an upper
bound. CPU: each process's user + system seconds at its last sample, summed by group; on a shared
machine they say more than wall times, which stretch with everyone else's load.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
CORES = 2
TEST_SAMPLES = 1000
VAL_FRACTION = 0.1
FEATURES, CLASSES = 40, 10
#: In the first line Flower's simulation prints (``run_simulation``'s deprecation notice).
FLOWER_STARTS = "The `run_simulation` function is deprecated"
#: How the simulation's process tree is grouped for CPU time.
GROUPS = ("driver", "client actors", "Ray's own processes")
#: Rows shown as whole numbers.
COUNTS = ("per round", "MiB", "processes")
# psutil ships inside Ray's wheel (ray/thirdparty_files); reach it without importing Ray here.
sys.path.append(str(Path(importlib.util.find_spec("ray").submodule_search_locations[0]) / "thirdparty_files"))
import psutil  # noqa: E402


def write_data(path: Path, clients: int, per_client: int) -> Path:
    """Gaussian classes, sized so each of ``clients`` IID partitions holds ``per_client`` samples."""
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(CLASSES, FEATURES)).astype(np.float32)
    train = int(np.ceil(clients * per_client / (1 - VAL_FRACTION)))

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, CLASSES, n)
        return centers[y] + rng.normal(scale=1.5, size=(n, FEATURES)).astype(np.float32), y

    (x, y), (x_test, y_test) = draw(train), draw(TEST_SAMPLES)
    np.savez(path, x=x, y=y, x_test=x_test, y_test=y_test)
    return path


@dataclass
class Usage:
    """What a process tree used: the largest summed RSS seen (MiB), in all and in Flower's client actors, the most
    processes at once, and each process's CPU seconds at its last sample, by pid, with its group."""

    rss: float = 0.0
    actors_rss: float = 0.0
    processes: int = 0
    cpu: dict[int, tuple[str, float]] = field(default_factory=dict)

    def cpu_of(self, group: str) -> float:
        """CPU seconds of one group; unlike wall times, they barely move with other work on the machine."""
        return sum(seconds for g, seconds in self.cpu.values() if g == group)


def group_of(process: psutil.Process, driver: int, usage: Usage) -> str:
    """A process's group; a client actor stays one (Ray renames a worker as its actor ends)."""
    if process.pid == driver:
        return "driver"
    if usage.cpu.get(process.pid, ("",))[0] == "client actors" or "ClientApp" in " ".join(process.cmdline()):
        return "client actors"
    return "Ray's own processes"


def watch(pid: int, usage: Usage, stop: threading.Event) -> None:
    """Sample the process tree of ``pid`` every 0.2 s until ``stop``."""
    root = psutil.Process(pid)
    while not stop.is_set():
        try:
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        rss = {"all": 0.0, "client actors": 0.0}
        for process in tree:
            try:
                group, mib, times = (
                    group_of(process, pid, usage),
                    process.memory_info().rss / 2**20,
                    process.cpu_times(),
                )
            except psutil.Error:
                continue
            usage.cpu[process.pid] = group, times.user + times.system
            rss["all"] += mib
            rss["client actors"] += mib if group == "client actors" else 0.0
        usage.rss, usage.actors_rss = max(usage.rss, rss["all"]), max(usage.actors_rss, rss["client actors"])
        usage.processes = max(usage.processes, len(tree))
        stop.wait(0.2)


@dataclass
class Run:
    """One simulation: its rounds.csv, when each stdout line arrived (s after start), wall time, memory and CPU."""

    rounds: pd.DataFrame
    lines: list[tuple[float, str]] = field(default_factory=list)
    wall: float = 0.0
    usage: Usage = field(default_factory=Usage)

    def seen(self, text: str) -> float:
        """When the first line holding ``text`` arrived."""
        return next(t for t, line in self.lines if text in line)


def settings(work: Path, clients: int, rounds: int, args: argparse.Namespace, out: Path) -> dict[str, object]:
    """The ``--set`` overrides of one simulation."""
    return {
        "federated.strategy": "fedavg",
        "federated.rounds": rounds,
        "federated.fraction": args.sampled / clients,
        "federated.min_clients": args.sampled,
        "federated.local": "{epochs: 1, batch_size: 64, lr: 0.01}",
        "federated.client_cpus": 0.5,
        "partition.scheme": "iid",
        "partition.num_nodes": clients,
        "partition.min_samples": args.per_client // 2,
        "data.dataset": "npz",
        "data.root": write_data(work / f"data-{clients}.npz", clients, args.per_client),
        "data.val_fraction": VAL_FRACTION,
        "data.pool_fraction": 0,
        "transfer.set": "local",
        "nodes.model": "{name: mlp, width: 32, depth: 1}",
        "nodes.cache_dir": work / "cache",
        "ray.num_cpus": CORES,
        "output_dir": out,
        "tracking.experiment": "bench",
    }


def simulate(work: Path, clients: int, rounds: int, args: argparse.Namespace, tag: str) -> Run:
    """One simulation of ``clients`` clients in its own driver process, watched from outside."""
    out = work / tag
    sets = settings(work, clients, rounds, args, out)
    command = [sys.executable, "-m", "federated.simulate", "--config", str(REPO / "tune_configs/federated_kd.yaml")]
    command += ["--tracking-uri", f"sqlite:///{work / 'mlflow.db'}"]
    command += [a for key, value in sets.items() for a in ("--set", f"{key}={value}")]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    started, lines = time.perf_counter(), []
    child = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    usage, stop = Usage(), threading.Event()
    watcher = threading.Thread(target=watch, args=(child.pid, usage, stop), daemon=True)
    watcher.start()
    for line in child.stdout:  # type: ignore[union-attr]
        lines.append((time.perf_counter() - started, line.rstrip()))
    code, wall = child.wait(), time.perf_counter() - started
    stop.set()
    watcher.join()
    if code != 0:
        tail = "\n".join(line for _, line in lines[-40:])
        raise RuntimeError(f"simulation of {clients} clients failed ({code}):\n{tail}")
    (folder,) = out.iterdir()
    return Run(pd.read_csv(folder / "rounds.csv"), lines, wall, usage)


def summary(run: Run) -> dict[str, float]:
    """Steady round (mean of rounds 2..N), round 1 apart, what the process spent before and after the rounds."""
    r = run.rounds.set_index("round")
    last = int(r.index.max())
    round_1_start = run.seen("round 1:") - r.loc[1, "round_s"]
    steady, flower = r.loc[2:], run.seen(FLOWER_STARTS)
    steady_s = steady["round_s"].mean()
    return {
        "clients trained per round": steady["sampled"].mean(),
        "clients evaluated per round": steady["evaluated"].mean(),
        "round s (mean of rounds 2..N)": steady_s,
        "of which the slowest client's training s": steady["client_train_s_max"].mean(),
        "round 1 s": r.loc[1, "round_s"],
        "of which beyond a steady round (actors start, first data load) s": r.loc[1, "round_s"] - steady_s,
        "before round 1 s": round_1_start,
        "of which imports, preflight, Ray start s": flower,
        "of which Flower start, nodes registered, start point s": round_1_start - flower,
        "after the last round s": run.wall - run.seen(f"round {last}:"),
        "process wall s": run.wall,
        "peak RSS, all processes MiB": run.usage.rss,
        "peak RSS, client actors MiB": run.usage.actors_rss,
        "processes (most at once)": run.usage.processes,
        **{f"CPU s, {group}": run.usage.cpu_of(group) for group in GROUPS},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--sampled", type=int, default=10, help="clients trained and evaluated per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--per-client", type=int, default=40, help="samples each client holds")
    parser.add_argument("--repeats", type=int, default=2, help="passes over the sizes, in alternating order")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="raykd-fed-scale-"))
    print(f"work folder {work}; load average at start {load_average()}", flush=True)
    simulate(work, args.clients[0], 1, args, "warm-up")  # the MLflow store's tables, so no timed run builds them
    runs: dict[int, list[dict[str, float]]] = {clients: [] for clients in args.clients}
    for repeat in range(args.repeats):
        for clients in args.clients if repeat % 2 == 0 else reversed(args.clients):
            run = simulate(work, clients, args.rounds, args, f"n{clients}-r{repeat}")
            runs[clients].append(summary(run))
            print(f"{clients} clients, pass {repeat}: {run.wall:.1f}s, load {load_average()}", flush=True)
    print(f"\nMedian over {args.repeats} runs per size.\n")
    print("| clients | " + " | ".join(str(c) for c in runs) + " |\n|---|" + "---:|" * len(runs))
    for row in runs[args.clients[0]][0]:
        values = [statistics.median(run[row] for run in per_size) for per_size in runs.values()]
        cells = [f"{v:.0f}" if any(word in row for word in COUNTS) else f"{v:.2f}" for v in values]
        print(f"| {row} | " + " | ".join(cells) + " |")
    print(f"\nload average at end {load_average()}")
    return 0


def load_average() -> str:
    """The 1, 5 and 15-minute load averages (other work on the machine slows every number here)."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


if __name__ == "__main__":
    sys.exit(main())
