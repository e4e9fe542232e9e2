"""TeacherServer (a real Ray actor) and the offline logit cache: same logits as in-process, shared, robust."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from ray.train import UserCallback

from raykd.config import validate_config
from raykd.engine import predict
from raykd.experiment import run_trial
from raykd.files import file_digest
from raykd.nodes import load_node, node_path, prepare
from raykd.teacher.cache import LogitCache, node_logits
from raykd.teacher.server import ServedModel, served_model, start_server
from tests.conftest import tiny_raw


@pytest.fixture(scope="module")
def node_setup(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> tuple:
    tmp = tmp_path_factory.mktemp("teacher")
    cfg = validate_config(tiny_raw(tmp, cache_dir))
    setup = prepare(cfg, 0)
    load_node(cfg, setup, 0, 0)  # the student's node model too: a server can be started for both from the start
    teacher = load_node(cfg, setup, 1, 0)
    return cfg, setup, teacher


def _served(cfg, setup, node: int = 1) -> ServedModel:  # noqa: ANN001
    path = node_path(cfg, node, 0)
    return served_model(file_digest(path), path, cfg.nodes.model_of(node), setup.dataset.input_shape, 10)


def test_server_matches_in_process_logits_for_concurrent_callers_and_merges_them(
    ray_session, node_setup: tuple
) -> None:
    ray = ray_session
    cfg, setup, teacher = node_setup
    model = _served(cfg, setup)
    server = start_server([model], cfg.teacher.model_copy(update={"num_cpus": 0.5, "batch_wait_ms": 20}))
    chunks = [setup.dataset.train_x[i * 50 : (i + 1) * 50] for i in range(16)]
    (replica,) = server.replicas
    answers = ray.get([replica.infer.remote((model.key,), x) for x in chunks])  # 16 callers at once
    for x, (logits,) in zip(chunks, answers, strict=True):
        assert logits.shape == (1, 50, 10)
        assert torch.allclose(logits[0], predict(teacher, x), atol=1e-5)
    stats = server.stats()
    assert stats["requests"] == 16 and stats["rows"] == 800
    assert stats["batches"] < 16 and stats["max_batch_rows"] > 50  # requests were merged
    assert stats["compute_s"] > 0
    server.kill()


def test_server_float16_logits(ray_session, node_setup: tuple) -> None:
    ray = ray_session
    cfg, setup, teacher = node_setup
    model = _served(cfg, setup)
    server = start_server([model], cfg.teacher.model_copy(update={"num_cpus": 0.5, "dtype": "float16"}))
    x = setup.dataset.train_x[:64]
    (logits,) = ray.get(server.replicas[0].infer.remote((model.key,), x))
    assert logits.dtype == torch.float16
    assert torch.allclose(logits[0].float(), predict(teacher, x), atol=2e-2)
    server.kill()


@pytest.mark.slow
def test_killed_server_restarts_and_answers_every_in_flight_request(ray_session, node_setup: tuple) -> None:
    ray = ray_session
    cfg, setup, teacher = node_setup
    model = _served(cfg, setup)
    server = start_server([model], cfg.teacher.model_copy(update={"num_cpus": 0.5, "max_restarts": 2}))
    (replica,) = server.replicas
    ray.get(replica.infer.remote((model.key,), setup.dataset.train_x[:4]))  # up and serving
    chunks = [setup.dataset.train_x[i * 100 : (i + 1) * 100] for i in range(30)]
    refs = [replica.infer.remote((model.key,), x) for x in chunks]
    server.kill(no_restart=False)  # crash with requests in flight
    answers = ray.get(refs, timeout=120)
    for x, (logits,) in zip(chunks, answers, strict=True):
        assert torch.allclose(logits[0], predict(teacher, x), atol=1e-5)
    assert server.stats()["requests"] <= 30  # a fresh process answered the retried ones
    server.kill()


@pytest.mark.slow
def test_trial_in_server_and_cache_mode_equals_inline(ray_session, node_setup: tuple, tmp_path: Path) -> None:
    cfg, setup, _ = node_setup
    results = {}
    # one server for both server modes: prefetching is the client's side of it
    serving = cfg.teacher.model_copy(update={"mode": "server", "num_cpus": 0.5})
    server = start_server([_served(cfg, setup, n) for n in (0, 1)], serving)
    for mode, ahead in (("inline", 1), ("cache", 1), ("server", 1), ("server-ahead", 3)):  # 3 batches prefetched
        teacher = {"mode": mode.split("-")[0], "prefetch": ahead}
        c = cfg.model_copy(update={"teacher": cfg.teacher.model_copy(update=teacher)})
        results[mode] = run_trial(c, "kd", {"temperature": 4.0, "alpha": 0.5}, 0, server=server)
        dpkd = c.model_copy(
            update={
                "methods": validate_config(tiny_raw(tmp_path, c.nodes.cache_dir, methods=[{"name": "dpkd"}])).methods
            }
        )
        results[mode + "-dpkd"] = run_trial(dpkd, "dpkd", {"temperature": 4.0, "alpha": 0.5}, 0, server=server)
    server.kill()
    for method in ("", "-dpkd"):
        for mode in ("cache", "server", "server-ahead"):
            assert results[mode + method]["test_acc"] == pytest.approx(
                results["inline" + method]["test_acc"], abs=0.003
            )
            assert results[mode + method]["loss"] == pytest.approx(results["inline" + method]["loss"], rel=1e-3)


def test_cache_hit_miss_invalidation_and_corruption(tmp_path: Path, node_setup: tuple) -> None:
    cfg, setup, teacher = node_setup
    cfg = cfg.model_copy(update={"nodes": cfg.nodes.model_copy(update={"cache_dir": tmp_path})})
    calls = []

    def compute() -> np.ndarray:
        calls.append(1)
        return predict(teacher, setup.dataset.train_x).numpy()

    cache = LogitCache(tmp_path / "logits")
    checkpoint = tmp_path / "teacher.pt"
    torch.save({"state_dict": teacher.state_dict()}, checkpoint)
    key = cache.key(checkpoint, "mnist1d", "train", "float32")
    first, built = cache.get_or_build(key, compute)
    assert built and isinstance(first, np.memmap) and first.shape == (4000, 10)
    again, built = cache.get_or_build(key, compute)
    assert not built and len(calls) == 1 and np.array_equal(first, again)  # hit: no teacher pass
    expected = np.array(first)  # a copy: the memory map would show the corruption below

    other = load_node(cfg, setup, 0, 0)  # a different teacher checkpoint under the same file name
    torch.save({"state_dict": other.state_dict()}, checkpoint)
    assert cache.key(checkpoint, "mnist1d", "train", "float32") != key  # content-keyed: no stale reads
    assert cache.key(checkpoint, "mnist1d", "val", "float32") != cache.key(checkpoint, "mnist1d", "train", "float32")

    array_path = tmp_path / "logits" / f"{key}.npy"
    data = bytearray(array_path.read_bytes())
    data[-7] ^= 0xFF  # flip bits in the payload
    array_path.write_bytes(bytes(data))
    assert cache.load(key) is None
    rebuilt, built = cache.get_or_build(key, compute)
    assert built and np.array_equal(rebuilt, expected)
    array_path.write_bytes(array_path.read_bytes()[:500])  # truncated
    assert cache.load(key) is None
    assert (tmp_path / "logits" / f"{key}.npy.sha256").is_file()


def test_node_logits_follow_the_configured_dtype(tmp_path: Path, node_setup: tuple) -> None:
    cfg, setup, teacher = node_setup
    half = cfg.model_copy(update={"teacher": cfg.teacher.model_copy(update={"dtype": "float16"})})
    logits, _ = node_logits(half, setup, 1, 0)
    assert logits.dtype == np.float16
    assert np.allclose(logits.astype(np.float32), predict(teacher, setup.dataset.train_x).numpy(), atol=2e-2)


class ControllerPolling(UserCallback):
    """Writes the poll interval the Train controller's process was given, from that process."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        from raykd.learners import POLL_ENV

        self.path.write_text(os.environ.get(POLL_ENV, "unset"))


@pytest.mark.slow
def test_two_worker_torch_trainer_kd_run(ray_session, node_setup: tuple, tmp_path: Path) -> None:
    """A real 2-worker TorchTrainer (DDP, gloo) distils from the cache; each worker trains on half the set."""
    from raykd.learners import POLL_ENV, POLL_S, run_on_learners

    cfg, _, _ = node_setup
    cfg = cfg.model_copy(
        update={
            "teacher": cfg.teacher.model_copy(update={"mode": "cache"}),
            "learners": cfg.learners.model_copy(update={"num_workers": 2}),
        }
    )
    polled = tmp_path / "poll_s.txt"
    metrics = run_on_learners(
        cfg, "kd", {"temperature": 4.0, "alpha": 0.5}, 0, tmp_path, None, [ControllerPolling(polled)]
    )
    assert polled.read_text() == POLL_S and POLL_ENV not in os.environ  # the controller's setting, for its call only
    single = run_trial(cfg, "kd", {"temperature": 4.0, "alpha": 0.5}, 0)
    assert metrics["epoch"] == cfg.transfer.train.epochs
    assert metrics["test_acc_before"] == single["test_acc_before"]  # same starting student
    assert 0 < metrics["test_acc"] <= 1 and metrics["test_acc"] != metrics["test_acc_before"]  # it trained
    assert list(tmp_path.glob("learners/checkpoint_*/student.pt"))  # the last report carried the weights


def test_a_cached_run_loads_no_teacher_model(node_setup: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the teacher's logits in the cache, a KD trial reads them and never loads the teacher's checkpoint."""
    import raykd.experiment
    import raykd.teacher.cache

    cfg, setup, _ = node_setup
    cached = cfg.model_copy(update={"teacher": cfg.teacher.model_copy(update={"mode": "cache"})})
    node_logits(cached, setup, 1, 0)  # fill the cache
    loaded: list[int] = []

    def recording(cfg, setup, node, seed, device):  # noqa: ANN001, ANN202
        loaded.append(node)
        return load_node(cfg, setup, node, seed, device)

    monkeypatch.setattr(raykd.experiment, "load_node", recording)
    monkeypatch.setattr(raykd.teacher.cache, "load_node", recording)
    result = run_trial(cached, "kd", {"temperature": 4.0, "alpha": 0.5}, 0)
    assert loaded == [0] and result["epoch"] == cached.transfer.train.epochs  # the student only
