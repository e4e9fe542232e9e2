"""raykd.plan: the one preflight every entry point makes, its Plan, and a refusal before anything is written."""

from __future__ import annotations

from pathlib import Path

import pytest

import raykd
from raykd.errors import ConfigError
from tests.conftest import tiny_raw


def test_a_plan_resolves_the_cells_folders_and_store(tmp_path: Path, cache_dir: Path) -> None:
    raw = tiny_raw(
        tmp_path, cache_dir, axes={"skew": {"low": {"partition.alpha": 0.3}, "high": {"partition.alpha": 1}}}
    )
    plan = raykd.plan(raw)
    assert sorted(cell.variants["skew"] for cell in plan.cells) == ["high", "low"] and not plan.simulation
    assert plan.uri == raw["tracking"]["uri"]
    assert plan.folders["output_dir"] == tmp_path / "runs" and plan.folders["nodes.cache_dir"] == cache_dir
    simulated = raykd.plan(tiny_raw(tmp_path, cache_dir), simulation=True)
    assert simulated.simulation and [cell.config for cell in simulated.cells] == [simulated.config]


def test_a_plan_refuses_a_bad_combination_in_one_line_and_writes_nothing(tmp_path: Path, cache_dir: Path) -> None:
    sweep = tiny_raw(tmp_path, cache_dir, faults={"trial": {"label": "dml", "seed": 0}})
    with pytest.raises(ConfigError, match=r"^faults.trial.label: 'dml' is not a method row; allowed: no-kd, kd$"):
        raykd.plan(sweep)
    simulation = tiny_raw(tmp_path, cache_dir, federated={"min_clients": 4})
    raykd.plan(simulation)  # a sweep without simulations never runs the federated rules
    with pytest.raises(ConfigError, match=r"^federated.min_clients: 4 clients per round but partition.num_nodes is 3"):
        raykd.plan(simulation, simulation=True)
    assert not (tmp_path / "runs").exists()
