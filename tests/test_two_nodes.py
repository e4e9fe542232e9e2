"""More than one node, for real: a 2-node Ray cluster on this machine runs a sweep and a Flower simulation.

Two raylets of 1 CPU each on 127.0.0.1 (Ray records both at the machine's own address; they differ by node id
and ports), each with its own ``--temp-dir``, joined by ``--address``. Both share this machine's filesystem, as
the nodes of a real cluster share ``nodes.cache_dir``, ``output_dir`` and the MLflow store (docs/CLUSTER.md).
The commands join it as a user would: ``python -m raykd.tune --address`` and ``python -m federated.simulate
--address``, as child processes of the test (each its own Ray driver).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pytest
import yaml

from raykd.cluster import NODE_ID
from raykd.sweep.state import finished_trials
from tests.conftest import tiny_raw
from tests.test_federated import REPO, fed_raw
from tests.test_reliability import _kill_ray_processes

#: Three KD trials, started together (Tune places every pending trial at once).
KD = [{"name": "kd", "temperature": [1, 2, 4], "alpha": 0.5}]
#: What ``ray start`` prints once its node is registered with the cluster's GCS.
STARTED = "Ray runtime started."


def _ray_start(folder: Path, *args: str) -> subprocess.Popen[bytes]:
    """One raylet of 1 CPU on loopback, its temp dir and log in ``folder``; it lives as long as this child
    (``--block``), so ending it ends only this node. Returns once the node has joined (or fails with its log)."""
    folder.mkdir()
    log = folder / "ray-start.log"
    command = [str(Path(sys.executable).parent / "ray"), "start", "--block", "--node-ip-address=127.0.0.1"]
    command += ["--num-cpus=1", f"--temp-dir={folder}", "--disable-usage-stats", *args]
    with log.open("wb") as out:
        node = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300  # seconds on an idle machine, minutes on a loaded one
    while STARTED not in log.read_text() and node.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert STARTED in log.read_text(), log.read_text()[-2000:]
    return node


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now: a head of its own, never another test's or user's."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[str]:
    """The address of a head and a worker node of 1 CPU each; every process it started is ended afterwards."""
    port = free_port()
    base = Path(tempfile.mkdtemp(prefix="rk2", dir="/tmp"))  # short: Ray's socket paths are length-limited
    address, nodes = f"127.0.0.1:{port}", list[subprocess.Popen[bytes]]()
    try:
        nodes.append(_ray_start(base / "head", "--head", f"--port={port}", "--include-dashboard=false"))
        nodes.append(_ray_start(base / "worker", f"--address={address}"))
        yield address
    finally:
        for node in reversed(nodes):  # the worker leaves first, then the head
            node.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.wait(timeout=60)
        _kill_ray_processes(str(base))  # what outlived its `ray start`, or a start that failed (named by temp dir)
        shutil.rmtree(base, ignore_errors=True)


def _run(module: str, raw: dict[str, Any], folder: Path, address: str) -> str:
    """``python -m MODULE --config <raw> --address ADDRESS`` joined to the cluster; its stdout (it must exit 0)."""
    folder.mkdir()
    config = folder / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    command = [sys.executable, "-m", module, "--config", str(config), "--address", address]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _sweep(
    folder: Path, cache: Path, address: str, teacher: dict[str, Any], cpus_per_trial: float
) -> tuple[Path, str, pd.DataFrame]:
    """A sweep of 3 KD trials; its folder, stdout and trials, with the node each trial ran on (its MLflow child
    run's ``ray.node_id`` tag, which its finished record holds too)."""
    raw = tiny_raw(folder, cache, methods=KD, tune={"cpus_per_trial": cpus_per_trial}, teacher=teacher)
    out = _run("raykd.tune", raw, folder, address)
    (sweep,) = (folder / "runs").iterdir()
    client = mlflow.MlflowClient(raw["tracking"]["uri"])
    runs = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    trial_runs = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    nodes = {float(r.data.params["arm/temperature"]): r.data.tags[NODE_ID] for r in trial_runs}
    recorded = [metrics[NODE_ID] for _, metrics in finished_trials(sweep)]
    assert len(nodes) == 3 and sorted(nodes.values()) == sorted(recorded)
    trials = pd.read_csv(sweep / "trials.csv").sort_values("temperature")
    assert (trials["status"] == "ok").all() and NODE_ID not in trials  # where a trial ran is no column
    return sweep, out, trials.assign(node=trials["temperature"].map(nodes))


@pytest.mark.slow
def test_a_sweep_and_a_simulation_spread_over_two_nodes(two_nodes: str, tmp_path: Path) -> None:
    """Trials (teacher server and cache modes) and Flower client actors run on both nodes; the server on one node
    serves trials on the other; node models and logits cached by one node's tasks are read on both."""
    address, cache = two_nodes, tmp_path / "cache"
    # 0.5-CPU trials started together beside the 0.5-CPU server: its node holds one of them at most, so the others
    # run on the other node and take their logits from the server across nodes
    teacher = {"mode": "server", "num_cpus": 0.5}
    served_dir, served_out, served = _sweep(tmp_path / "server", cache, address, teacher, cpus_per_trial=0.5)
    text = (served_dir / "results.md").read_text()
    (line,) = [x for x in text.splitlines() if x.startswith("Teacher server (cpu):")]
    assert "teacher mode 'server'" in text
    server = line.rpartition("on Ray node ")[2]
    assert (served["node"] != server).any()
    assert "node models: 0 of 2 cached" in served_out and (served_dir / "students" / "kd" / "seed0.pt").is_file()

    # 1-CPU trials started together: the first two run at once on the two 1-CPU nodes (Ray packs 0.5-CPU trials)
    _, cached_out, cached = _sweep(tmp_path / "cache-mode", cache, address, {"mode": "cache"}, cpus_per_trial=1)
    both = set(cached["node"])
    assert len(both) == 2 and server in both and set(served["node"]) <= both
    assert "node models: 2 of 2 cached" in cached_out and "teacher-logit cache: 1 forward passes" in cached_out
    assert list(cached["test_acc"]) == list(served["test_acc"])  # the same logits, whichever node and mode

    raw = fed_raw(tmp_path / "fed", cache, strategy="fedavg", rounds=1, client_cpus=0.6)  # 1 actor per node
    _run("federated.simulate", raw, tmp_path / "fed", address)
    (sim,) = (tmp_path / "fed" / "runs").iterdir()
    summary = json.loads((sim / "summary.json").read_text())
    assert summary["client_actor_nodes"] == dict.fromkeys(both, 1) and summary["lost"] is None
