"""The paper study (tune_configs/paper_study.yaml): its cells, and a CI-sized run of the same config end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from federated.task import setup_of
from raykd.config import load_config, study_cells
from raykd.engine import accuracy
from raykd.students import load_student
from raykd.tune import main

STUDY = Path(__file__).resolve().parents[1] / "tune_configs" / "paper_study.yaml"


def test_paper_study_has_every_distribution_and_transfer_set() -> None:
    cfg = load_config(STUDY)
    cells = study_cells(cfg)
    assert len(cells) == 10 and len(cfg.seeds) >= 3
    shapes = {
        (c.variants["distribution"], c.variants["transfer_set"]): (
            c.config.partition.scheme,
            c.config.partition.alpha,
            c.config.partition.classes_per_node,
            c.config.transfer.set,
        )
        for c in cells
    }
    assert shapes[("iid", "local")][0] == "iid"
    assert shapes[("dir0.1", "pool")][:2] == ("dirichlet", 0.1) and shapes[("dir0.1", "pool")][3] == "pool"
    assert shapes[("patho2", "local")][0::2] == ("pathological", 2) and shapes[("patho2", "local")][3] == "local"
    assert {m.name for m in cfg.methods} == {"ce", "kd", "dml", "dpkd", "dkd", "dist"} and len(cfg.seeds) == 5
    assert all(c.config.data.pool_fraction > 0 for c in cells)  # the pool is set aside even where it is unused


@pytest.mark.slow
def test_ci_sized_paper_study_runs_end_to_end(
    tmp_path: Path, ray_session: object, capsys: pytest.CaptureFixture
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sets = [
        "seeds=[0,1]",
        "nodes.train.epochs=3",
        "transfer.train.epochs=2",
        "methods.2.temperature=[1,4]",
        "methods.2.alpha=[0.1,0.75]",
        "axes.distribution={dir0.1: {partition.alpha: 0.1}}",
        "federated.rounds=2",
        "federated.local.epochs=1",
        "federated.server.epochs=1",
        "federated.target_acc=0.15",  # within reach of 2 rounds: rounds to target are compared per start
        "tune.max_concurrent_trials=1",  # one trial actor: the suite's other worker has the other core
        "federated.client_cpus=2",  # one client actor per simulation, for the same reason
        f"nodes.cache_dir={tmp_path / 'cache'}",
        f"output_dir={tmp_path / 'runs'}",
        f"tracking.uri={uri}",
    ]
    assert main(["--config", str(STUDY), *[a for s in sets for a in ("--set", s)]]) == 0
    printed = capsys.readouterr().out
    # cells that differ only in their transfer set share node models: 1 partition x 4 nodes x 2 seeds, all new
    assert "node models: 0 of 8 cached" in printed and "[40/40" in printed and "[federated 2/2]" in printed

    out = next((tmp_path / "runs").iterdir())
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 10 * 2 * 2 and (trials["status"] == "ok").all()
    text = (out / "results.md").read_text()
    assert "| transfer_set | method | dir0.1 |" in text
    for transfer_set in ("local", "pool"):
        for label in ("no-kd", "kd-untuned", "kd-tuned", "dml", "dpkd", "dkd", "dist"):
            assert f"| {transfer_set} | {label} | " in text
    for (distribution, transfer_set), cell in trials[trials["label"] == "kd-tuned"].groupby(
        ["distribution", "transfer_set"]
    ):
        means = cell.groupby(["temperature", "alpha"])["val_acc"].mean()  # chosen on mean validation accuracy
        temperature, alpha = means.idxmax()
        assert f"| {distribution} | {transfer_set} | kd-tuned (temperature={temperature:g}, alpha={alpha:g}) |" in text

    # the paired statistics: one row per (cell, untuned row), each over both seeds, in the table, csv and MLflow
    paired = pd.read_csv(out / "paired.csv")
    assert len(paired) == 2 * 6 and (paired["seeds"] == 2).all() and (paired["low"] <= paired["high"]).all()
    assert (
        "## Paired differences: tuned minus untuned, seed by seed" in text
        and "| dir0.1 | pool | kd-tuned | dkd |" in text
    )
    assert "tuning benefit [95% CI]" in text

    rounds = pd.read_csv(out / "federated.csv")
    assert set(rounds["distribution"]) == {"dir0.1"} and (rounds["error"].isna()).all()
    assert set(rounds["start"]) == {"random", "average", "distilled"}
    starts = rounds.set_index(["seed", "start"])
    for seed in (0, 1):  # the node models' ensemble, distilled on the pool, is a better start than a random model
        distilled, from_random = starts.loc[(seed, "distilled")], starts.loc[(seed, "random")]
        assert distilled.start_test_acc > from_random.start_test_acc
        assert distilled.rounds_to_target < from_random.rounds_to_target
    run = out / "federated" / "distribution-dir0.1" / "seed0"  # one simulation's records, its config beside them
    data = setup_of(load_config(run / "config.yaml")).dataset
    for start, final in starts.loc[0, "final_test_acc"].items():  # each start's final global model, as a student
        model = load_student(run / f"global_model-{start}.pt")
        assert accuracy(model, data.test_x, data.test_y) == pytest.approx(final, abs=1e-12)
    assert "## Federated follow-up: consolidation" in text

    client = MlflowClient(uri)
    parent = client.get_run(json.loads((out / "sweep.json").read_text())["parent_run_id"])
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    heatmaps = {f"plots/heatmap_kd-tuned_distribution-dir0.1_transfer_set-{t}.png" for t in ("local", "pool")}
    figures = {"gain_by_cell.png", "federated_rounds.png", "paired_differences.png", "search_progress.png"}
    assert {*(f"plots/{name}" for name in figures), *heatmaps} == plots
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"results.md", "trials.csv", "federated.csv", "paired.csv"} <= artifacts
    assert "paired.dir0.1.pool.kd-tuned-vs-no-kd.mean" in parent.data.metrics
