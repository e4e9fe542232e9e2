"""raykd's fedavg against a bare Flower app doing the same federated training, in one run.

    python benchmarks/federated_vs_bare.py [--rounds 8] [--epochs 2] [--repeats 2]

The bare app (``benchmarks/bare_flower_app.py``) is Flower's quickstart-pytorch shape: Flower's FedAvg, a
plain PyTorch loop, on raykd's MNIST-1D partition of 4 clients and raykd's cnn1d. raykd's side is
``python -m federated.simulate --config tune_configs/federated_kd.yaml --set federated.strategy=fedavg``
as ``federated_overhead.py`` runs it. Both use 0.5 CPU per client on 2 CPUs (4 client actors, all training
at once), the config's batch size and lr, the same local epochs and rounds, a global test evaluation on
the server every round, and every client evaluating every round.

Each simulation is its own child process; the two alternate (bare, raykd, then raykd, bare, ...) so a
drifting machine load touches both alike. Round time is measured the same way on both sides: from
configuring training to the end of the server's global evaluation (raykd's ``round_s``; the bare app
stamps the end of each global evaluation). Steady round: mean of rounds 2..N; round 1 (the client actors
start, import torch and load their data) apart; the table gives the median over repeats.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import pandas as pd
from federated_overhead import REPO, run_child, simulate
from federated_scale import load_average

APPS = ("bare Flower", "raykd fedavg")


def bare(work: Path, epochs: int, rounds: int, tag: str, poll_s: float) -> tuple[pd.DataFrame, float]:
    """The bare app in its own process: its rounds.csv and its wall time."""
    out = work / tag
    command = [sys.executable, str(REPO / "benchmarks" / "bare_flower_app.py"), "--out", str(out)]
    command += ["--rounds", str(rounds), "--epochs", str(epochs), "--cache-dir", str(work / "cache")]
    command += ["--pull-interval", str(poll_s)]
    wall = run_child(command, tag)
    return pd.read_csv(out / "rounds.csv"), wall


def summary(rounds: pd.DataFrame, wall: float) -> dict[str, float]:
    """Steady round (mean of rounds 2..N), round 1, process wall time, and the last round's test accuracy."""
    r = rounds[rounds["round"] > 0].set_index("round")
    return {
        "steady round s (mean of rounds 2..N)": r.loc[2:, "round_s"].mean(),
        "round 1 s (actors start)": r.loc[1, "round_s"],
        "process wall s": wall,
        "test acc after the last round %": 100 * r["test_acc"].iloc[-1],
    }


def raykd(work: Path, epochs: int, rounds: int, tag: str, poll_s: float) -> tuple[pd.DataFrame, float]:
    """raykd's fedavg in its own process, as ``federated_overhead.py`` runs it."""
    return simulate(work, epochs, rounds, tag, (f"federated.poll_interval={poll_s}",))


def table(results: dict[str, list[dict[str, float]]], repeats: int) -> str:
    """Median over repeats of each number, per app, and raykd / bare."""
    lines = [f"| median of {repeats} runs | " + " | ".join(APPS) + " | raykd / bare |", "|---|---:|---:|---:|"]
    for row in results[APPS[0]][0]:
        b, k = (statistics.median(run[row] for run in results[app]) for app in APPS)
        lines.append(f"| {row} | {b:.3f} | {k:.3f} | {k / b:.2f}x |")
    lines.append(
        "| steady round s, each run | "
        + " | ".join(
            ", ".join(f"{run['steady round s (mean of rounds 2..N)']:.3f}" for run in results[app]) for app in APPS
        )
        + " | |"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2, help="local epochs per round (the config's: 2)")
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs of each app")
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=0.1,
        help="seconds between looks for messages: the bare app's grid pull_interval (the one Flower exposes), "
        "raykd's federated.poll_interval (its grid and its engine's hand-out); Flower's default 0.1",
    )
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="raykd-fed-bare-"))
    print(f"work folder {work}; load average at start {load_average()}", flush=True)
    simulate(work, 1, 1, "warm-up")  # dataset cache and MLflow tables, so no timed run builds them
    runs = {APPS[0]: bare, APPS[1]: raykd}
    results: dict[str, list[dict[str, float]]] = {app: [] for app in APPS}
    for repeat in range(args.repeats):
        for app in APPS if repeat % 2 == 0 else reversed(APPS):
            rounds, wall = runs[app](work, args.epochs, args.rounds, f"{app.split()[0]}-r{repeat}", args.poll_interval)
            results[app].append(summary(rounds, wall))
            print(f"{app}, repeat {repeat}: {wall:.1f}s, load {load_average()}", flush=True)
    heading = f"{args.rounds} rounds, {args.epochs} local epochs, 4 clients, poll interval {args.poll_interval:g} s"
    print(f"\n{heading}\n\n{table(results, args.repeats)}")
    print(f"\nload average at end {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
