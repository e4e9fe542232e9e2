"""Sweeps that survive faults: retried and failed trials, non-finite losses (a killed driver: test_faults.py)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

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
@pytest.mark.slow
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
    raw = tiny_raw(
        tmp_path, cache_dir, tune={"max_failures": max_failures, "max_concurrent_trials": 1}, faults={"trial": fault}
    )
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
    error = "InjectedFault: faults.trial: injected fault, attempt 2 of the 2 that fail"
    assert kd["error"].str.endswith(error).all()
    assert "## Failed trials" in printed.out and error in printed.out.split("FAILED: ")[1]
    assert "raykd: 1 trial(s) failed" in printed.err
    assert children["kd4.0"].info.status == "FAILED" and children["kd4.0"].data.tags["raykd.error"].endswith(error)


@pytest.mark.slow
def test_non_finite_loss_fails_its_trial_naming_epoch_and_term_and_is_not_retrained(
    tmp_path: Path, cache_dir: Path, ray_session: object, capsys: pytest.CaptureFixture
) -> None:
    raw = tiny_raw(tmp_path, cache_dir, methods=[{"name": "kd", "temperature": 4, "alpha": 0.5}])
    raw["tune"] = {"max_failures": 1, "max_concurrent_trials": 1}
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
