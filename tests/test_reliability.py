"""Sweeps that survive faults and interruption: retried and failed trials, non-finite losses, a killed driver."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from raykd.students import read_student
from raykd.tune import EXIT_TRIALS_FAILED, main
from tests.conftest import tiny_raw

#: Trial metrics that depend only on config and seed (timings differ between identical runs).
ACCURACIES = ["val_acc", "local_val_acc", "test_acc", "test_acc_before", "gain"]


def _sweep(tmp_path: Path, raw: dict, *extra: str) -> int:
    config = tmp_path / "experiment.yaml"
    config.write_text(yaml.safe_dump(raw))
    return main(["--config", str(config), *extra])


def _children(uri: str) -> list:
    """Every child run of the store's one sweep (its parent run), whatever their status."""
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    return [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]


def _only_output(tmp_path: Path) -> Path:
    (out,) = (tmp_path / "runs").iterdir()
    assert not list(out.rglob(".*.tmp")), "a temporary file of an atomic write was left behind"
    return out


@pytest.mark.parametrize(
    ("times", "max_failures", "rc", "kd_status"),
    [(1, 1, 0, "ok"), (2, 1, EXIT_TRIALS_FAILED, "failed")],
    ids=["retried-then-recovers", "retries-exhausted-recorded-as-failed"],
)
def test_injected_trial_fault_is_retried_then_recorded(
    tmp_path: Path,
    cache_dir: Path,
    ray_session: object,
    capsys: pytest.CaptureFixture,
    times: int,
    max_failures: int,
    rc: int,
    kd_status: str,
) -> None:
    fault = {"label": "kd", "seed": 0, "times": times}
    raw = tiny_raw(tmp_path, cache_dir, tune={"max_failures": max_failures, "fail": fault})
    raw["methods"][1]["temperature"] = 4
    assert _sweep(tmp_path, raw) == rc
    printed = capsys.readouterr()
    assert printed.out.count("retrying kd temperature=4 alpha=0.5 seed=0 after failure") == max_failures
    trials = pd.read_csv(_only_output(tmp_path) / "trials.csv")
    assert len(trials) == 2 and (trials[trials["label"] == "no-kd"]["status"] == "ok").all()
    kd = trials[trials["label"] == "kd"]
    assert (kd["status"] == kd_status).all()
    runs = _children(raw["tracking"]["uri"])
    children = {c.data.params["arm/label"] + c.data.params.get("arm/temperature", ""): c for c in runs}
    assert len(children) == 2 and children["no-kd"].info.status == "FINISHED"
    if kd_status == "ok":
        assert kd["test_acc"].notna().all()
        assert children["kd4.0"].info.status == "FINISHED"
        return
    error = "InjectedFault: tune.fail: injected fault, attempt 2 of the 2 that fail"
    assert kd["error"].str.endswith(error).all()
    assert "## Failed trials" in printed.out and error in printed.out.split("FAILED: ")[1]
    assert "raykd: 1 trial(s) failed" in printed.err
    assert children["kd4.0"].info.status == "FAILED" and children["kd4.0"].data.tags["raykd.error"].endswith(error)


def test_non_finite_loss_fails_its_trial_naming_epoch_and_term_and_is_not_retrained(
    tmp_path: Path, cache_dir: Path, ray_session: object, capsys: pytest.CaptureFixture
) -> None:
    raw = tiny_raw(tmp_path, cache_dir, methods=[{"name": "kd", "temperature": 4, "alpha": 0.5}])
    raw["tune"] = {"max_failures": 1}
    assert _sweep(tmp_path, raw, "--set", "transfer.train.lr=1e12") == EXIT_TRIALS_FAILED
    printed = capsys.readouterr().out
    out = _only_output(tmp_path)
    (row,) = pd.read_csv(out / "trials.csv").to_dict("records")
    assert row["status"] == "failed" and pd.isna(row["test_acc"])
    assert "NonFiniteLoss: epoch 1: loss term '" in row["error"]
    assert "(try a lower lr)" in row["error"] and row["error"] in (out / "results.md").read_text()
    (retry,) = [line for line in printed.splitlines() if line.startswith("retrying kd temperature=4 alpha=0.5 seed=0")]
    assert "after failure 1: raykd.engine.NonFiniteLoss: epoch 1: loss term" in retry
    (recorded,) = (out / "faults").glob("*.nonfinite")  # the retry re-raised it without training again
    assert recorded.read_text() in row["error"]
    (child,) = _children(raw["tracking"]["uri"])
    assert child.info.status == "FAILED" and child.data.tags["raykd.error"] == row["error"]


def _kill_ray_processes(marker: str) -> list[int]:
    """SIGKILL the live processes whose command line names ``marker`` (a driver's own Ray temp folder: its
    raylet, GCS and workers outlive a killed driver); returns those still alive after a few seconds."""

    def alive() -> list[int]:
        found = []
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                continue
        return found

    for pid in alive():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    return alive()


def _deterministic(out: Path) -> pd.DataFrame:
    """The trials table without what measures the machine (timings), in a fixed row order."""
    trials = pd.read_csv(out / "trials.csv")[["label", "temperature", "alpha", "seed", "status", *ACCURACIES]]
    return trials.sort_values(["label", "temperature", "seed"]).reset_index(drop=True)


@pytest.mark.slow
def test_sigkilled_sweep_resumes_to_the_uninterrupted_table(
    tmp_path: Path, cache_dir: Path, ray_session: object
) -> None:
    grid = {
        "methods": [{"name": "kd", "temperature": [1, 2, 4, 8], "alpha": 0.5}],
        "tune": {"max_concurrent_trials": 1},
    }
    reference = tiny_raw(tmp_path / "reference", cache_dir, **grid)
    reference["transfer"]["train"]["epochs"] = 40  # trials of a few seconds: the kill lands inside the second
    (tmp_path / "reference").mkdir()
    assert _sweep(tmp_path / "reference", reference) == 0  # in this process; also trains the node models

    raw = tiny_raw(tmp_path, cache_dir, ray={"num_cpus": 2}, **grid)
    raw["transfer"] = reference["transfer"]
    config = tmp_path / "experiment.yaml"
    config.write_text(yaml.safe_dump(raw))
    ray_tmp = Path(tempfile.mkdtemp(prefix="rk", dir="/tmp"))  # short: Ray's socket paths live under it
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_TMPDIR": str(ray_tmp)}
    command = [sys.executable, "-m", "raykd.tune"]
    try:
        driver = subprocess.Popen(
            [*command, "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
            start_new_session=True,
        )
        first = ""
        for line in driver.stdout:  # type: ignore[union-attr]
            if line.startswith("[1/4"):
                first = line.split("] ", 1)[1].split(":")[0]
                break
        time.sleep(2.0)  # past Tune's state snapshot (TUNE_GLOBAL_CHECKPOINT_S=1), inside the second trial
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
        assert not _kill_ray_processes(str(ray_tmp))
        assert first, "the sweep printed no finished trial before it was killed"
        out = _only_output(tmp_path)
        assert not (out / "results.md").exists()
        assert "RUNNING" in {c.info.status for c in _children(raw["tracking"]["uri"])}  # a zombie, for now

        resumed = subprocess.run([*command, "--resume", str(out)], capture_output=True, text=True, env=env, timeout=240)
    finally:  # the resumed driver ends its own Ray; this is for a test that failed half-way
        leftover = _kill_ray_processes(str(ray_tmp))
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert not leftover
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert resumed.stdout.startswith("node models: 2 of 2 cached") and "resuming 4 settings" in resumed.stdout
    assert first not in resumed.stdout and "[4/4" in resumed.stdout  # finished trials are not run again
    pd.testing.assert_frame_equal(_deterministic(out), _deterministic(_only_output(tmp_path / "reference")))
    # the chosen student is there, whether its trial finished before the kill or after the resume
    chosen = read_student(out / "students" / "kd" / "seed0.pt")["info"]
    uninterrupted = read_student(_only_output(tmp_path / "reference") / "students" / "kd" / "seed0.pt")["info"]
    assert chosen["setting"] == uninterrupted["setting"] and chosen["metrics"] == uninterrupted["metrics"]

    children = _children(raw["tracking"]["uri"])  # the same parent run: _children asserts there is one
    statuses = [c.info.status for c in children]
    assert statuses.count("FINISHED") == 4 and "RUNNING" not in statuses
    assert {c.info.status for c in children if "raykd.note" in c.data.tags} == {"KILLED"}
    assert len(children) == 4 + statuses.count("KILLED") >= 5
