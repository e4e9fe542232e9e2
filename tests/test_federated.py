"""Federated KD with Flower: losses, the server strategy, bad input, and real simulations on Ray.

Simulations run ``python -m federated.simulate`` as a child process: it is its own Ray driver, so
Flower's ``ray.shutdown()`` at the end never touches the test session's Ray (``ray_session``).
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import yaml
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MessageType, Metadata, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from federated.fml import FederatedMutualLearning
from federated.simulate import main
from federated.strategy import FederatedStrategy, client_acc_text
from federated.task import client_update, global_model, payload_bytes, setup_of, to_arrays
from raykd.config import ExperimentConfig, validate_config
from raykd.errors import ConfigError
from raykd.methods.base import StepLogits
from raykd.nodes import new_model
from raykd.students import load_student
from raykd.sweep.simulation import simulation_metrics
from tests.conftest import tiny_raw

REPO = Path(__file__).resolve().parents[1]


#: The clients' loss rows of strategies kd and fml (their first method row).
CLIENT_ROWS = {
    "kd": [{"name": "kd", "temperature": 4, "alpha": 0.5}],
    "fml": [{"name": "federated.fml:FederatedMutualLearning", "alpha": 0.5, "beta": 0.5}],
}


def fed_raw(
    tmp_path: Path, cache_dir: Path, methods: list[dict[str, Any]] | None = None, **federated: Any
) -> dict[str, Any]:
    """A tiny simulation: 3 clients on MNIST-1D, 2 rounds of one local epoch, one client actor on 2 CPUs.

    Strategies kd and fml train with their ``CLIENT_ROWS`` unless ``methods`` are given.
    """
    settings = {
        "rounds": 2,
        "min_clients": 2,
        "local": {"epochs": 1, "batch_size": 64, "lr": 0.01},
        "server": {"epochs": 1, "batch_size": 128},
        "client_cpus": 2,
        **federated,
    }
    rows = methods or CLIENT_ROWS.get(str(federated.get("strategy")))
    return tiny_raw(tmp_path, cache_dir, federated=settings, ray={"num_cpus": 2}, **({"methods": rows} if rows else {}))


def param_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


# ---------------------------------------------------------------- losses and client updates (no Ray)


def test_fml_loss_is_the_papers_weighted_mutual_loss() -> None:
    torch.manual_seed(0)
    private, meme, targets = torch.randn(6, 10), torch.randn(6, 10), torch.randint(0, 10, (6,))
    terms = FederatedMutualLearning(alpha=0.3, beta=0.8).losses(
        StepLogits([private, meme], []), targets, torch.ones(6, dtype=torch.bool)
    )

    def kl(target_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        p = F.softmax(target_logits, 1)
        return (p * (p.log() - F.log_softmax(logits, 1))).sum(1).mean()

    expected_private = 0.3 * F.cross_entropy(private, targets) + 0.7 * kl(meme, private)
    expected_meme = 0.8 * F.cross_entropy(meme, targets) + 0.2 * kl(private, meme)
    assert torch.allclose(terms["private_loss"], expected_private, atol=1e-6)
    assert torch.allclose(terms["meme_loss"], expected_meme, atol=1e-6)
    assert torch.allclose(terms["loss"], expected_private + expected_meme, atol=1e-6)


def test_fml_client_sends_only_the_meme_and_keeps_its_private_model(tmp_path: Path, cache_dir: Path) -> None:
    raw = fed_raw(tmp_path, cache_dir, strategy="fml")
    raw["nodes"]["models"] = {1: {"name": "mlp", "width": 32}}
    cfg = validate_config(raw)
    setup = setup_of(cfg)
    meme = global_model(cfg, setup)
    sent, kept, metrics = client_update(cfg, 1, 1, to_arrays(meme), None)
    assert sent.keys() == meme.state_dict().keys()  # the meme's architecture travels ...
    assert kept is not None and kept.keys() == new_model(cfg, setup, 1).state_dict().keys()  # ... the mlp stays
    assert kept.keys() != sent.keys()
    assert payload_bytes(sent) == param_bytes(meme)
    assert metrics["num-examples"] == len(setup.nodes[1].train)
    again, kept_again, _ = client_update(cfg, 1, 2, sent, kept)  # round 2 continues the private model
    assert not torch.equal(
        next(iter(kept.to_torch_state_dict().values())), next(iter(kept_again.to_torch_state_dict().values()))
    )


def test_kd_client_is_held_near_the_global_model_it_distils(tmp_path: Path, cache_dir: Path) -> None:
    """The KD teacher is the received global model: the more weight on its term, the less the update drifts."""

    def drift(alpha: float) -> float:
        cfg = validate_config(fed_raw(tmp_path, cache_dir, [{"name": "kd", "alpha": alpha}], strategy="kd"))
        received = to_arrays(global_model(cfg, setup_of(cfg)))
        sent, kept, _ = client_update(cfg, 0, 1, received, None)
        assert kept is None
        start, end = received.to_torch_state_dict(), sent.to_torch_state_dict()
        return sum(float((end[k].float() - start[k].float()).norm()) for k in start)

    assert drift(0.9) < drift(0.0)


# ---------------------------------------------------------------- the server strategy (real Flower code, no Ray)


def _reply(node: int, content: RecordDict | Error) -> Message:
    """A client's reply as the SuperLink would deliver it."""
    metadata = Metadata(
        run_id=1,
        message_id=f"reply-{node}",
        src_node_id=node,
        dst_node_id=0,
        reply_to_message_id=f"msg-{node}",
        group_id="1",
        created_at=time.time(),
        ttl=60,
        message_type=MessageType.TRAIN,
    )
    if isinstance(content, Error):
        return Message(error=content, metadata=metadata)
    return Message(content=content, metadata=metadata)


def _strategy(tmp_path: Path, cache_dir: Path, **federated: Any) -> tuple[ExperimentConfig, FederatedStrategy]:
    cfg = validate_config(fed_raw(tmp_path, cache_dir, **federated))
    return cfg, FederatedStrategy(cfg)


def test_fedavg_of_identical_models_is_identity_and_failures_are_counted(tmp_path: Path, cache_dir: Path) -> None:
    cfg, strategy = _strategy(tmp_path, cache_dir)
    model = global_model(cfg, setup_of(cfg))
    ok = RecordDict({"arrays": to_arrays(model), "metrics": MetricRecord({"num-examples": 50, "train_loss": 1.0})})
    replies = [_reply(1, ok), _reply(2, ok), _reply(3, Error(code=0, reason="client 2: injected fault"))]
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert arrays is not None and metrics is not None
    for name, tensor in arrays.to_torch_state_dict().items():
        assert torch.allclose(tensor, model.state_dict()[name].float(), atol=1e-6), name
    entry = strategy.rounds[1]
    assert (entry.succeeded, entry.failed, entry.skipped) == (2, 1, False)
    assert entry.bytes_up == 2 * param_bytes(model)


def test_too_few_successes_skip_the_round_and_keep_the_model(tmp_path: Path, cache_dir: Path) -> None:
    cfg, strategy = _strategy(tmp_path, cache_dir, min_successful=2)
    model = global_model(cfg, setup_of(cfg))
    ok = RecordDict({"arrays": to_arrays(model), "metrics": MetricRecord({"num-examples": 50, "train_loss": 1.0})})
    arrays, metrics = strategy.aggregate_train(1, [_reply(1, ok), _reply(2, Error(code=0, reason="boom"))])
    assert arrays is None and metrics is None  # Strategy.start keeps the previous global model
    assert strategy.rounds[1].skipped and strategy.rounds[1].failed == 1


class _Federation:
    """What a strategy asks of Flower's grid when it samples clients: the connected node ids."""

    def __init__(self, nodes: int) -> None:
        self.nodes = nodes

    def get_node_ids(self) -> list[int]:
        return list(range(1, self.nodes + 1))


def test_client_evaluation_samples_like_training_in_the_rounds_evaluate_every_picks(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Evaluation follows training's fraction unless told otherwise, never below min_clients; evaluate_every 2
    of 5 rounds evaluates in rounds 2 and 4, and in the last."""
    for identity in ("_run_id", "_node_id", "_task_id"):  # a ServerApp's messages carry its run, node and task
        monkeypatch.setattr(TaskIdentity, identity, 1)
    counts = {}
    for fraction_evaluate in (None, 0.1):
        raw = fed_raw(tmp_path, cache_dir, rounds=5, fraction=0.4, min_clients=3, evaluate_every=2)
        raw["federated"]["fraction_evaluate"] = fraction_evaluate
        raw["partition"]["num_nodes"] = 10
        strategy = FederatedStrategy(validate_config(raw))
        sent = {r: strategy.configure_evaluate(r, ArrayRecord(), ConfigRecord(), _Federation(10)) for r in range(1, 6)}
        counts[fraction_evaluate] = {r: len(list(messages)) for r, messages in sent.items()}
        assert {r: strategy.rounds[r].evaluated for r in strategy.rounds} == {
            r: counts[fraction_evaluate][r] for r in (2, 4, 5)
        }
    assert counts == {None: {1: 0, 2: 4, 3: 0, 4: 4, 5: 4}, 0.1: {1: 0, 2: 3, 3: 0, 4: 3, 5: 3}}


def test_the_round_line_lists_a_few_clients_and_summarises_many() -> None:
    assert client_acc_text({2: 0.25, 0: 0.5}) == "client acc % 0:50.0 2:25.0"
    assert client_acc_text({c: c / 10 for c in range(10)}) == "client acc % n=10 mean 45.0 min 0.0 max 90.0"
    assert client_acc_text({}) == "client acc - (not evaluated this round)"


# ---------------------------------------------------------------- bad input: one line, exit 2, nothing run

BAD = [
    (["federated.min_clients=4"], "federated.min_clients: 4 clients per round but partition.num_nodes is 3"),
    (["federated.fraction=0"], "federated.fraction = 0: Input should be greater than 0"),
    (["federated.fraction=1.5"], "federated.fraction = 1.5: Input should be less than or equal to 1"),
    (["federated.rounds=0"], "federated.rounds = 0: Input should be greater than or equal to 1"),
    (["federated.fraction_evaluate=0"], "federated.fraction_evaluate = 0: Input should be greater than 0"),
    (["federated.fraction_evaluate=2"], "federated.fraction_evaluate = 2: Input should be less than or equal to 1"),
    (["federated.fraction_evaluate=.nan"], "federated.fraction_evaluate = nan: Input should be a finite number"),
    (["federated.evaluate_every=0"], "federated.evaluate_every = 0: Input should be greater than or equal to 1"),
    (["federated.evaluate_every=1.5"], "federated.evaluate_every = 1.5: Input should be a valid integer"),
    (["federated.poll_interval=0"], "federated.poll_interval = 0: Input should be greater than 0"),
    (["federated.poll_interval=2"], "federated.poll_interval = 2: Input should be less than or equal to 1"),
    (
        ["federated.kd_alpha=0.3"],
        "federated.kd_alpha: moved to the method row; set methods.0.alpha (e.g. methods: [{name: kd, temperature: 4,",
    ),
    (["federated.fml_beta=0.2"], "federated.fml_beta: moved to the method row; set methods.0.beta (e.g. methods:"),
    (["federated.grid={federated.rounds: [1, 2]}"], "federated.grid: a search over simulations is a sweep; set tune"),
    (["federated.strategy=fml"], "methods[0].name: federated.strategy=fml trains with the first method row, 'ce' is"),
    (["federated.strategy=kd", "methods.0={name: dml}"], "methods[0].name: federated.strategy=kd distils a frozen"),
    (["federated.strategy=fedprox"], "federated.strategy = 'fedprox': Input should be 'fedavg', 'kd', 'fml'"),
    (["federated.min_successful=4"], "federated.min_successful: 4 but only 3 clients are sampled per round"),
    (["federated.fail_client=3"], "federated.fail_client: client 3 does not exist; allowed: 0..2"),
    (["federated.fail_rounds=[5]"], "federated.fail_rounds: round 5 does not exist; allowed: 1..2"),
    (["nodes.models={1: mlp}"], "nodes.models: per-node architectures need federated.strategy=fml"),
    (["federated.strategy=feddf", "data.pool_fraction=0", "transfer.set=local"], "data.pool_fraction: federated"),
    (["federated.client_cpus=3"], "federated.client_cpus: 3 CPUs per client but the largest Ray node has 2"),
]


@pytest.mark.parametrize(("overrides", "expected"), BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_input_is_one_line_and_exit_2(
    tmp_path: Path,
    cache_dir: Path,
    overrides: list[str],
    expected: str,
    capsys: pytest.CaptureFixture,
    request: pytest.FixtureRequest,
) -> None:
    config = tmp_path / "fed.yaml"
    config.write_text(yaml.safe_dump(fed_raw(tmp_path, cache_dir)))
    if "client_cpus" in overrides[0]:  # found only once Ray is up: a driver process of its own, joined to the session's
        done = _run(
            ["--config", str(config), *(a for o in overrides for a in ("--set", o))],
            address=request.getfixturevalue("ray_address"),
        )
        rc, err = done.returncode, done.stderr.strip().splitlines()[-1]
    else:
        rc = main(["--config", str(config), *(a for o in overrides for a in ("--set", o))])
        err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith("raykd: error: ") and "\n" not in err and "Traceback" not in err
    assert expected in err, err
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------- real simulations (Flower on Ray, child processes)


def _run(args: list[str], address: str) -> subprocess.CompletedProcess[str]:
    """``python -m federated.simulate ARGS`` as a child driver joined to the Ray at ``address``."""
    return subprocess.run(
        [sys.executable, "-m", "federated.simulate", *args, "--address", address],
        cwd=REPO,
        env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
        capture_output=True,
        text=True,
        timeout=300,
    )


def simulate(tmp_path: Path, raw: dict[str, Any], address: str, rc: int = 0) -> tuple[dict[str, Any], pd.DataFrame]:
    """Run one simulation joined to the Ray at ``address`` that exits with ``rc`` (3: it lost client updates); its
    summary.json and rounds.csv."""
    config = tmp_path / "fed.yaml"
    config.write_text(yaml.safe_dump(raw))
    done = _run(["--config", str(config)], address)
    assert done.returncode == rc, done.stderr[-3000:]
    (out,) = (tmp_path / "runs").iterdir()
    _check_quiet(done, out)
    return json.loads((out / "summary.json").read_text()), pd.read_csv(out / "rounds.csv")


def _check_quiet(done: subprocess.CompletedProcess[str], out: Path) -> None:
    """Flower's own lines went to the records' flower.log (plain text), not to the console; raykd's lines did."""
    flower = (out / "flower.log").read_text()
    printed = done.stdout + done.stderr
    assert flower.startswith(("INFO ", "WARNING ")) and "\x1b[" not in flower + printed
    assert not re.search(r"^(INFO|WARNING|DEBUG) +:", printed, re.M), printed[:3000]
    assert re.search(r"^ray: joined \S+ \(\d+ CPUs, \d+ GPUs\)$", done.stdout, re.M)
    assert f"Flower's log: {out / 'flower.log'}" in done.stdout


def mlflow_run(tmp_path: Path) -> Any:
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    return client, run


@pytest.mark.slow
def test_feddf_finishes_rounds_with_a_faulty_client_and_tracks_them(
    tmp_path: Path, cache_dir: Path, ray_address: str
) -> None:
    """FedDF = FedAvg + server ensemble distillation; client 1 fails in round 1, the others are aggregated."""
    raw = fed_raw(tmp_path, cache_dir, strategy="feddf", fail_client=1, fail_rounds=[1], min_successful=2)
    # a round lost a client update: finished, but not as configured
    summary, rounds = simulate(tmp_path, raw, ray_address, rc=3)
    r1, r2 = rounds.iloc[1], rounds.iloc[2]
    assert (r1.sampled, r1.succeeded, r1.failed, bool(r1.skipped)) == (3, 2, 1, False)
    assert (r2.succeeded, r2.failed) == (3, 0)
    assert summary["starts"]["-"]["failed_clients"] == 1
    cfg = validate_config(raw)
    weights = param_bytes(global_model(cfg, setup_of(cfg)))
    assert r1.bytes_up == 2 * weights and r2.bytes_up == 3 * weights  # only successful clients' models come back
    assert r1.bytes_down == 6 * weights  # the global model to 3 clients for training and 3 for evaluation
    assert not pd.isna(r2[["client0_acc", "client1_acc", "client2_acc"]]).any()
    assert r2.test_acc > rounds.iloc[0].test_acc  # two rounds beat the random start

    client, run = mlflow_run(tmp_path)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "test_acc")] == [0, 1, 2]
    assert client.get_metric_history(run.info.run_id, "failed")[1].value == 1
    assert "accuracy.png" in [a.path for a in client.list_artifacts(run.info.run_id)]
    assert run.data.params["federated.strategy"] == "feddf"


@pytest.mark.slow
def test_fifty_clients_evaluate_only_the_sampled_ones_in_the_rounds_picked(
    tmp_path: Path, cache_dir: Path, ray_address: str
) -> None:
    """50 clients, 5 sampled per round: evaluation costs the sample, not the federation, and evaluate_every 2 of
    2 rounds skips it in round 1 (only the training messages go down)."""
    raw = fed_raw(tmp_path, cache_dir, fraction=0.1, evaluate_every=2)
    raw["partition"] = {"scheme": "iid", "num_nodes": 50, "min_samples": 20}
    _, rounds = simulate(tmp_path, raw, ray_address)
    r1, r2 = rounds.iloc[1], rounds.iloc[2]
    assert (r1.sampled, r1.evaluated, r2.sampled, r2.evaluated) == (5, 0, 5, 5)
    clients = rounds.filter(regex=r"^client\d+_acc$")
    assert clients.shape[1] == 5 and clients.iloc[2].notna().all()  # rounds.csv: each evaluated client's accuracy
    assert clients.iloc[1].isna().all() and pd.isna(r1.mean_client_acc)
    cfg = validate_config(raw)
    weights = param_bytes(global_model(cfg, setup_of(cfg)))
    assert (r1.bytes_down, r2.bytes_down) == (5 * weights, 10 * weights)


@pytest.mark.slow
def test_fml_joined_to_a_running_cluster_sends_only_memes_and_skips_thin_rounds(
    tmp_path: Path, cache_dir: Path, ray_address: str
) -> None:
    """FML with two private architectures, joined by address to a running Ray (the session's, as a user joins a
    cluster's head; tests/test_two_nodes.py joins heads started by ``ray start``).

    Client 0 fails in round 1 and every round needs all 3 clients, so round 1 keeps the global model.
    """
    raw = fed_raw(tmp_path, cache_dir, strategy="fml", fail_client=0, fail_rounds=[1], min_successful=3)
    raw["nodes"]["models"] = {1: {"name": "mlp", "width": 32}}
    _, rounds = simulate(tmp_path, raw, ray_address, rc=3)
    cfg = validate_config(raw)
    meme = param_bytes(global_model(cfg, setup_of(cfg)))
    assert list(rounds.bytes_up[1:]) == [2 * meme, 3 * meme]  # memes of the successful clients, never private models
    assert bool(rounds.iloc[1].skipped) and rounds.iloc[1].test_acc == rounds.iloc[0].test_acc
    assert not rounds.iloc[2].skipped and rounds.iloc[2].test_acc > rounds.iloc[0].test_acc
    (out,) = (tmp_path / "runs").iterdir()
    private = sorted(p.name for p in (out / "private_models").iterdir())
    assert private == ["client0.pt", "client1.pt", "client2.pt"]  # every client trained in the last round
    assert isinstance(load_student(out / "private_models" / "client1.pt")[0], torch.nn.Flatten)  # node 1's mlp
    assert (out / "global_model.pt").is_file()
    assert not pd.isna(rounds.iloc[2][["client0_acc", "client1_acc", "client2_acc"]]).any()


# ---------------------------------------------------------------- Ray Tune over simulations


@pytest.mark.slow
def test_a_sweep_of_simulation_trials_chooses_on_validation_and_keeps_the_global_models(
    tmp_path: Path, cache_dir: Path, ray_address: str
) -> None:
    """``python -m raykd.tune --address`` with ``tune.trial: simulation``: every row's setting is one whole
    simulation (a child driver joined to the cluster), reported like a transfer trial: the sweep's table, its
    choice on the global model's validation accuracy, the chosen global models as students, MLflow runs nested."""
    rows = [{"name": "ce", "label": "no-kd"}, {"name": "kd", "temperature": 4, "alpha": [0.2, 0.8]}]
    raw = fed_raw(tmp_path, cache_dir, rows, strategy="kd", rounds=1, client_cpus=1.5)  # one actor, beside the trial
    raw |= {"seeds": [0], "tune": {"trial": "simulation"}}
    config = tmp_path / "fed.yaml"
    config.write_text(yaml.safe_dump(raw))
    done = subprocess.run(
        [sys.executable, "-m", "raykd.tune", "--config", str(config), "--address", ray_address],
        cwd=REPO,
        env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (out,) = (tmp_path / "runs").glob("tiny-*")
    trials = pd.read_csv(out / "trials.csv")
    assert sorted(trials["alpha"].dropna()) == [0.2, 0.8] and (trials["status"] == "ok").all()
    assert (trials["epochs"] == 1).all() and trials[["val_acc", "test_acc", "test_acc_before"]].notna().all().all()
    assert np.allclose(trials["gain"], trials["test_acc"] - trials["test_acc_before"])
    kd = trials[trials["label"] == "kd"]
    chosen = kd.loc[kd["val_acc"].idxmax(), "alpha"]  # on validation, never on test
    assert f"alpha={chosen:g}" in (out / "results.md").read_text()
    for label in ("no-kd", "kd"):  # the chosen setting's global model, as the row's student
        assert load_student(out / "students" / label / "seed0.pt") is not None
    assert len(list((out / "simulations").rglob("rounds.csv"))) == 3
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    nested = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sum("raykd.federated" in r.data.tags for r in nested) == 3  # each simulation's own run, under the sweep


def test_a_simulation_trial_reports_a_texts_gain_in_nats() -> None:
    """A language model's simulation trial: perplexities, and the gain as the drop in log perplexity."""
    final = {"final_val_acc": 0.3, "final_test_acc": 0.25, "start_val_acc": 0.1, "start_test_acc": 0.05}
    final |= {"final_test_ppl": 20.0, "start_test_ppl": 200.0, "final_val_ppl": 25.0, "start_val_ppl": 250.0}
    metrics = simulation_metrics(final | {"rounds_to_target": None}, rounds=4)
    assert metrics["gain"] == pytest.approx(math.log(10)) and metrics["val_gain"] == pytest.approx(math.log(10))
    assert metrics["epoch"] == 4 and math.isnan(metrics["rounds_to_target"]) and metrics["test_ppl"] == 20.0
    assert simulation_metrics(final, rounds=4)["test_acc_before"] == 0.05


def test_the_python_api_shows_the_simulation_as_it_runs(
    tmp_path: Path, cache_dir: Path, ray_address: str, capfd: pytest.CaptureFixture
) -> None:
    """``raykd.simulate`` prints the simulation's own lines (its cluster, each round, where its records are) while
    it runs, and returns its records."""
    import raykd

    sim = raykd.simulate(fed_raw(tmp_path, cache_dir, strategy="fedavg", rounds=1))
    printed = capfd.readouterr().out
    assert re.search(r"^ray: joined \S+ \(\d+ CPUs", printed, re.M) and f"records in {sim.out}" in printed
    assert "test acc" in printed and len(sim.rounds) == 2 and (sim.out / "flower.log").is_file()
    assert sim.out.parent == tmp_path / "runs" and sim.lost is None and sim.final["final_val_acc"] > 0.1


def test_the_python_apis_bad_simulation_is_the_childs_one_line(tmp_path: Path, cache_dir: Path) -> None:
    """What the simulation's own checks refuse reaches ``raykd.simulate`` as one ConfigError line, nothing run."""
    import raykd

    with pytest.raises(ConfigError, match=r"^federated\.fail_client: client 7 does not exist; allowed: 0\.\.2$"):
        raykd.simulate(fed_raw(tmp_path, cache_dir, strategy="fedavg", fail_client=7))
    assert not list((tmp_path / "runs").rglob("rounds.csv"))


def test_verbose_prints_flowers_lines_too(tmp_path: Path, cache_dir: Path, ray_address: str) -> None:
    """``--verbose``: Flower's own log lines on the console as well as in flower.log."""
    config = tmp_path / "fed.yaml"
    config.write_text(yaml.safe_dump(fed_raw(tmp_path, cache_dir, strategy="fedavg", rounds=1)))
    done = _run(["--config", str(config), "--verbose"], ray_address)
    assert done.returncode == 0, done.stderr[-3000:]
    (out,) = (tmp_path / "runs").iterdir()
    assert re.search(r"^INFO +:", done.stdout + done.stderr, re.M) and (out / "flower.log").stat().st_size
    assert "\x1b[" not in done.stdout + done.stderr  # redirected: no colour codes, even in Flower's own lines
