"""One launcher for a Flower simulation: ``python -m federated.simulate`` as its own Ray driver process.

A simulation cannot run inside another Ray driver (a notebook, a sweep, a Tune trial): Flower's ``ray.shutdown()``
at its end would take that driver's Ray with it, and Flower's actor pool needs CPUs the caller did not reserve.
So every caller (``raykd.simulate``, a sweep's simulation trials, the follow-up after a sweep) starts it here as a
child process joined to the caller's cluster, and gets a ``Simulation`` back.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from raykd.cli import EXIT_ROUNDS_LOST
from raykd.errors import ConfigError
from raykd.files import last_line

if TYPE_CHECKING:
    import pandas as pd

    from raykd.config import ExperimentConfig

#: The exit status ``federated.simulate`` gives bad input (nothing ran).
EXIT_BAD_INPUT = 2
#: Seconds between looks at a running child's output.
POLL_S = 0.2


@dataclass(frozen=True)
class Simulation:
    """A finished Flower simulation: its records' folder, per-round table and summary (``summary["lost"]`` says
    what did not run as configured, or is None)."""

    out: Path
    rounds: pd.DataFrame
    summary: dict[str, Any]

    @property
    def lost(self) -> str | None:
        return self.summary.get("lost")

    @property
    def final(self) -> dict[str, Any]:
        """The final numbers of its one run (the first, when it compared strategies or start points)."""
        return next(iter(self.summary["starts"].values()))


def launch_simulation(
    cfg: ExperimentConfig, folder: Path, address: str | None = None, echo: bool = False, cwd: Path | None = None
) -> Simulation:
    """Run ``cfg``'s simulation as a child driver; its config, output and records go in ``folder``.

    ``address``: the Ray cluster to join (else the child starts its own Ray); ``echo``: print its lines here as they
    come (a notebook shows the rounds), else they are kept in ``folder/simulation.log``; ``cwd``: where relative
    paths of the config mean what the user meant. Bad input raises ``ConfigError``, a simulation that ended without
    records ``RuntimeError``, both with the child's last line; one that lost client updates returns (``lost``).
    """
    import pandas as pd  # the tables' library, loaded with the first simulation

    folder = folder.resolve()
    config = folder / "config.yaml"
    folder.mkdir(parents=True, exist_ok=True)
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    command = [sys.executable, "-m", "federated.simulate", "--config", str(config), "--out", str(folder)]
    command += ["--set", f"output_dir={folder}"]  # Flower's log and private models wait there for the records
    env = dict(os.environ)
    if address:
        command += ["--address", address]
        env["RAY_ADDRESS"] = address
    code = _run(command, env, cwd, folder, echo)
    if code not in (0, EXIT_ROUNDS_LOST):
        errors = (folder / "stderr.txt").read_text().strip() or "no output"
        line = last_line(errors).removeprefix("raykd: error: ")
        raise ConfigError(line) if code == EXIT_BAD_INPUT else RuntimeError(f"simulation exited with {code}: {line}")
    return Simulation(folder, pd.read_csv(folder / "rounds.csv"), json.loads((folder / "summary.json").read_text()))


def _run(command: list[str], env: dict[str, str], cwd: Path | None, folder: Path, echo: bool) -> int:
    """The child's exit status; its stdout in ``simulation.log`` (printed here too when ``echo``), its stderr in
    ``stderr.txt``: files, so neither pipe can fill up and stop the child while the other is read."""
    log, errors = folder / "simulation.log", folder / "stderr.txt"
    with log.open("w") as out, errors.open("w") as err:
        child = subprocess.Popen(command, stdout=out, stderr=err, text=True, cwd=cwd, env=env)
    if not echo:
        return child.wait()
    with log.open() as lines:
        while True:
            code = child.poll()
            for line in lines:  # what the child has written so far
                print(line, end="", flush=True)
            if code is not None:
                print(lines.read(), end="", flush=True)
                return code
            time.sleep(POLL_S)
