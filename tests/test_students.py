"""The sweep's product: every row's chosen students as files that load and reproduce their numbers, and in MLflow."""

from __future__ import annotations

from pathlib import Path

import mlflow
import mlflow.pytorch
import pandas as pd
import pytest
import torch
import yaml

from raykd.config import validate_config
from raykd.engine import accuracy
from raykd.nodes import prepare
from raykd.students import load_student, read_student
from raykd.tune import main
from tests.conftest import tiny_raw


@pytest.mark.slow
def test_sweep_keeps_the_chosen_students_and_they_reproduce_the_table(
    ray_session: object, tmp_path: Path, cache_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    raw = tiny_raw(tmp_path, cache_dir)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(raw))
    assert main(["--config", str(config)]) == 0
    assert "distilled students (chosen setting per row" in capsys.readouterr().out
    (out,) = (tmp_path / "runs").iterdir()
    trials = pd.read_csv(out / "trials.csv")
    cfg = validate_config(raw)
    data = prepare(cfg, 0).dataset
    assert sorted(p.name for p in (out / "students").iterdir()) == ["kd", "no-kd"]  # the unchosen ones are gone
    for label in ("no-kd", "kd"):
        path = out / "students" / label / "seed0.pt"
        info = read_student(path)["info"]
        row = trials[(trials["label"] == label) & (trials["seed"] == 0)]
        if label == "kd":
            row = row[row["temperature"] == info["setting"]["temperature"]]
        student = load_student(path)
        assert not student.training
        test_acc = accuracy(student, data.test_x, data.test_y)
        assert test_acc == info["metrics"]["test_acc"] == pytest.approx(float(row["test_acc"].iloc[0]), abs=1e-12)
    client = mlflow.MlflowClient(raw["tracking"]["uri"])
    experiment = client.get_experiment_by_name("tests").experiment_id
    logged = mlflow.search_logged_models(experiment_ids=[experiment], output_format="list")
    assert sorted(m.name for m in logged) == ["tiny-kd", "tiny-no-kd"]  # <sweep>-<row>, registered under it too
    assert sorted(m.name for m in client.search_registered_models()) == ["tiny-kd", "tiny-no-kd"]
    kd = next(m for m in logged if m.name == "tiny-kd")
    kd_info = read_student(out / "students" / "kd" / "seed0.pt")["info"]
    metrics = {m.key.removeprefix("tiny-kd."): m.value for m in kd.metrics}
    assert metrics["val_acc"] == kd_info["metrics"]["val_acc"] and metrics["test_acc"] == kd_info["metrics"]["test_acc"]
    assert float(kd.params["temperature"]) == kd_info["setting"]["temperature"] and kd.params["seed"] == "0"
    mlflow.set_tracking_uri(raw["tracking"]["uri"])
    model = mlflow.pytorch.load_model(f"models:/{kd.model_id}")
    expected = load_student(out / "students" / "kd" / "seed0.pt")(data.test_x[:8])
    assert torch.equal(model.eval()(data.test_x[:8]), expected)
    children = client.search_runs([experiment], "tags.`mlflow.parentRunId` != ''")
    assert sorted(r.info.run_name for r in children) == [
        "kd temperature=1-alpha=0.5 seed0",
        "kd temperature=4-alpha=0.5 seed0",
        "no-kd default seed0",
    ]
