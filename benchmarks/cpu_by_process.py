"""CPU seconds of a command and everything it starts, by kind of process (trial actors, client actors, drivers...).

    python benchmarks/cpu_by_process.py python -m pytest -q

Why: a sweep or a simulation is many short processes (Ray's own, Tune's trial actors, Flower's client actors, child
drivers), and on 2 cores their start-up, not their training, decides a run's wall time. This samples /proc every
quarter second and counts each process's CPU under the name Ray gave it last (``ray::ImplicitFunc`` is a trial
actor). Processes that already ran count only what they used while it ran; a process that lives less than a
sample is missed. Linux only.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")
#: Substrings of a command line -> the kind it is counted under (first match wins).
KINDS = [
    ("ray::ImplicitFunc", "trial actor"),
    ("ray::ClientAppActor", "client actor"),
    ("raylet/raylet", "Ray system"),  # before the next: the raylet's own command line names the worker's script
    ("default_worker.py", "idle or task worker"),  # a Ray worker that has not taken a title yet
    ("ray::IDLE", "idle or task worker"),
    ("federated.simulate", "simulation driver"),
    ("raykd.tune", "sweep driver"),
    ("gcs_server", "Ray system"),
    ("dashboard", "Ray system"),
    ("DashboardAgent", "Ray system"),
    ("log_monitor", "Ray system"),
    ("monitor.py", "Ray system"),
    ("runtime_env", "Ray system"),
    ("RuntimeEnvAgent", "Ray system"),
    ("mlflow", "MLflow server"),
    ("xdist", "pytest"),
    ("pytest", "pytest"),
]
#: Kinds a process keeps once seen, whatever it is titled later (Ray retitles a worker as it changes jobs).
STICKY = {"trial actor", "client actor"}


def kind_of(command: str) -> str:
    """The kind of a process from its command line: a known kind, a ``ray::Name``, or its program's name."""
    for marker, kind in KINDS:
        if marker in command:
            return kind
    if command.startswith("ray::"):
        return command.split()[0].split(".")[0]
    return Path(command.split()[0]).name if command else "?"


def sample(into: dict[tuple[str, str], list]) -> None:
    """Record every live process's CPU seconds so far under its (pid, start time): [kind, CPU not counted, CPU]."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text().rpartition(")")[2].split()
            command = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        cpu = (int(stat[11]) + int(stat[12])) / TICKS
        record = into.setdefault((entry.name, stat[19]), ["?", 0.0, cpu])
        if command and record[0] not in STICKY:
            record[0] = kind_of(command)
        record[2] = cpu


def main(command: list[str]) -> int:
    """Run ``command`` while sampling; print CPU seconds and process counts by kind, then return its exit status."""
    processes: dict[tuple[str, str], list] = {}
    sample(processes)
    for record in processes.values():
        record[1] = record[2]  # already running: only what it uses from now on counts
    started, child = time.monotonic(), subprocess.Popen(command)
    while child.poll() is None:
        sample(processes)
        time.sleep(0.25)
    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for kind, uncounted, cpu in processes.values():
        if cpu > uncounted:
            totals[kind][0] += cpu - uncounted
            totals[kind][1] += 1
    print(f"wall {time.monotonic() - started:.0f} s, CPU {sum(t[0] for t in totals.values()):.0f} s")
    for kind, (cpu, count) in sorted(totals.items(), key=lambda item: -item[1][0]):
        print(f"{cpu:8.1f} s {int(count):5d}  {kind}")
    return child.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]) if sys.argv[1:] else "usage: python benchmarks/cpu_by_process.py COMMAND...")
