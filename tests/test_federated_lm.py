"""Federated language models: logit-exchange's messages and consensus, kd from a served teacher, bytes counted
exactly, clients with their own architectures, and real simulations (Flower on Ray, child processes)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from flwr.app import ArrayRecord

from federated.exchange import ConsensusTeacher, consensus, pack, public_rows, unpack
from federated.task import client_update, global_model, payload_bytes, setup_of
from raykd.config import check_federated, validate_config
from raykd.engine import Batch
from raykd.errors import ConfigError
from raykd.nodes import new_model
from raykd.students import load_student, read_student
from tests.conftest import lm_raw
from tests.test_federated import param_bytes, simulate

REPO = Path(__file__).resolve().parents[1]

#: Top-k of the tests' messages and served teacher.
K = 4


def fed_lm_raw(tmp_path: Path, cache_dir: Path, **federated: Any) -> dict[str, Any]:
    """A tiny federated text: 3 clients of the tests' corpus, 16-token sequences, tiny GPTs, 2 rounds."""
    raw = lm_raw(
        tmp_path,
        cache_dir,
        methods=[{"name": "kd", "temperature": 1.0, "alpha": 0.5}],
        federated={
            "rounds": 2,
            "min_clients": 3,
            "client_cpus": 0.75,
            "local": {"epochs": 1, "batch_size": 8, "lr": 0.01},
            "exchange": {"top_k": K, "public_rows": 6},
            **federated,
        },
        teacher={"mode": "server", "top_k": K, "num_cpus": 0.5},
        ray={"num_cpus": 2},
    )
    raw["partition"]["num_nodes"] = 3
    raw["nodes"].pop("models")
    return raw


def row_bytes(cfg: Any) -> int:
    """What one logit-exchange message moves: per public token K float16 values, K int16 ids, a float32 tail."""
    tokens = len(public_rows(cfg, setup_of(cfg))) * cfg.data.seq_len
    return tokens * (K * (2 + 2) + 4)


# ---------------------------------------------------------------- messages and consensus (no Ray)


def test_a_message_keeps_the_top_k_and_the_dropped_mass_and_its_bytes_are_exact() -> None:
    log_probs = torch.randn(30, 50).log_softmax(dim=1)
    message = pack(log_probs, K)
    assert payload_bytes(message) == 30 * (K * (2 + 2) + 4)
    back = unpack(message, 50)
    assert torch.allclose(back.exp().sum(dim=1), torch.ones(30), atol=1e-4)  # a distribution again
    kept = log_probs.topk(K).indices
    assert torch.allclose(back.gather(1, kept), log_probs.gather(1, kept), atol=2e-3)  # float16 values


def test_the_consensus_of_equal_clients_is_their_message_and_era_sharpens_it() -> None:
    message = pack(torch.randn(20, 30).log_softmax(dim=1), K)
    same = unpack(consensus([message, message], 30, K, "mean", 0.5), 30)
    assert torch.allclose(same, unpack(message, 30), atol=2e-3)

    def entropy(record: ArrayRecord) -> float:
        p = unpack(record, 30).exp()
        return float(-(p * p.log()).sum(dim=1).mean())

    other = pack(torch.randn(20, 30).log_softmax(dim=1), K)
    mean, era = (consensus([message, other], 30, K, how, 0.5) for how in ("mean", "era"))
    assert entropy(era) < entropy(mean)


def test_the_consensus_teaches_public_tokens_only() -> None:
    seq_len, classes, public = 4, 10, np.array([5, 2])
    record = pack(torch.randn(len(public) * seq_len, classes).log_softmax(dim=1), K)
    teacher = ConsensusTeacher(record, public, seq_len, classes)
    index = torch.tensor([2 * seq_len + 1, 5 * seq_len + 3, 7 * seq_len])  # public seq 2, public seq 5, private 7
    batch = Batch(torch.zeros(3), torch.zeros(3), torch.ones(3, dtype=torch.bool), index)
    (logits,), _ = teacher(batch)
    expected = unpack(record, classes)
    assert torch.equal(logits[0], expected[1 * seq_len + 1])  # seq 2 is the consensus's second sequence
    assert torch.equal(logits[1], expected[0 * seq_len + 3])
    assert torch.equal(logits[2], torch.zeros(classes))


def test_clients_with_their_own_models_send_the_same_bytes_and_keep_their_models(
    tmp_path: Path, cache_dir: Path
) -> None:
    raw = fed_lm_raw(tmp_path, cache_dir, strategy="logit-exchange")
    raw["nodes"]["models"] = {1: {"name": "gpt", "width": 32, "depth": 2, "kwargs": {"heads": 2}}}
    cfg = validate_config(raw)
    setup = setup_of(cfg)
    small, _, _ = client_update(cfg, 0, 1, ArrayRecord(), None)
    large, kept, metrics = client_update(cfg, 1, 1, ArrayRecord(), None)
    assert payload_bytes(small) == payload_bytes(large) == row_bytes(cfg)  # predictions, whatever the model
    assert kept is not None and payload_bytes(kept) == param_bytes(new_model(cfg, setup, 1)) > payload_bytes(large)
    merged = consensus([small, large], setup.dataset.num_classes, K, "mean", 0.5)
    _, kept_again, trained = client_update(cfg, 1, 2, merged, kept)  # round 2 distils the consensus
    assert math.isfinite(trained["train_loss"]) and kept_again is not None
    first = lambda record: next(iter(record.to_torch_state_dict().values()))  # noqa: E731
    assert not torch.equal(first(kept), first(kept_again))  # the private model went on training
    assert metrics["teacher_bytes"] == 0


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"strategy": "fml"}, "federated.strategy: fml takes classification data only"),
        ({"teacher": {"name": "gpt"}}, "federated.teacher: only strategy kd distils a teacher"),
        ({"compare": ["fedavg", "logit-exchange"], "models": True}, "nodes.models: per-node architectures need"),
    ],
)
def test_federated_text_rules_are_one_line(tmp_path: Path, cache_dir: Path, change: dict, expected: str) -> None:
    raw = fed_lm_raw(tmp_path, cache_dir)
    if change.pop("models", False):
        raw["nodes"]["models"] = {1: {"name": "gpt", "width": 32, "depth": 1}}
    raw["federated"].update(change)
    with pytest.raises(ConfigError, match=expected.replace(".", r"\.")):
        check_federated(validate_config(raw))


def test_a_cache_mode_teacher_is_refused_for_federated_kd(tmp_path: Path, cache_dir: Path) -> None:
    raw = fed_lm_raw(tmp_path, cache_dir, strategy="kd", teacher={"name": "gpt"})
    raw["teacher"] = {"mode": "cache", "top_k": K}
    with pytest.raises(ConfigError, match="allowed: inline, server"):
        check_federated(validate_config(raw))


# ---------------------------------------------------------------- real simulations


@pytest.mark.slow
def test_fedavg_served_kd_and_logit_exchange_compare_with_bytes_counted_exactly(
    tmp_path: Path, cache_dir: Path, ray_address: str
) -> None:
    raw = fed_lm_raw(
        tmp_path, cache_dir, compare=["fedavg", "kd", "logit-exchange"], teacher={"name": "gpt", "width": 32}
    )
    summary, rounds = simulate(tmp_path, raw, ray_address)
    cfg = validate_config(raw)
    setup = setup_of(cfg)
    runs = {name: part.set_index("round") for name, part in rounds.groupby("start")}
    assert set(runs) == {"fedavg", "kd", "logit-exchange"}
    weights = param_bytes(global_model(cfg, setup))
    for name in ("fedavg", "kd"):
        assert (runs[name].loc[[1, 2], "bytes_up"] == 3 * weights).all()
        assert runs[name].loc[2, "test_ppl"] < runs[name].loc[0, "test_ppl"]  # it learns
    exchange = runs["logit-exchange"]
    assert (exchange.loc[[1, 2], "bytes_up"] == 3 * row_bytes(cfg)).all()
    assert exchange.loc[1, "bytes_down"] == 0 and exchange.loc[2, "bytes_down"] == 3 * row_bytes(cfg)
    assert np.isfinite(exchange.loc[2, "test_ppl"]) and pd.isna(exchange.loc[0, "test_ppl"])
    for name in ("fedavg", "kd"):  # the global model on the global validation split, what a sweep chooses on
        assert runs[name].loc[2, "val_ppl"] < runs[name].loc[0, "val_ppl"]
        assert summary["starts"][name]["final_val_ppl"] == pytest.approx(runs[name].loc[2, "val_ppl"])
    assert exchange.loc[2, "val_ppl"] == pytest.approx(exchange.loc[2, "mean_client_ppl"])  # the clients' own
    # the served teacher's answers: per token of every local batch K float32 values, K int32 ids, a float32 tail
    batch, seq_len = cfg.federated.local.batch_size, cfg.data.seq_len
    steps = sum(math.ceil(len(n.train) / min(batch, len(n.train))) * min(batch, len(n.train)) for n in setup.nodes)
    assert (runs["kd"].loc[[1, 2], "teacher_bytes"] == steps * seq_len * (K * 8 + 4)).all()
    assert (runs["fedavg"]["teacher_bytes"] == 0).all()
    assert summary["starts"]["kd"]["total_teacher_bytes"] > 0
    (out,) = (tmp_path / "runs").iterdir()
    assert {p.name for p in (out / "private_models" / "logit-exchange").iterdir()} == {
        f"client{n}.pt" for n in range(3)
    }
    info = read_student(out / "global_model-kd.pt")["info"]
    assert info["task"] == "lm" and np.isfinite(info["metrics"]["test_ppl"])


@pytest.mark.slow
def test_logit_exchange_with_own_models_survives_a_failing_client(
    tmp_path: Path, cache_dir: Path, ray_address: str
) -> None:
    raw = fed_lm_raw(tmp_path, cache_dir, strategy="logit-exchange") | {"faults": {"client": 2, "client_rounds": [1]}}
    raw["nodes"]["models"] = {1: {"name": "gpt", "width": 32, "depth": 2, "kwargs": {"heads": 2}}}
    summary, rounds = simulate(tmp_path, raw, ray_address, rc=3)
    cfg = validate_config(raw)
    r1, r2 = rounds.set_index("round").loc[1], rounds.set_index("round").loc[2]
    assert (r1.succeeded, r1.failed, r2.succeeded) == (2, 1, 3)
    assert r1.bytes_up == 2 * row_bytes(cfg) and r2.bytes_down == 3 * row_bytes(cfg)
    assert summary["starts"]["-"]["failed_clients"] == 1
    (out,) = (tmp_path / "runs").iterdir()
    own = load_student(out / "private_models" / "client1.pt")
    setup = setup_of(cfg)
    assert param_bytes(own) == param_bytes(new_model(cfg, setup, 1)) != param_bytes(new_model(cfg, setup, 0))


def test_a_sweep_of_simulations_leaves_room_for_each_simulations_served_teacher() -> None:
    """Simulation trials of kd from a served teacher: the Flower pool must fit beside the waiting trial and the
    simulation's own TeacherServer, or the sweep is refused in one line before any trial starts."""
    from raykd.api import load_config
    from raykd.cluster import Capacity, check_sweep
    from raykd.config import study_cells

    search = load_config(REPO / "tune_configs" / "federated_lm_search.yaml")
    two_cpus = Capacity(cpus=2, gpus=0, free_cpus=2, nodes=[{"CPU": 2}])
    check_sweep(search, study_cells(search), two_cpus)  # 2 clients x 0.7 + 0.5 + the trial's sliver
    crowded = load_config(REPO / "tune_configs" / "federated_lm_search.yaml", ["federated.client_cpus=0.75"])
    with pytest.raises(ConfigError, match=r"^federated\.client_cpus: Flower places 2 clients x 0\.75 CPUs, but only"):
        check_sweep(crowded, study_cells(crowded), two_cpus)


def test_a_simulations_served_teacher_replicas_must_fit_the_gpus() -> None:
    """A simulation's served teacher reserves every replica's ``teacher.num_gpus`` before Flower starts its clients:
    more than the GPUs hold is one line naming the knob, not a server that never starts."""
    from raykd.api import load_config
    from raykd.cluster import Capacity, check_flower_pool

    one_gpu = Capacity(cpus=8, gpus=1, free_cpus=8, nodes=[{"CPU": 8, "GPU": 1}], cuda=True)
    served = lambda n: load_config(  # noqa: E731
        REPO / "tune_configs" / "federated_lm_search.yaml", ["teacher.num_gpus=0.25", f"teacher.replicas={n}"]
    )
    check_flower_pool(served(4), one_gpu)
    with pytest.raises(
        ConfigError, match=r"^teacher\.replicas: 5 server replicas x 0\.25 GPUs but .*; allowed: up to 4$"
    ):
        check_flower_pool(served(5), one_gpu)
    no_gpu = Capacity(cpus=8, gpus=0, free_cpus=8, nodes=[{"CPU": 8}])
    with pytest.raises(ConfigError, match=r"^teacher\.num_gpus"):
        check_flower_pool(served(1), no_gpu)
