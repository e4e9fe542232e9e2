"""Searching the distillation knobs: ranges in method rows, random and Optuna searchers, per-setting ASHA, what a
search cost, and ``--resume`` with a searcher; tiny sweeps on real Ray Tune."""

from __future__ import annotations

import math
import os
import signal
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient
from ray import tune
from ray.tune.search import Searcher

from raykd import report
from raykd.config import Cell, study_cells, validate_config
from raykd.errors import ConfigError
from raykd.search_cost import progress
from raykd.sweep.search import SeedGroups, SettingASHA, domain, sampler, stages
from raykd.tune import main
from tests.conftest import tiny_raw
from tests.watched import Watched

RANGED = {"name": "kd", "temperature": {"low": 1, "high": 8, "log": True}, "alpha": {"low": 0.1, "high": 0.9}}


def _raw(tmp_path: Path, cache_dir: Path, row: dict, **tune_keys: object) -> dict:
    """The tiny study with two seeds, 4 transfer epochs, the no-KD row and ``row``, two trials at a time."""
    raw = tiny_raw(tmp_path, cache_dir, seeds=[0, 1])
    raw["transfer"]["train"]["epochs"] = 4
    raw["methods"] = [{"name": "ce", "label": "no-kd"}, row]
    raw["tune"] = {"max_concurrent_trials": 2, "grace_epochs": 1, "reduction_factor": 2, **tune_keys}
    return raw


def _sweep(tmp_path: Path, raw: dict) -> Path:
    """Run the sweep through the command line's main; its output folder."""
    config = tmp_path / "experiment.yaml"
    config.write_text(yaml.safe_dump(raw))
    assert main(["--config", str(config)]) == 0
    (out,) = (tmp_path / "runs").iterdir()
    return out


@pytest.mark.parametrize(
    ("knob", "value", "message"),
    [
        ("temperature", {"low": 0, "high": 8}, "methods[1].temperature.low = 0: Input should be greater than 0"),
        ("alpha", {"low": 0.5, "high": 1.5}, "methods[1].alpha.high = 1.5: Input should be less than or equal to 1"),
        ("alpha", {"low": 0.9, "high": 0.1}, "low 0.9 must be below high 0.1; allowed: low < high"),
        ("alpha", {"low": 0, "high": 1, "log": True}, "low 0 has no logarithm; allowed: low > 0 with log: true"),
        ("temperature", {"low": 1, "high": 8, "step": 2}, "methods[1].temperature.step: unknown key"),
    ],
)
def test_a_range_is_validated_by_its_knobs_rule_in_one_line(
    tmp_path: Path, cache_dir: Path, knob: str, value: dict, message: str
) -> None:
    raw = _raw(tmp_path, cache_dir, {"name": "kd", knob: value}, search="optuna")
    with pytest.raises(ConfigError) as err:
        validate_config(raw)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_range_under_grid_search_and_asha_on_a_local_split_are_refused(tmp_path: Path, cache_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"^methods\[1\].temperature: a range is sampled, never a grid axis"):
        validate_config(_raw(tmp_path, cache_dir, RANGED))
    asha = _raw(tmp_path, cache_dir, {"name": "kd", "temperature": [1, 4]}, scheduler="asha", select_on="local_val_acc")
    with pytest.raises(ConfigError, match="^tune.scheduler: asha ranks trials by their gain on the global validation"):
        validate_config(asha)
    row = validate_config(_raw(tmp_path, cache_dir, RANGED, search="random")).methods[1]
    assert row.searched() and set(row.ranges()) == {"temperature", "alpha"}
    assert row.first() == {"temperature": 1.0, "alpha": 0.1}


def test_knob_domains_follow_the_range() -> None:
    cfg_range = validate_config({"methods": [RANGED], "tune": {"search": "optuna"}}).methods[0].ranges()
    assert isinstance(domain(cfg_range["temperature"], integer=False), tune.search.sample.Float)
    assert domain(cfg_range["temperature"], integer=False).sampler.__class__.__name__ == "_LogUniform"
    row = {"name": "continuation", "t_max": {"low": 1, "high": 3}}
    steps = validate_config({"methods": [row], "tune": {"search": "random"}})
    drawn = {domain(steps.methods[0].ranges()["t_max"], integer=True).sample() for _ in range(60)}
    assert drawn == {1, 2, 3}  # both ends included


def test_each_searched_row_of_each_cell_is_its_own_stage(tmp_path: Path, cache_dir: Path) -> None:
    raw = _raw(tmp_path, cache_dir, RANGED, search="optuna", num_samples=3)
    raw["methods"].insert(1, {"name": "kd", "label": "kd-untuned", "temperature": 4})
    raw["axes"] = {"set": {"local": {"transfer.set": "local"}, "pool": {"transfer.set": "pool"}}}
    cfg = validate_config(raw)
    plan = stages(cfg, study_cells(cfg))
    assert [s.trials for s in plan] == [2 * 2 * 2, 3 * 2, 3 * 2]  # one-setting rows x seeds x cells, then draws
    assert plan[0].name == "tune" and len({s.name for s in plan}) == 3 and plan[0].searcher is None
    assert all(isinstance(s.searcher, SeedGroups) for s in plan[1:])
    grid = validate_config(_raw(tmp_path, cache_dir, {"name": "kd", "temperature": [1, 4]}))
    assert [s.trials for s in stages(grid, study_cells(grid))] == [3 * 2]  # a grid without ASHA: one stage


def test_seed_groups_run_a_setting_at_every_seed_and_score_it_by_their_mean() -> None:
    cfg = validate_config({"seeds": [0, 1, 2], "methods": [RANGED], "tune": {"search": "optuna", "num_samples": 2}})
    groups = SeedGroups(sampler(cfg, cfg.methods[0]), cfg.methods[0], Cell({}, cfg), cfg.seeds, 2, "val_acc")
    first = [groups.suggest(f"t{i}") for i in range(3)]
    assert [c["seed"] for c in first] == [0, 1, 2] and len({str(c["arm"]) for c in first}) == 1
    assert 1 <= first[0]["arm"]["temperature"] <= 8 and first[0]["arm"]["label"] == "kd"
    for i, score in enumerate((0.2, 0.4, 0.9)):
        groups.on_trial_complete(f"t{i}", {"val_acc": score})
    (trial,) = groups.inner._ot_study.trials
    assert trial.value == pytest.approx(0.5)  # the mean over the setting's seeds, told once
    assert [groups.suggest(f"u{i}")["seed"] for i in range(3)] == [0, 1, 2]
    assert groups.suggest("v") == Searcher.FINISHED  # two settings drawn: the search is over


def test_a_setting_drawn_again_is_drawn_anew_not_run_twice() -> None:
    row = {"name": "kd", "temperature": [1, 4], "alpha": 0.5}
    cfg = validate_config({"seeds": [0], "methods": [row], "tune": {"search": "random", "num_samples": 2}})
    groups = SeedGroups(sampler(cfg, cfg.methods[0]), cfg.methods[0], Cell({}, cfg), cfg.seeds, 2, "val_acc")
    drawn = []
    for i in range(2):
        drawn.append(groups.suggest(f"t{i}")["arm"])
        groups.on_trial_complete(f"t{i}", {"val_acc": 0.5})
    assert sorted(a["temperature"] for a in drawn) == [1.0, 4.0] and all(a["alpha"] == 0.5 for a in drawn)


def test_setting_asha_stops_every_trial_of_a_setting_behind_at_a_rung() -> None:
    class Trial:
        def __init__(self, temperature: float, seed: int) -> None:
            self.config = {"arm": {"label": "kd", "temperature": temperature}, "seed": seed}

    asha = SettingASHA(max_t=4, grace=1, reduction_factor=2)
    assert asha.rungs == [1, 2]
    good, bad = Trial(2.0, 0), Trial(8.0, 0)
    assert asha.on_trial_result(None, good, {"training_iteration": 1, "val_gain": 0.10}) == "CONTINUE"
    assert asha.on_trial_result(None, bad, {"training_iteration": 1, "val_gain": -0.05}) == "STOP"
    assert asha.on_trial_result(None, Trial(8.0, 1), {"training_iteration": 1, "val_gain": 0.5}) == "STOP"
    assert asha.on_trial_result(None, Trial(2.0, 1), {"training_iteration": 1, "val_gain": -0.2}) == "CONTINUE"


def test_a_stopped_setting_is_never_chosen_and_its_cost_counts_its_epochs() -> None:
    rows = []
    for seed in (0, 1):
        rows.append({"label": "kd", "temperature": 2.0, "seed": seed, "val_acc": 0.5, "epochs": 4, "status": "ok"})
        stopped = "stopped" if seed == 1 else "ok"  # the best on validation, but stopped at one seed
        rows.append({"label": "kd", "temperature": 8.0, "seed": seed, "val_acc": 0.9, "epochs": 1, "status": stopped})
    trials = pd.DataFrame(rows).assign(order=range(4), gain=0.0, test_acc=0.5, wall_s=1.0)
    best = report.summary(report.per_setting(trials, ["temperature"]), ["temperature"], "val_acc")
    assert best["temperature"].tolist() == [2.0]
    xs, ys = progress(trials.rename(columns={"temperature": "knob:temperature"}), "val_acc", False)
    assert xs == [9, 10] and ys == [0.5, 0.5]  # the stopped setting's 0.9 never counts as the best so far


@pytest.mark.slow
@pytest.mark.parametrize(("search", "scheduler"), [("random", "fifo"), ("optuna", "asha"), ("grid", "asha")])
def test_each_searcher_and_scheduler_runs_a_tiny_sweep(
    tmp_path: Path, cache_dir: Path, ray_session: object, search: str, scheduler: str, capsys: pytest.CaptureFixture
) -> None:
    row = RANGED if search != "grid" else {"name": "kd", "temperature": [1, 4], "alpha": [0.1, 0.9]}
    raw = _raw(tmp_path, cache_dir, row, search=search, scheduler=scheduler, num_samples=4)
    raw["tune"]["max_concurrent_trials"] = 1 if scheduler == "asha" else 2  # one order: the same trials stop
    out = _sweep(tmp_path, raw)
    trials = pd.read_csv(out / "trials.csv")
    kd = trials[trials["label"] == "kd"]
    assert len(kd) == 4 * 2
    assert kd.groupby(["temperature", "alpha"])["seed"].nunique().eq(2).all()  # each setting at both seeds
    assert kd["temperature"].between(1, 8).all() and kd["alpha"].between(0.1, 0.9).all()
    assert set(kd["status"]) <= {"ok", "stopped"}
    if search == "grid":  # one order, seeded training: T=4, alpha=0.9 is behind at the first rung
        assert (kd["status"] == "stopped").any() and kd["epochs"].sum() < len(kd) * 4
        assert "(stopped by ASHA at epoch 1)" in capsys.readouterr().out
    text = (out / "results.md").read_text()
    assert "## Search cost" in text and (out / "plots" / "search_progress.png").is_file()
    client = MlflowClient(raw["tracking"]["uri"])
    runs = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert parent.data.metrics["search.kd.trial_epochs"] == kd["epochs"].sum()
    summary = text.split("## Summary")[1].split("\n\n")[1]
    chosen = next(line for line in summary.splitlines() if line.startswith("| kd |"))
    knobs = dict(part.split("=") for part in chosen.split("|")[2].split(" (")[0].strip().split(", "))
    near = [(kd[k] - float(knobs[k])).abs() <= 1e-4 * kd[k] for k in ("temperature", "alpha")]
    pick = kd[near[0] & near[1]]
    assert len(pick) == 2 and set(pick["status"]) == {"ok"}  # a stopped setting is never chosen


@pytest.mark.slow
@pytest.mark.parametrize(("search", "scheduler"), [("optuna", "fifo"), ("random", "asha")])
def test_resume_continues_an_interrupted_search(
    tmp_path: Path, cache_dir: Path, ray_address: str, search: str, scheduler: str
) -> None:
    """Ctrl-C after the first setting's trials: the resumed sweep keeps them, restores the sampler's state (the
    settings drawn before keep their trials) and draws only the rest; with ASHA too."""
    raw = _raw(tmp_path, cache_dir, RANGED, search=search, scheduler=scheduler, num_samples=3)
    raw["tune"]["max_concurrent_trials"] = 1
    raw["transfer"]["train"]["epochs"] = 6
    config = tmp_path / "experiment.yaml"
    config.write_text(yaml.safe_dump(raw))
    command = [sys.executable, "-m", "raykd.tune", "--config", str(config), "--address", ray_address]
    driver = Watched(command, env=dict(os.environ), start_new_session=True)
    try:
        first = driver.line("[4/", timeout=300)  # no-kd at both seeds, then the first drawn setting at both
        os.killpg(driver.pid, signal.SIGINT)
        driver.finish(timeout=120)
    finally:
        driver.process.kill()
    assert driver.process.returncode == 130
    (out,) = (tmp_path / "runs").iterdir()
    assert main(["--resume", str(out), "--address", ray_address]) == 0
    trials = pd.read_csv(out / "trials.csv")
    kd = trials[trials["label"] == "kd"]
    assert len(kd) == 3 * 2 and kd.groupby(["temperature", "alpha"])["seed"].nunique().eq(2).all()
    assert set(kd["status"]) <= {"ok", "stopped"}
    temperature = float(first.split("temperature=")[1].split()[0])
    assert any(math.isclose(t, temperature, rel_tol=1e-4) for t in kd["temperature"])  # drawn before, kept
    assert "## Search cost" in (out / "results.md").read_text()
