"""Two ``raykd.run`` calls in one process share no state: what one run held, lost or refused stays with it."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import raykd
from raykd.config import validate_config
from raykd.nodes import data_digest, dataset_of
from raykd.tracking import parent_run
from tests.conftest import tiny_raw


def test_a_refused_run_and_a_failed_store_leave_the_next_run_untouched(
    tmp_path: Path, cache_dir: Path, ray_session: object
) -> None:
    uri = f"sqlite:///{tmp_path / 'earlier.db'}"
    with parent_run(uri, "tests", "earlier") as earlier:  # a run whose store refused a write
        earlier.log_files(tmp_path / "missing.csv")
    assert "not recorded there: missing.csv" in str(earlier.lost.line(uri))
    refused_cache = tmp_path / "refused-cache"
    (tmp_path / "refused").mkdir()
    refused = tiny_raw(tmp_path / "refused", refused_cache, tune={"cpus_per_trial": 64})
    with pytest.raises(raykd.ConfigError, match="cpus_per_trial"):  # refused once its dataset was built and held
        raykd.run(refused)
    assert not [p for p in refused_cache.rglob("*") if p.is_file()]  # nothing it held reached the disk
    (tmp_path / "next").mkdir()
    study = raykd.run(tiny_raw(tmp_path / "next", cache_dir, methods=[{"name": "ce", "label": "no-kd"}]))
    assert study.untracked is None  # its own store lost nothing, whatever the earlier one did
    assert (study.out / "trials.csv").is_file() and list(cache_dir.rglob("*.npz"))  # its writes landed


def test_an_edited_data_file_is_read_again_by_the_next_run_in_the_process(tmp_path: Path) -> None:
    """Datasets are memoised per process, keyed by the version of the user's files: an edit between two runs (a
    notebook) is loaded, digested and checked again, never served from the first run's memo."""
    rng = np.random.default_rng(0)

    def save(labels_offset: int) -> None:
        arrays = {"x": rng.normal(size=(600, 1, 40)).astype(np.float32), "x_test": rng.normal(size=(150, 1, 40))}
        arrays |= {"y": (np.arange(600) + labels_offset) % 3, "y_test": np.arange(150) % 3}
        np.savez(tmp_path / "mine.npz", **arrays)

    save(0)
    raw = tiny_raw(tmp_path, tmp_path / "cache", data={"dataset": "npz", "root": str(tmp_path / "mine.npz")})
    cfg = validate_config(raw)
    first, first_digest = dataset_of(cfg), data_digest(cfg)
    save(1)
    os.utime(tmp_path / "mine.npz", ns=(time.time_ns(), time.time_ns() + 10**9))  # a coarse clock still moves
    second = dataset_of(cfg)
    assert not torch.equal(first.train_y, second.train_y) and data_digest(cfg) != first_digest
    assert dataset_of(cfg) is second  # unchanged files: the memo serves them
