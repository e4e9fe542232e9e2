"""Deep mutual learning with K peers as K Ray actors equals the in-process trial for the same seed."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from raykd.config import validate_config
from raykd.experiment import run_trial
from raykd.peers import run_mutual_learning
from raykd.tune import main
from tests.conftest import tiny_raw


@pytest.mark.slow
def test_peer_actors_match_in_process_dml(ray_session, tmp_path: Path, cache_dir: Path) -> None:
    raw = tiny_raw(tmp_path, cache_dir, methods=[{"name": "dml"}])
    raw["transfer"]["teachers"] = [1, 2]  # K = 3 peers
    raw["learners"] = {"cpus_per_worker": 0.5}
    cfg = validate_config(raw)
    torch.set_num_threads(1)  # the actors compute with one thread too
    in_process = run_trial(cfg, "dml", {"temperature": 1.0}, 0)
    history: list[dict] = []
    on_actors = run_mutual_learning(cfg, "dml", {"temperature": 1.0}, 0, report=history.append)
    assert [h["epoch"] for h in history] == [1, 2]
    for key in ("test_acc", "val_acc", "loss", "loss_ce", "loss_kl", "gain"):
        assert on_actors[key] == pytest.approx(in_process[key], rel=1e-5, abs=1e-6), key


@pytest.mark.slow
def test_sweep_runs_dml_peers_as_actors_in_the_trials_placement_group(
    ray_session, tmp_path: Path, cache_dir: Path
) -> None:
    # one trial: what is tested is where its peers run, not the grid
    raw = tiny_raw(tmp_path, cache_dir, methods=[{"name": "dml", "temperature": 1}])
    raw["learners"] = {"peer_actors": True, "cpus_per_worker": 0.5}
    config = tmp_path / "experiment.yaml"
    config.write_text(yaml.safe_dump(raw))
    assert main(["--config", str(config)]) == 0
    trials = pd.read_csv(next((tmp_path / "runs").iterdir()) / "trials.csv")
    assert len(trials) == 1 and (trials["status"] == "ok").all()
