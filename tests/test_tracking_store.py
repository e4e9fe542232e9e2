"""A sqlite store keeps its artifacts beside itself (``mlartifacts/``), whatever folder the command ran in."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from raykd.tracking import ARTIFACTS, parent_run


def test_artifacts_land_beside_the_sqlite_store_not_in_the_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, elsewhere = tmp_path / "store", tmp_path / "elsewhere"
    store.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    uri = f"sqlite:///{store / 'mlflow.db'}"
    table = tmp_path / "trials.csv"
    table.write_text("a,b\n1,2\n")
    with parent_run(uri, "tests", "sweep") as parent:
        parent.log_files(table)
    run = MlflowClient(uri).get_run(parent.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.artifact_uri.startswith((store / ARTIFACTS).as_uri())
    assert list((store / ARTIFACTS).rglob("trials.csv")) and not list(elsewhere.iterdir())


def test_sync_of_an_unfinished_sweep_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from raykd.tracking_sync import main

    assert main([str(tmp_path)]) == 2
    expected = (
        f"raykd: error: sweep {tmp_path}: holds no results.md (not a finished sweep); finish it with --resume first\n"
    )
    assert capsys.readouterr().err == expected
