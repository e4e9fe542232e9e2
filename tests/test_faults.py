"""Real faults in a sweep: corrupted caches, Ctrl-C, a killed driver, a dead tracking server, two sweeps at once."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from mlflow import MlflowClient

from raykd.config import validate_config
from raykd.data import load_dataset
from raykd.errors import ConfigError
from raykd.experiment import run_trial
from raykd.nodes import load_node, node_path, prepare, read_node
from raykd.report import TIMING_METRICS
from raykd.students import read_student
from raykd.tune import EXIT_UNTRACKED, main
from tests.conftest import tiny_raw
from tests.test_reliability import _children, _deterministic, _kill_ray_processes, _only_output
from tests.test_tune import mlflow_server, serve_mlflow  # noqa: F401 - the fixture
from tests.watched import Watched

KD = {"name": "kd", "temperature": [1, 2, 4, 8], "alpha": 0.5}
REPLAYED = "(recorded before the interruption; not run again)"
RESUME_HINT = "raykd: interrupted; continue with: python -m raykd.tune --resume "


def _flip_middle(path: Path, count: int = 16) -> None:
    """Flip ``count`` bytes in the middle of a file: inside its tensors or arrays, its length unchanged."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    for i in range(middle, middle + count):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _metrics(result: dict) -> dict:
    return {k: v for k, v in result.items() if k not in TIMING_METRICS}


def test_flipped_bytes_in_cached_node_model_and_dataset_are_rebuilt_to_the_same_results(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from raykd import nodes

    raw = tiny_raw(tmp_path, tmp_path / "cache")
    raw["nodes"]["train"]["epochs"], raw["transfer"]["train"]["epochs"] = 1, 1
    cfg = validate_config(raw)
    clean = run_trial(cfg, "kd", {"temperature": 4.0, "alpha": 0.5}, 0)  # builds the dataset and both node files
    checkpoint, dataset = node_path(cfg, 1, 0), tmp_path / "cache" / "datasets" / "mnist1d.npz"
    clean_state = read_node(checkpoint)["state_dict"]  # type: ignore[index]
    _flip_middle(checkpoint)
    _flip_middle(dataset)
    assert torch.load(checkpoint, weights_only=True)["meta"]["node"] == 1  # torch alone reads it as valid
    assert read_node(checkpoint) is None

    nodes._loaded.cache_clear()  # a fresh process: the dataset is read from its cache file again
    with caplog.at_level(logging.WARNING, logger="raykd.cache"):
        rerun = run_trial(cfg, "kd", {"temperature": 4.0, "alpha": 0.5}, 0)
    warnings = [r.getMessage() for r in caplog.records if r.name == "raykd.cache"]
    assert len(warnings) == 2 and all("failed its content check" in w and "rebuilding" in w for w in warnings)
    assert {Path(w.split()[2]).name for w in warnings} == {checkpoint.name, dataset.name}
    assert _metrics(rerun) == _metrics(clean)
    rebuilt = read_node(checkpoint)["state_dict"]  # type: ignore[index]
    assert all(torch.equal(rebuilt[k], clean_state[k]) for k in clean_state)
    load_node(cfg, prepare(cfg, 0), 1, 0)  # the rebuilt entry passes its check: read, not trained again
    assert len([r for r in caplog.records if r.name == "raykd.cache"]) == 2


def test_a_users_npz_with_flipped_bytes_is_one_line_naming_the_field(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "mine.npz"
    x, y = rng.normal(size=(60, 2, 5)).astype(np.float32), np.arange(60) % 3
    np.savez(path, x=x, y=y, x_test=x[:20], y_test=y[:20])
    _flip_middle(path, 4)
    from raykd.config import DataConfig

    with pytest.raises(ConfigError, match=r"^data.root: .*mine.npz is not a readable .npz file \(BadZipFile"):
        load_dataset(DataConfig(dataset="npz", root=path), tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("damaged", ["tuner.pkl", "experiment_state-2026-01-01_00-00-00.json"])
def test_a_corrupted_tune_state_file_makes_resume_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, damaged: str
) -> None:
    out = tmp_path / "runs" / "tiny-20260101-000000"
    (out / "tune").mkdir(parents=True)
    (out / "config.yaml").write_text(yaml.safe_dump(tiny_raw(tmp_path, tmp_path / "cache")))
    (out / "sweep.json").write_text(json.dumps({"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "parent_run_id": "x"}))
    (out / "tune" / "tuner.pkl").write_bytes(b"\x80\x05" + os.urandom(64))
    (out / "tune" / "experiment_state-2026-01-01_00-00-00.json").write_text('{"trial_data": []}')
    if damaged.endswith(".json"):
        (out / "tune" / "tuner.pkl").write_bytes(pickle.dumps({"ok": 1}))
        (out / "tune" / damaged).write_text('{"trial_data": [')
    assert main(["--resume", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"raykd: error: --resume {out}: Ray Tune's state file {damaged} is corrupted (")
    assert err.rstrip().endswith(f"run it anew with --config {out / 'config.yaml'}")


def _write(tmp_path: Path, raw: dict) -> Path:
    config = tmp_path / "experiment.yaml"
    config.write_text(yaml.safe_dump(raw))
    return config


def _until_trial(driver: Watched, n: int) -> str:
    """Wait (bounded) for the driver's line of its ``n``-th finished trial; returns that trial's description."""
    return driver.line(f"[{n}/", timeout=300).split("] ", 1)[1].split(":")[0]


def test_a_trial_ctrl_c_stopped_is_not_an_ended_one(tmp_path: Path) -> None:
    """Ctrl-C makes Tune mark its running trials TERMINATED: one that never reported has no config or metrics,
    one that reported epochs has partial metrics. Neither ended (no ``finished/`` record, no error), so the sweep
    counts as interrupted (exit 130, one line) instead of tabling them or failing on the missing config."""
    from raykd.report import trial_rows
    from raykd.sweep.state import ended, record_finished

    def trial(seed: int) -> dict[str, Any]:
        return {"arm": {"label": "kd", "method": "kd", "temperature": 4.0}, "seed": seed}

    metrics = {"val_acc": 0.5, "test_acc": 0.4, "config": {}}
    record_finished(tmp_path, trial(0), metrics)
    failed = (trial(3), {}, RuntimeError("boom"))
    outcomes = [(trial(0), metrics, None), (None, None, None), (trial(2), {"val_acc": 0.1}, None), failed]
    done = ended(outcomes, tmp_path)
    assert done == [(trial(0), metrics, None), failed]
    rows = trial_rows(done, {"": 10})
    assert list(rows["seed"]) == [0, 3] and list(rows["status"]) == ["ok", "failed"]


def _resumable(tmp_path: Path, cache_dir: Path) -> dict:
    """Three trials run one at a time, each long enough (10 epochs) for a kill to land inside the next: one
    finishes, one is killed, one has not started."""
    kd = KD | {"temperature": [1, 4, 8]}
    raw = tiny_raw(tmp_path, cache_dir, methods=[kd], tune={"max_concurrent_trials": 1})
    raw["transfer"]["train"]["epochs"] = 10
    return raw


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path, ray_session: object) -> Path:
    """The sweep every interrupted one must resume to, run once in this process; its output folder."""
    tmp_path = tmp_path_factory.mktemp("uninterrupted")
    assert main(["--config", str(_write(tmp_path, _resumable(tmp_path, cache_dir)))]) == 0
    return _only_output(tmp_path)


def _when_a_trial_is_running(uri: str, timeout: float = 120) -> None:
    """Return once the store holds a RUNNING child run: a trial is inside its training."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):  # the store may be mid-write or not yet created
            if "RUNNING" in {c.info.status for c in _children(uri)}:
                return
        time.sleep(0.1)
    raise AssertionError(f"no trial was running after {timeout}s")


@pytest.mark.slow
@pytest.mark.xdist_group("uninterrupted")  # one worker runs both, so the module's reference sweep runs once
@pytest.mark.parametrize("stop", ["sigint", "sigkill-with-lagging-tune-state"])
def test_interrupted_sweep_resumes_to_the_uninterrupted_table(
    tmp_path: Path, cache_dir: Path, uninterrupted: Path, ray_address: str, stop: str
) -> None:
    """Ctrl-C while the last trial trains (none pending): exit 130, no traceback, one line saying how to resume;
    the stopped trial is not tabled as finished. A SIGKILL inside a trial while Tune's own
    state lags (it is saved only every TUNE_GLOBAL_CHECKPOINT_S): the finished trial's recorded result is
    replayed, the killed one is rerun and its zombie MLflow run closed. Either way the resumed sweep's table and
    chosen student equal the uninterrupted sweep's.

    The interrupted driver starts a Ray of its own, as on a laptop; the sweep resumes on another Ray (the
    session's, joined by ``--address``), as after a cluster was restarted."""
    raw = _resumable(tmp_path, cache_dir) | {"ray": {"num_cpus": 2}}
    config = _write(tmp_path, raw)
    ray_tmp = Path(tempfile.mkdtemp(prefix="rk", dir="/tmp"))  # short: Ray's socket paths live under it
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_TMPDIR": str(ray_tmp)}
    if stop != "sigint":
        env["TUNE_GLOBAL_CHECKPOINT_S"] = "100000"  # Tune's state never catches up with the finished trial
    command = [sys.executable, "-m", "raykd.tune"]
    driver = Watched([*command, "--config", str(config)], env=env, start_new_session=True)
    try:
        first = _until_trial(driver, 1)
        # Ctrl-C while the last trial runs and none is pending: Tune's counts alone would call the sweep finished
        second = _until_trial(driver, 2) if stop == "sigint" else ""
        _when_a_trial_is_running(raw["tracking"]["uri"])
        os.killpg(driver.pid, signal.SIGINT if stop == "sigint" else signal.SIGKILL)  # as a terminal's Ctrl-C
        _, err = driver.finish(timeout=120)
        leftover = _kill_ray_processes(str(ray_tmp))  # the Ray the driver started ends with it
        out = _only_output(tmp_path)
        assert not (out / "results.md").exists()
        if stop == "sigint":
            assert not leftover and driver.process.returncode == 130
            assert "Traceback" not in err and err.strip().splitlines()[-1] == f"{RESUME_HINT}{out}"
            assert "Tuner.restore" not in err and sum(line.startswith("raykd:") for line in err.splitlines()) == 1
        resume = [*command, "--resume", str(out), "--address", ray_address]
        resumed = subprocess.run(resume, capture_output=True, text=True, env=env, timeout=300)
    finally:
        driver.kill()
        _kill_ray_processes(str(ray_tmp))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    cluster, nodes = resumed.stdout.splitlines()[:2]  # the cluster it joined, then its nodes: none trained again
    assert cluster.startswith("ray: joined ") and nodes.startswith("node models: 2 of 2 cached")
    assert "resuming 3 settings" in resumed.stdout
    lines = {line.split("] ", 1)[1].split(":")[0]: line for line in resumed.stdout.splitlines() if line[:1] == "["}
    assert "[3/3" in resumed.stdout
    replayed = [trial for trial, line in lines.items() if line.endswith(REPLAYED)]
    if stop == "sigint":  # Tune saved its state on the way out: the finished trials are not even replayed
        assert first not in lines and second not in lines and not replayed
    else:
        assert replayed == [first]
    pd.testing.assert_frame_equal(_deterministic(out), _deterministic(uninterrupted))
    chosen = read_student(out / "students" / "kd" / "seed0.pt")["info"]
    reference = read_student(uninterrupted / "students" / "kd" / "seed0.pt")["info"]
    assert chosen["setting"] == reference["setting"] and chosen["metrics"] == reference["metrics"]
    statuses = [c.info.status for c in _children(raw["tracking"]["uri"])]  # one parent run: _children asserts it
    assert statuses.count("FINISHED") == 3 and "RUNNING" not in statuses
    if stop != "sigint":  # the trial killed inside its training left a RUNNING run; the resume closed it
        assert statuses.count("KILLED") >= 1 and len(statuses) == 3 + statuses.count("KILLED")


def _kill_server_when_a_trial_finished(runs: Path, marker: str) -> threading.Thread:
    """SIGKILL the process group led by the process naming ``marker`` (the MLflow server and its workers) as soon
    as the sweep records its first finished trial."""

    def watch() -> None:
        deadline = time.monotonic() + 600
        while not list(runs.glob("*/finished/*.json")) and time.monotonic() < deadline:
            time.sleep(0.1)
        for entry in Path("/proc").iterdir():
            with contextlib.suppress(OSError):
                pid = int(entry.name) if entry.name.isdigit() else 0
                named = pid and marker in (entry / "cmdline").read_bytes().decode(errors="replace")
                if named and os.getpgid(pid) == pid:  # a group leader: never the test's own group
                    os.killpg(pid, signal.SIGKILL)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.mark.slow
def test_tracking_server_killed_mid_sweep_leaves_complete_local_results_and_one_line(
    tmp_path: Path,
    cache_dir: Path,
    ray_session: object,
    mlflow_server: str,  # noqa: F811 - the fixture
    capsys: pytest.CaptureFixture,
) -> None:
    raw = tiny_raw(tmp_path, cache_dir, methods=[KD], tune={"max_concurrent_trials": 1})
    watcher = _kill_server_when_a_trial_finished(tmp_path / "runs", str(tmp_path / "server.db"))
    started = time.monotonic()
    assert main(["--config", str(_write(tmp_path, raw)), "--tracking-uri", mlflow_server]) == EXIT_UNTRACKED
    watcher.join(timeout=5)
    assert time.monotonic() - started < 240  # bounded retries, not minutes per write
    err = capsys.readouterr().err
    out = _only_output(tmp_path)
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 4 and (trials["status"] == "ok").all()
    assert (out / "results.md").is_file() and len(list((out / "students").rglob("seed0.pt"))) == 1
    (line,) = [line for line in err.splitlines() if line.startswith("raykd: tracking.uri:")]
    assert f"MLflow at {mlflow_server} failed (" in line and "not recorded there: " in line and "results.md" in line
    assert f"the local results in {out} are complete" in line and "Traceback" not in err
    assert line.endswith(f"python -m raykd.tracking_sync {out}")
    with serve_mlflow(tmp_path) as back:  # the server again, on the store and artifacts the killed one left
        filled = int(_sync(out, back).split(": ")[-1].split(" trial run(s)")[0])
        assert filled >= 3  # the server died once the first trial finished: the 3 others had no finished run
        client = MlflowClient(back)
        (parent,) = [r for r in client.search_runs(_experiments(client)) if "mlflow.parentRunId" not in r.data.tags]
        children = client.search_runs(_experiments(client), f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
        assert parent.info.status == "FINISHED" and [c.info.status for c in children] == ["FINISHED"] * 4
        by_temperature = {float(c.data.params["arm/temperature"]): c.data.metrics["test_acc"] for c in children}
        assert by_temperature == dict(zip(trials["temperature"], trials["test_acc"], strict=True))
        names = {a.path for a in client.list_artifacts(parent.info.run_id)}
        assert {"results.md", "trials.csv", "plots", "students"} <= names
        assert "0 trial run(s) filled in, 0 sweep item(s) logged" in _sync(out, back)  # again: nothing to write
        assert len(client.search_runs(_experiments(client))) == 5


def _sync(out: Path, uri: str) -> str:
    """``python -m raykd.tracking_sync OUT --tracking-uri URI`` as a user runs it (a fresh process); its stdout."""
    command = [sys.executable, "-m", "raykd.tracking_sync", str(out), "--tracking-uri", uri]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _experiments(client: MlflowClient) -> list[str]:
    return [e.experiment_id for e in client.search_experiments()]


@pytest.mark.slow
def test_two_sweeps_at_once_on_a_cold_cache_and_store_both_succeed_alike(tmp_path: Path, ray_address: str) -> None:
    raw = tiny_raw(tmp_path, tmp_path / "cold-cache", methods=[{"name": "kd", "temperature": 4, "alpha": 0.5}])
    raw["teacher"] = {"mode": "cache"}  # node models, the dataset and the logit cache: all built cold
    raw["nodes"]["train"]["epochs"] = raw["transfer"]["train"]["epochs"] = 1  # the race is the test, not training
    config = _write(tmp_path, raw)
    command = [sys.executable, "-m", "raykd.tune", "--config", str(config), "--address", ray_address]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    sweeps = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)
    ]
    done = [sweep.communicate(timeout=400) for sweep in sweeps]
    for sweep, (_, err) in zip(sweeps, done, strict=True):
        assert sweep.returncode == 0, err[-2000:]
    outs = sorted((tmp_path / "runs").iterdir())
    assert len(outs) == 2  # one folder each, even when both start within the same second
    pd.testing.assert_frame_equal(_deterministic(outs[0]), _deterministic(outs[1]))
    assert sum("teacher-logit cache: 1 forward passes" in out for out, _ in done) == 1  # built once, then reused
    assert len(list((tmp_path / "cold-cache" / "nodes").glob("*.pt"))) == 2


@pytest.mark.slow
def test_ctrl_c_stops_a_simulation_in_one_line(tmp_path: Path, cache_dir: Path) -> None:
    from tests.test_federated import fed_raw

    config = _write(tmp_path, fed_raw(tmp_path, cache_dir, rounds=12))
    ray_tmp = Path(tempfile.mkdtemp(prefix="rk", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_TMPDIR": str(ray_tmp)}
    simulation = Watched(
        [sys.executable, "-m", "federated.simulate", "--config", str(config)], env=env, start_new_session=True
    )
    try:
        simulation.line("round 1:", timeout=300)  # 11 rounds still to run
        os.killpg(simulation.pid, signal.SIGINT)
        _, err = simulation.finish(timeout=60)
    finally:
        simulation.kill()
        leftover = _kill_ray_processes(str(ray_tmp))
    assert simulation.process.returncode == 130 and not leftover
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "raykd: interrupted"
    assert not list((tmp_path / "runs").glob("*/summary.json"))  # no records of a simulation that did not finish
