"""Node pre-training: cached on disk, reused, keyed by everything that shapes the model."""

from __future__ import annotations

from pathlib import Path

import pytest

from raykd.config import ExperimentConfig, validate_config
from raykd.experiment import TIMING_METRICS, run_trial
from raykd.nodes import load_node, node_key, node_path, prepare, read_node
from tests.conftest import tiny_raw


def missing_nodes(cfg: ExperimentConfig) -> list[tuple[int, int]]:
    """(node, seed) pairs of the experiment whose cached model is absent or unreadable."""
    return [(n, s) for s in cfg.seeds for n in cfg.node_ids() if read_node(node_path(cfg, n, s)) is None]


def test_node_model_is_trained_once_then_reused(tmp_path: Path) -> None:
    cfg = validate_config(tiny_raw(tmp_path, tmp_path / "cache"))
    assert missing_nodes(cfg) == [(0, 0), (1, 0)]
    setup = prepare(cfg, 0)
    load_node(cfg, setup, 0, 0)
    path = node_path(cfg, 0, 0)
    written = path.stat().st_mtime_ns
    load_node(cfg, setup, 0, 0)
    assert path.stat().st_mtime_ns == written
    assert missing_nodes(cfg) == [(1, 0)]


@pytest.mark.parametrize(
    "change",
    [
        {"seeds": [1]},
        {"data": {"dataset": "digits"}},
        {"partition": {"scheme": "dirichlet", "num_nodes": 3, "alpha": 0.1}},
        {"nodes": {"model": "mlp"}},
        {"nodes": {"train": {"epochs": 4, "batch_size": 64}}},
    ],
)
def test_cache_key_changes_with_what_shapes_the_model(tmp_path: Path, change: dict) -> None:
    base = validate_config(tiny_raw(tmp_path, tmp_path))
    raw = tiny_raw(tmp_path, tmp_path)
    for section, value in change.items():
        raw[section] = {**raw.get(section, {}), **value} if isinstance(value, dict) else value
    changed = validate_config(raw)
    assert node_key(base, 0, base.seeds[0]) != node_key(changed, 0, changed.seeds[0])


def test_corrupted_cache_file_is_detected_and_retrained(tmp_path: Path) -> None:
    cfg = validate_config(tiny_raw(tmp_path, tmp_path / "cache"))
    setup = prepare(cfg, 0)
    load_node(cfg, setup, 1, 0)
    path = node_path(cfg, 1, 0)
    path.write_bytes(path.read_bytes()[:100])  # truncated, as by a crash mid-write on another filesystem
    assert (1, 0) in missing_nodes(cfg)
    load_node(cfg, setup, 1, 0)
    assert (1, 0) not in missing_nodes(cfg)


def test_same_config_and_seed_give_the_same_metrics(tmp_path: Path, cache_dir: Path) -> None:
    cfg = validate_config(tiny_raw(tmp_path, cache_dir))
    first = run_trial(cfg, "kd", {"temperature": 4.0, "alpha": 0.5}, 0)
    second = run_trial(cfg, "kd", {"temperature": 4.0, "alpha": 0.5}, 0)
    for timing in TIMING_METRICS:
        assert first.pop(timing) > 0 and second.pop(timing) > 0
    assert first == second and first["epoch"] == 2


@pytest.mark.parametrize("method", [{"name": "dml"}, {"name": "dpkd"}, {"name": "ce"}])
def test_every_method_runs_a_trial(tmp_path: Path, cache_dir: Path, method: dict) -> None:
    cfg = validate_config(tiny_raw(tmp_path, cache_dir, methods=[method]))
    result = run_trial(cfg, method["name"], {k: v[0] for k, v in cfg.methods[0] if k in cfg.methods[0].knobs()}, 0)
    assert result["gain"] == pytest.approx(result["test_acc"] - result["test_acc_before"])
    assert 0 < result["test_acc"] <= 1
