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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pytest
import yaml

from raykd.cluster import NODE_ID
from tests.conftest import tiny_raw
from tests.test_federated import REPO, _wait_for_port, fed_raw
from tests.test_reliability import _kill_ray_processes

#: Three KD trials of 0.5 CPU: with the 0.5-CPU teacher server beside one of them, they need both nodes.
KD = [{"name": "kd", "temperature": [1, 2, 4], "alpha": 0.5}]
#: Asks the cluster's GCS for its alive nodes until the second has joined; prints {"head": id, "worker": id}.
#: A head whose port answers may still be starting (slowly, on a loaded machine): joining it is retried.
LIST_NODES = """
import json, sys, time, ray
deadline = time.monotonic() + 150
while True:
    try:
        ray.init(address=sys.argv[1], log_to_driver=False, logging_level="WARNING")
        break
    except ConnectionError:
        ray.shutdown()
        if time.monotonic() > deadline:
            raise
        time.sleep(2)
while len(nodes := [n for n in ray.nodes() if n["Alive"]]) < 2 and time.monotonic() < deadline:
    time.sleep(0.5)
roles = {"head" if "node:__internal_head__" in n["Resources"] else "worker": n["NodeID"] for n in nodes}
print(json.dumps(roles))
"""


def _ray_start(temp_dir: Path, *args: str) -> subprocess.Popen[bytes]:
    """One raylet of 1 CPU on loopback, alive as long as this child (``--block``): ending it ends only this node."""
    command = [str(Path(sys.executable).parent / "ray"), "start", "--block", "--node-ip-address=127.0.0.1"]
    command += ["--num-cpus=1", f"--temp-dir={temp_dir}", "--disable-usage-stats", *args]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[tuple[str, dict[str, str]]]:
    """The cluster's address, and its node ids by role; every process it started is ended afterwards."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = Path(tempfile.mkdtemp(prefix="rk2", dir="/tmp"))  # short: Ray's socket paths are length-limited
    address = f"127.0.0.1:{port}"
    nodes = [_ray_start(base / "head", "--head", f"--port={port}", "--include-dashboard=false")]
    try:
        _wait_for_port(port, timeout=300)  # a head starts in seconds on an idle machine, minutes on a loaded one
        nodes.append(_ray_start(base / "worker", f"--address={address}"))
        listing = [sys.executable, "-c", LIST_NODES, address]
        listed = subprocess.run(listing, capture_output=True, text=True, timeout=240)
        assert listed.returncode == 0, listed.stderr[-2000:]
        roles = json.loads(listed.stdout.strip().splitlines()[-1])
        assert set(roles) == {"head", "worker"}, listed.stderr[-2000:]
        yield address, roles
    finally:
        for node in reversed(nodes):  # the worker leaves first, then the head
            node.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.wait(timeout=60)
        _kill_ray_processes(str(base))  # whatever of either node outlived its `ray start` (named by the temp dir)
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


def _sweep(folder: Path, cache: Path, address: str, teacher: dict[str, Any]) -> tuple[Path, str, pd.DataFrame]:
    """A sweep of 3 KD trials; its folder, stdout and trials, with the node each trial ran on (its MLflow child
    run's ``ray.node_id`` tag, which its finished record holds too)."""
    raw = tiny_raw(folder, cache, methods=KD, tune={"cpus_per_trial": 0.5}, teacher=teacher)
    out = _run("raykd.tune", raw, folder, address)
    (sweep,) = (folder / "runs").iterdir()
    client = mlflow.MlflowClient(raw["tracking"]["uri"])
    runs = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    trial_runs = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    nodes = {float(r.data.params["arm/temperature"]): r.data.tags[NODE_ID] for r in trial_runs}
    recorded = [json.loads(p.read_text())[NODE_ID] for p in (sweep / "finished").iterdir()]
    assert len(nodes) == 3 and sorted(nodes.values()) == sorted(recorded)
    trials = pd.read_csv(sweep / "trials.csv").sort_values("temperature")
    assert (trials["status"] == "ok").all() and NODE_ID not in trials  # where a trial ran is no column
    return sweep, out, trials.assign(node=trials["temperature"].map(nodes))


@pytest.mark.slow
def test_a_sweep_and_a_simulation_spread_over_two_nodes(two_nodes: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    """Trials (teacher server and cache modes) and Flower client actors run on both nodes; the server on one node
    serves trials on the other; node models and logits cached by one node's tasks are read on both."""
    address, roles = two_nodes
    both, cache = set(roles.values()), tmp_path / "cache"
    served_dir, served_out, served = _sweep(tmp_path / "server", cache, address, {"mode": "server", "num_cpus": 0.5})
    (line,) = [x for x in (served_dir / "results.md").read_text().splitlines() if x.startswith("Teacher server")]
    server = line.rpartition("on Ray node ")[2]
    assert set(served["node"]) == both and server in both
    assert (served["node"] != server).any()  # KD trials on the other node took their logits from the server
    assert "node models: 0 of 2 cached" in served_out and (served_dir / "students" / "kd" / "seed0.pt").is_file()

    _, cached_out, cached = _sweep(tmp_path / "cache-mode", cache, address, {"mode": "cache"})
    assert set(cached["node"]) == both
    assert "node models: 2 of 2 cached" in cached_out and "teacher-logit cache: 1 forward passes" in cached_out
    assert list(cached["test_acc"]) == list(served["test_acc"])  # the same logits, whichever node and mode

    raw = fed_raw(tmp_path / "fed", cache, strategy="fedavg", rounds=1, client_cpus=0.6)  # 1 actor per node
    _run("federated.simulate", raw, tmp_path / "fed", address)
    (sim,) = (tmp_path / "fed" / "runs").iterdir()
    summary = json.loads((sim / "summary.json").read_text())
    assert summary["client_actor_nodes"] == dict.fromkeys(both, 1) and summary["lost"] is None
