"""How long ``python -m raykd.tune --help`` (and a config error) takes: this checkout against a baseline commit.

    python benchmarks/cli_startup.py [--baseline REF] [--repeats N]

Each command runs in a fresh interpreter with the checkout first on PYTHONPATH, alternating between
the two checkouts so drift in machine load hits both alike; the table shows medians and ratios.
The baseline is checked out into a temporary git worktree (default: the commit before the sweep shell
was split, 5942cea).
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

REPO = Path(__file__).resolve().parents[1]
COMMANDS = {
    "--help": ["-m", "raykd.tune", "--help"],
    "bad --set": ["-m", "raykd.tune", "--set", "partition.num_nodes=1"],
}


def seconds(repo: Path, args: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": str(repo)}
    started = time.perf_counter()
    subprocess.run([sys.executable, *args], cwd=repo, env=env, capture_output=True, check=False)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default="5942cea", help="git ref to compare against (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        baseline = Path(folder) / "baseline"
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "add", "-q", "--detach", str(baseline), args.baseline], check=True
        )
        try:
            times: dict[tuple[str, str], list[float]] = {}
            for _ in range(args.repeats):
                for name, command in COMMANDS.items():
                    for label, repo in (("baseline", baseline), ("this", REPO)):
                        times.setdefault((name, label), []).append(seconds(repo, command))
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(baseline)], check=True)
    print(f"load average {os.getloadavg()[0]:.2f}; medians of {args.repeats} alternating runs\n")
    print("| command | baseline s | this checkout s | baseline / this |\n|---|---|---|---|")
    for name in COMMANDS:
        before, after = (statistics.median(times[name, label]) for label in ("baseline", "this"))
        command = " ".join(COMMANDS[name][2:])
        print(f"| `python -m raykd.tune {command}` | {before:.2f} | {after:.2f} | {before / after:.2f} |")


if __name__ == "__main__":
    main()
