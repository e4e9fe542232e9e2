"""Flower's per-round overhead against the clients' own training, in a 4-client simulation on 2 cores.

    python benchmarks/federated_overhead.py [--rounds 10] [--repeats 2]

FedAvg on MNIST-1D with the reference cnn1d (``tune_configs/federated_kd.yaml`` with
``federated.strategy=fedavg``), 4 clients, at local epochs 1 and 5. ``federated.client_cpus`` is 0.5,
so all 4 clients train at once on the 2 cores, one torch thread each. Each simulation is its own
``python -m federated.simulate`` child process (Flower shuts Ray down when it ends); its rounds.csv
gives, per round, the server's wall time (``round_s``: configuring training to the end of the global
evaluation; ``train_phase_s``: until every training reply is in; ``server_eval_s``) and what the
clients measured of their own local training, wall and CPU seconds (max and sum over clients).

Accounting for 4 clients sharing 2 cores: the clients' compute is what the round would take if Flower
cost nothing. With perfect packing that is ``max(max client CPU s, sum of client CPU s / 2 cores)``
(``compute``); the slowest client's measured wall time (``slowest``) is the critical path as it ran,
time-sliced with the other three. Overhead = round time - compute, in seconds and as a fraction of the
round; the same against ``slowest`` is the lower bound. Round 1 (actor start-up, each actor's first
data load) is reported apart; the steady state is the mean over rounds 2..N.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
CORES = 2
EPOCHS = (1, 5)


def simulate(work: Path, epochs: int, rounds: int, tag: str, extra: tuple[str, ...] = ()) -> tuple[pd.DataFrame, float]:
    """One simulation in its own driver process (``extra``: more ``--set`` overrides): its rounds.csv and its wall
    time (process start to exit)."""
    out = work / tag
    sets = [
        *extra,
        "federated.strategy=fedavg",
        f"federated.rounds={rounds}",
        f"federated.local.epochs={epochs}",
        "federated.client_cpus=0.5",
        f"ray.num_cpus={CORES}",
        f"nodes.cache_dir={work / 'cache'}",
        f"output_dir={out}",
        "tracking.experiment=bench",
    ]
    args = [
        "--config",
        str(REPO / "tune_configs" / "federated_kd.yaml"),
        "--tracking-uri",
        f"sqlite:///{work / 'mlflow.db'}",
    ]
    args += [a for s in sets for a in ("--set", s)]
    wall = run_child([sys.executable, "-m", "federated.simulate", *args], tag)
    (run,) = out.iterdir()
    return pd.read_csv(run / "rounds.csv"), wall


def run_child(command: list[str], tag: str) -> float:
    """Run one simulation as its own process (Flower shuts Ray down when it ends); its wall time, start to exit."""
    started = time.perf_counter()
    done = subprocess.run(
        command,
        cwd=REPO,
        env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"simulation {tag} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return wall


def per_round(rounds: pd.DataFrame) -> pd.DataFrame:
    """Rounds 1..N with the clients' compute and the overhead against it (the accounting in the docstring)."""
    r = rounds[rounds["round"] > 0].copy()
    r["compute"] = pd.concat([r["client_train_cpu_s_max"], r["client_train_cpu_s_sum"] / CORES], axis=1).max(axis=1)
    r["slowest"] = r["client_train_s_max"]
    r["overhead"] = r["round_s"] - r["compute"]
    r["overhead_vs_slowest"] = r["round_s"] - r["slowest"]
    r["train_fanout"] = r["train_phase_s"] - r["compute"]
    r["eval_fanout"] = r["round_s"] - r["train_phase_s"] - r["server_eval_s"]
    return r


def summary(r: pd.DataFrame, wall: float) -> dict[str, float]:
    """Steady-state means over rounds 2..N, round 1 apart, and what the process spent outside rounds."""
    steady = r[r["round"] > 1]
    mean = steady.mean(numeric_only=True)
    return {
        "round_s": mean["round_s"],
        "client train wall s, slowest": mean["slowest"],
        "client train wall s, sum": mean["client_train_s_sum"],
        "client train CPU s, sum": mean["client_train_cpu_s_sum"],
        "compute = max(max CPU, sum CPU / 2)": mean["compute"],
        "overhead s": mean["overhead"],
        "overhead fraction": mean["overhead"] / mean["round_s"],
        "overhead vs slowest wall s": mean["overhead_vs_slowest"],
        "overhead vs slowest fraction": mean["overhead_vs_slowest"] / mean["round_s"],
        "  train fan-out beyond compute s": mean["train_fanout"],
        "  evaluate fan-out + aggregation s": mean["eval_fanout"],
        "  server's global evaluation s": mean["server_eval_s"],
        "round 1 s (actor start-up)": float(r.loc[r["round"] == 1, "round_s"].iloc[0]),
        "process wall s": wall,
        "process outside rounds s": wall - r["round_s"].sum(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs per local-epoch setting")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="raykd-fed-bench-"))
    load = os.getloadavg()
    print(f"work folder {work}; load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
    simulate(work, 1, 1, "warm-up")  # dataset cache and MLflow tables, so no timed run builds them
    results: dict[int, list[dict[str, float]]] = {e: [] for e in EPOCHS}
    for repeat in range(args.repeats):
        for epochs in EPOCHS:
            rounds, wall = simulate(work, epochs, args.rounds, f"e{epochs}-r{repeat}")
            results[epochs].append(summary(per_round(rounds), wall))
            print(f"local epochs {epochs}, repeat {repeat}: {wall:.1f}s, load {os.getloadavg()[0]:.2f}", flush=True)
    print(f"\n## Steady-state round (mean of rounds 2..{args.rounds}; median over {args.repeats} runs)\n")
    rows = list(results[EPOCHS[0]][0])
    print("| per round | " + " | ".join(f"local epochs {e}" for e in EPOCHS) + " |")
    print("|---|" + "---:|" * len(EPOCHS))
    for row in rows:
        values = [statistics.median(run[row] for run in results[e]) for e in EPOCHS]
        cells = [f"{100 * v:.0f}%" if "fraction" in row else f"{v:.3f}" for v in values]
        print(f"| {row} | " + " | ".join(cells) + " |")
    load = os.getloadavg()
    print(f"\nload average at end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
