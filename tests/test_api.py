"""The Python API: the same configs and one-line errors as the command lines, and a light ``import raykd``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import raykd
from tests.conftest import tiny_raw

REPO = Path(__file__).resolve().parents[1]


def test_load_config_from_a_mapping_applies_overrides_and_leaves_the_mapping_alone(tmp_path: Path) -> None:
    raw = tiny_raw(tmp_path, Path("relative-cache"))
    cfg = raykd.load_config(raw, overrides=["seeds=[3, 4]", "methods.1.temperature=[2]"])
    assert cfg.seeds == [3, 4] and cfg.methods[1].temperature == [2]
    assert (
        cfg.nodes.cache_dir.is_absolute() and cfg.nodes.cache_dir.name == "relative-cache"
    )  # Ray workers run elsewhere
    assert raw["seeds"] == [0]


def test_load_config_from_a_file_equals_the_command_lines(tmp_path: Path) -> None:
    cfg = raykd.load_config(REPO / "tune_configs" / "default.yaml", ["partition.alpha=0.1"])
    assert cfg.partition.alpha == 0.1 and cfg.name == "default"


def test_bad_input_is_the_same_one_line_config_error(tmp_path: Path) -> None:
    with pytest.raises(
        raykd.ConfigError, match=r"^partition.num_nodes = 1: Input should be greater than or equal to 2$"
    ):
        raykd.load_config(tiny_raw(tmp_path, tmp_path), ["partition.num_nodes=1"])
    with pytest.raises(raykd.ConfigError, match="give a config"):
        raykd.run(None)


def test_import_raykd_loads_no_torch_ray_or_mlflow() -> None:
    code = "import sys, raykd; print(sorted(m for m in ('torch', 'ray', 'mlflow', 'flwr') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "[]", done.stderr[-2000:]
