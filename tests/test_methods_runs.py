"""The literature's methods in real runs: central trials in every teacher mode, federated clients, and the
comparison config end to end through ``python -m raykd.tune`` (tiny data, real Ray Tune and MLflow)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from federated.task import client_method, client_update, global_model, server_temperature, setup_of, to_arrays
from raykd.config import SERVER_TEMPERATURE, load_config, load_raw, validate_config
from raykd.experiment import run_trial
from raykd.files import file_digest
from raykd.methods import METHODS
from raykd.methods.ce import CrossEntropy
from raykd.methods.kd import KnowledgeDistillation
from raykd.nodes import node_path, prepare
from raykd.teacher.server import served_model, start_server
from raykd.tune import main
from tests.conftest import tiny_raw

REPO = Path(__file__).resolve().parents[1]
COMPARE = REPO / "tune_configs" / "methods_compare.yaml"
NEW = ["continuation", "label-smoothing", "class-similarity", "kd-pt", "label-revision"]
NEW += ["skew-kl", "skew-rkl", "reffakd", "miniplm", "dkd", "dist"]


#: Methods whose hooks read teacher logits or weights before training, or follow the epoch.
HOOKED = ["class-similarity", "label-revision", "miniplm", "continuation"]


@pytest.mark.slow
def test_every_new_method_runs_central_trials_alike_in_inline_cache_and_server_mode(
    ray_session, tmp_path: Path, cache_dir: Path
) -> None:
    """Every method runs inline; the hooked ones also from the logit cache and a teacher server, with equal results."""
    cfg = validate_config(tiny_raw(tmp_path, cache_dir, methods=[{"name": n} for n in NEW]))
    results = {}
    for mode, names in (("inline", NEW), ("cache", HOOKED), ("server", HOOKED)):
        c = cfg.model_copy(update={"teacher": cfg.teacher.model_copy(update={"mode": mode, "num_cpus": 0.5})})
        server = None
        if mode == "server":
            paths = [node_path(cfg, n, 0) for n in (0, 1)]
            shape = prepare(cfg, 0).dataset.input_shape
            served = [served_model(file_digest(p), p, cfg.nodes.model, shape, 10) for p in paths]
            server = start_server(served, c.teacher)
        for name in names:
            results[mode, name] = run_trial(c, name, {}, 0, server=server)
        if server is not None:
            server.kill()
    for name in NEW:
        assert math.isfinite(results["inline", name]["loss"]) and results["inline", name]["epoch"] == 2
    for name in HOOKED:
        inline = results["inline", name]
        for mode in ("cache", "server"):
            assert results[mode, name]["test_acc"] == pytest.approx(inline["test_acc"], abs=0.003), (mode, name)
            assert results[mode, name]["loss"] == pytest.approx(inline["loss"], rel=1e-3), (mode, name)
    reffakd = results["inline", "reffakd"]
    assert (
        0 < reffakd["prepare_ae_params"] and reffakd["prepare_ae_seconds"] > 0 and reffakd["prepare_teacher_params"] > 0
    )
    assert results["inline", "miniplm"]["loss_selected"] == pytest.approx(0.5, abs=0.1)


@pytest.mark.parametrize("name", [*NEW, "dpkd"])
def test_every_new_method_trains_inside_a_federated_kd_client(tmp_path: Path, cache_dir: Path, name: str) -> None:
    federated = {"strategy": "kd", "local": {"epochs": 2, "batch_size": 64, "lr": 0.01}}
    cfg = validate_config(tiny_raw(tmp_path, cache_dir, methods=[{"name": name}], federated=federated))
    assert client_method(cfg).name == name
    received = to_arrays(global_model(cfg, setup_of(cfg)))
    sent, kept, metrics = client_update(cfg, 0, 1, received, None)
    assert kept is None and math.isfinite(metrics["train_loss"])
    start, end = received.to_torch_state_dict(), sent.to_torch_state_dict()
    assert any(not torch.equal(start[k], end[k]) for k in start)


def test_the_first_method_row_is_the_federated_clients_and_servers_kd(tmp_path: Path, cache_dir: Path) -> None:
    """One home per knob: kd clients train with the first row's first grid point; the server's pool KD takes
    the first row that has a temperature."""
    rows = [{"name": "ce"}, {"name": "kd", "temperature": [2, 8], "alpha": 0.3}]
    cfg = validate_config(tiny_raw(tmp_path, cache_dir, methods=rows[::-1], federated={"strategy": "kd"}))
    assert client_method(cfg) == KnowledgeDistillation(2.0, 0.3) and server_temperature(cfg) == 2.0
    cfg = validate_config(tiny_raw(tmp_path, cache_dir, methods=rows, federated={"strategy": "feddf"}))
    assert client_method(cfg) == CrossEntropy() and server_temperature(cfg) == 2.0
    cfg = validate_config(tiny_raw(tmp_path, cache_dir, methods=rows[:1], federated={"strategy": "feddf"}))
    assert server_temperature(cfg) == SERVER_TEMPERATURE


def test_compare_config_holds_every_registered_method() -> None:
    cfg = load_config(COMPARE)
    assert {m.name for m in cfg.methods} == set(METHODS)
    assert len(cfg.seeds) >= 3 and any(len(m.grid()) > 1 for m in cfg.methods if m.name == "kd")


@pytest.mark.slow
def test_compare_config_end_to_end_ci_sized(
    ray_session, tmp_path: Path, cache_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    methods = load_raw(COMPARE)["methods"]
    next(m for m in methods if m.get("label") == "kd-tuned").update(temperature=[1, 4], alpha=0.5)
    raw = tiny_raw(tmp_path, cache_dir, methods=methods)
    config = tmp_path / "compare.yaml"
    config.write_text(yaml.safe_dump(raw))
    assert main(["--config", str(config)]) == 0
    printed = capsys.readouterr().out
    summary = printed.split("## Summary")[1].split("## Every setting")[0]
    assert "wall s/trial" in summary
    rows = [line.split("|")[1].strip() for line in summary.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[1:] == [m.get("label", m["name"]) for m in methods]
    assert all("FAILED" not in line for line in printed.splitlines())
    client = MlflowClient(raw["tracking"]["uri"])
    parent = next(
        r
        for r in client.search_runs([client.get_experiment_by_name("tests").experiment_id])
        if "mlflow.parentRunId" not in r.data.tags
    )
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)} | {
        a.path for a in client.list_artifacts(parent.info.run_id, "plots")
    }
    assert {"results.md", "plots/gain_bars.png"} <= artifacts
    assert "wall s/trial" in (next((tmp_path / "runs").iterdir()) / "results.md").read_text()
