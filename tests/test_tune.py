"""End to end through ``python -m raykd.tune``'s main on real Ray Tune and real MLflow stores."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from raykd.tune import main
from tests.conftest import tiny_raw


def _sweep(tmp_path: Path, raw: dict, *extra: str) -> int:
    config = tmp_path / "experiment.yaml"
    config.write_text(yaml.safe_dump(raw))
    return main(["--config", str(config), *extra])


def _runs_of_latest_sweep(uri: str, experiment: str) -> tuple[object, list]:
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    return parents[0], children


@pytest.mark.slow
def test_sweep_tracks_parent_and_child_runs_and_writes_tables(
    tmp_path: Path, cache_dir: Path, ray_session: object, capsys: pytest.CaptureFixture
) -> None:
    raw = tiny_raw(tmp_path, cache_dir)
    raw["methods"][1]["alpha"] = [0.5, 0.9]  # a 2x2 grid, so a heatmap is drawn
    assert _sweep(tmp_path, raw) == 0
    printed = capsys.readouterr().out
    assert "[5/5" in printed and "## Summary" in printed and "(best of 4 on val_acc)" in printed
    assert "\r" not in printed  # no progress-bar frames in a redirected log
    out = next((tmp_path / "runs").iterdir())
    uri = raw["tracking"]["uri"]
    assert printed.endswith(f"report: {out / 'results.md'}\nMLflow runs: mlflow ui --backend-store-uri {uri}\n")
    assert list((tmp_path / "mlartifacts").rglob("results.md"))  # beside the store, not in the working folder

    parent, children = _runs_of_latest_sweep(uri, "tests")
    assert parent.info.status == "FINISHED" and len(children) == 5
    assert {c.info.status for c in children} == {"FINISHED"}
    labels = sorted(c.data.params["arm/label"] for c in children)
    assert labels == ["kd"] * 4 + ["no-kd"]
    history = MlflowClient(uri).get_metric_history(children[0].info.run_id, "test_acc")
    assert [m.step for m in history] == [1, 2]  # one point per transfer epoch
    artifacts = {a.path for a in MlflowClient(uri).list_artifacts(parent.info.run_id)}
    assert {"results.md", "trials.csv", "config.yaml", "plots"} <= artifacts
    plots = {a.path for a in MlflowClient(uri).list_artifacts(parent.info.run_id, "plots")}
    expected = {"gain_bars.png", "heatmap_kd.png", "paired_differences.png", "search_progress.png"}
    assert plots == {f"plots/{name}" for name in expected}

    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 5 and (trials["status"] == "ok").all()
    kd = trials[trials["label"] == "kd"]
    best = kd.loc[kd["val_acc"].idxmax()]  # one seed: the row chosen must be the best on validation
    assert (
        f"temperature={best['temperature']:g}, alpha={best['alpha']:g} (best of 4" in (out / "results.md").read_text()
    )


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    """A real ``mlflow server`` on loopback with its own sqlite store and artifact folder."""
    with serve_mlflow(tmp_path) as uri:
        yield uri


@contextlib.contextmanager
def serve_mlflow(tmp_path: Path) -> Iterator[str]:
    """A real ``mlflow server`` on a free loopback port, its store ``server.db`` and artifacts in ``tmp_path`` (a
    second one on the same folder serves what the first, killed, had recorded).

    The store's tables are created here first, with MLflow's own migrations (this process has MLflow loaded
    already), and the server runs without its job runner (a second process raykd never uses): a loaded 2-core
    machine took minutes to start the server otherwise."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = f"sqlite:///{tmp_path / 'server.db'}"
    MlflowClient(store).search_experiments()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            store,
            "--artifacts-destination",
            str(tmp_path / "server-artifacts"),
            "--workers",
            "1",
        ],
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: a test can kill the server and its workers at once
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        _wait_until_healthy(uri, server)
        yield uri
    finally:  # the whole group: `mlflow server` is a launcher, the server itself is its child
        with contextlib.suppress(ProcessLookupError):  # a test may have killed the group already
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)


def _wait_until_healthy(uri: str, server: subprocess.Popen[bytes], timeout_s: float = 180) -> None:
    """Return once the server answers ``/health``; a start that fails or outlasts ``timeout_s`` raises."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError(f"mlflow server did not start within {timeout_s:g} s") from None
            time.sleep(0.5)


@pytest.mark.slow
def test_runs_arrive_at_a_real_mlflow_server(
    tmp_path: Path, cache_dir: Path, ray_session: object, mlflow_server: str
) -> None:
    raw = tiny_raw(tmp_path, cache_dir)
    assert _sweep(tmp_path, raw, "--tracking-uri", mlflow_server) == 0
    parent, children = _runs_of_latest_sweep(mlflow_server, "tests")
    assert len(children) == 3 and parent.data.metrics["failed_trials"] == 0
    assert "results.md" in {a.path for a in MlflowClient(mlflow_server).list_artifacts(parent.info.run_id)}
    assert not (tmp_path / "mlflow.db").exists()  # nothing went to the embedded store
