"""Two ``raykd.run`` calls in one process share no state: what one run held, lost or refused stays with it."""

from __future__ import annotations

from pathlib import Path

import pytest

import raykd
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
