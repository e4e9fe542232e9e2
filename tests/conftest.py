"""Shared fixtures: one real Ray instance for the whole session, tiny configs, a shared node cache."""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The long end-to-end tests first: pytest-xdist hands tests out in this order, so the two workers end
    together on short tests instead of one waiting while the other runs a long one last."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One node-model/dataset cache for the session, so tiny sweeps share pre-trained nodes."""
    return tmp_path_factory.mktemp("raykd_cache")


@pytest.fixture(scope="session")
def ray_session() -> Any:
    """A real local Ray instance on loopback, started once per pytest-xdist worker and shared by its tests."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    yield ray
    ray.shutdown()


@pytest.fixture
def ray_address(ray_session: Any) -> str:
    """The session's Ray for a child driver to join with ``--address``, as a user joins a running cluster: it
    skips starting a Ray of its own. Waits (bounded) until every CPU is free again, since the actors of a
    driver that just ended release theirs a moment later and a child checks what is free before it places its
    own."""
    deadline = time.monotonic() + 60
    while ray_session.available_resources().get("CPU", 0) < ray_session.cluster_resources()["CPU"]:
        assert time.monotonic() < deadline, f"the session's Ray stayed busy: {ray_session.available_resources()}"
        time.sleep(0.2)
    return str(ray_session.get_runtime_context().gcs_address)


def student_data(shape: tuple[int, ...], classes: int, preprocess: dict[str, Any]) -> SimpleNamespace:
    """What ``save_student`` records of a dataset, for a student made without one."""
    return SimpleNamespace(input_shape=shape, num_classes=classes, preprocess=preprocess)


def tiny_raw(tmp_path: Path, cache_dir: Path, **sections: Any) -> dict[str, Any]:
    """A CI-sized experiment on MNIST-1D: short budgets, one seed, a 2x1 KD grid plus no-KD, one trial at a time
    (one trial actor, about 13 s of CPU before it trains; the suite's other xdist worker has the other core)."""
    raw: dict[str, Any] = {
        "name": "tiny",
        "seeds": [0],
        "partition": {"scheme": "dirichlet", "num_nodes": 3, "alpha": 0.5},
        "nodes": {"cache_dir": str(cache_dir), "train": {"epochs": 3, "batch_size": 64}},
        "transfer": {"student": 0, "teachers": [1], "set": "pool", "train": {"epochs": 2, "batch_size": 128}},
        "methods": [{"name": "ce", "label": "no-kd"}, {"name": "kd", "temperature": [1, 4], "alpha": 0.5}],
        "tune": {"max_concurrent_trials": 1},
        "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "tests"},
        "output_dir": str(tmp_path / "runs"),
    }
    raw.update(sections)
    return raw


def lm_documents(topics: int = 4, per_topic: int = 6) -> dict[str, list[str]]:
    """A tiny corpus with topics, referenced by ``lm_raw`` as a user's ``package.module:function`` dataset."""
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta"]
    return {
        f"topic{t}": [" ".join(words[(t + i + j) % len(words)] for j in range(40)) + "." for i in range(per_topic)]
        for t in range(topics)
    }


def lm_raw(tmp_path: Path, cache_dir: Path, **sections: Any) -> dict[str, Any]:
    """A CI-sized language-model study: the tiny corpus above, 16-token sequences, tiny GPTs on 2 nodes."""
    return tiny_raw(
        tmp_path,
        cache_dir,
        data={"task": "lm", "dataset": "tests.conftest:lm_documents", "seq_len": 16, "doc_chars": 100},
        partition={"scheme": "iid", "num_nodes": 2, "min_samples": 2},
        nodes={
            "cache_dir": str(cache_dir),
            "model": {"name": "gpt", "width": 16, "depth": 1, "kwargs": {"heads": 2}},
            "models": {1: {"name": "gpt", "width": 32, "depth": 1, "kwargs": {"heads": 2}}},
            "train": {"epochs": 2, "batch_size": 16, "lr": 0.01},
        },
        transfer={"student": 0, "teachers": [1], "set": "pool", "train": {"epochs": 1, "batch_size": 16}},
        **sections,
    )
