"""The config schema: YAML files, overrides, grid axes, and the tables chosen on validation data."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

from raykd import report
from raykd.config import load_config, parse_override, validate_config
from raykd.errors import ConfigError
from raykd.methods.kd import KnowledgeDistillation

CONFIGS = sorted((Path(__file__).parents[1] / "tune_configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_configs_validate(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.methods and all(m.ranges() or m.grid() for m in cfg.methods)  # a row with ranges is sampled


def test_lists_become_grid_axes_and_scalars_stay_fixed() -> None:
    cfg = validate_config({"methods": [{"name": "kd", "temperature": [1, 2, 4], "alpha": 0.5}, {"name": "ce"}]})
    kd, ce = cfg.methods
    assert kd.grid() == [{"temperature": t, "alpha": 0.5} for t in (1.0, 2.0, 4.0)]
    assert ce.grid() == [{}]
    assert kd.build(kd.grid()[1]) == KnowledgeDistillation(temperature=2.0, alpha=0.5)


def test_overrides_reach_nested_keys_and_list_items() -> None:
    raw = {"methods": [{"name": "kd"}], "transfer": {"train": {"epochs": 3}}}
    for assignment in ("transfer.train.epochs=7", "methods.0.alpha=[0.1, 0.9]", "partition.alpha=0.1", "seeds=4"):
        parse_override(raw, assignment)
    cfg = validate_config(raw)
    assert cfg.transfer.train.epochs == 7 and cfg.methods[0].alpha == [0.1, 0.9]
    assert cfg.partition.alpha == 0.1 and cfg.seeds == [4]


def test_summary_picks_the_best_setting_on_validation_never_on_test() -> None:
    trials = pd.DataFrame(
        {
            "label": ["kd"] * 4,
            "temperature": [1.0, 1.0, 4.0, 4.0],
            "seed": [0, 1, 0, 1],
            "val_acc": [0.80, 0.82, 0.70, 0.72],  # T=1 wins on validation
            "local_val_acc": [0.5] * 4,
            "test_acc": [0.60, 0.62, 0.90, 0.92],  # T=4 would win on test
            "test_acc_before": [0.5] * 4,
            "gain": [0.10, 0.12, 0.40, 0.42],
            "status": ["ok"] * 4,
        }
    )
    settings = report.per_setting(trials, ["temperature"])
    best = report.summary(settings, ["temperature"], "val_acc")
    assert best.loc[0, "temperature"] == 1.0 and best.loc[0, "gain"] == pytest.approx(0.11)
    assert best.loc[0, "gain_std"] == pytest.approx(0.01) and best.loc[0, "settings_tried"] == 2


def test_extends_merges_sections_and_replaces_lists(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("seeds: [0, 1]\npartition: {num_nodes: 5, alpha: 0.3}\nmethods: [{name: ce}]\n")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\nseeds: [7]\npartition: {alpha: 0.1}\n")
    cfg = load_config(tmp_path / "child.yaml")
    assert cfg.seeds == [7] and cfg.partition.num_nodes == 5 and cfg.partition.alpha == 0.1
    (tmp_path / "base.yaml").write_text("extends: child.yaml\n")
    with pytest.raises(ConfigError, match="loops back"):
        load_config(tmp_path / "child.yaml")


def test_a_missing_extends_names_the_yaml_that_refers_to_it_and_points_only_to_a_shipped_config(
    tmp_path: Path,
) -> None:
    """A user's own missing file is not sent to tune_configs/; a missing one named like a shipped config is."""
    child = tmp_path / "child.yaml"
    child.write_text("extends: mine.yaml\n")
    with pytest.raises(ConfigError) as err:
        load_config(child)
    assert str(err.value) == f"config {child}: extends: no such file {tmp_path / 'mine.yaml'}"
    child.write_text("extends: default.yaml\n")
    shipped = CONFIGS[0].parent / "default.yaml"
    with pytest.raises(ConfigError) as err:
        load_config(child)
    expected = f"config {child}: extends: no such file {tmp_path / 'default.yaml'}; raykd ships a config of that name"
    assert str(err.value) == f"{expected}: {shipped}"
    with pytest.raises(ConfigError, match=r"^config .*mine.yaml: no such file$"):
        load_config(tmp_path / "mine.yaml")


USER_METHOD = '''
from dataclasses import dataclass
from typing import Annotated

from pydantic import Field

from raykd.methods.kd import KnowledgeDistillation


@dataclass(frozen=True)
class MarginKD(KnowledgeDistillation):
    """KD with a margin."""

    name = "margin-kd"
    margin: Annotated[float, Field(ge=0, description="a margin")] = 1.0


class Plain:
    pass
'''


def test_a_user_method_class_is_a_row_whose_dataclass_fields_are_its_knobs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "my_methods.py").write_text(USER_METHOD)
    monkeypatch.chdir(tmp_path)
    cfg = validate_config({"methods": [{"name": "my_methods:MarginKD", "margin": [0, 2], "alpha": 0.3}]})
    (row,) = cfg.methods
    assert row.grid() == [{"temperature": 4.0, "alpha": 0.3, "margin": m} for m in (0.0, 2.0)]
    assert row.build(row.grid()[1]).margin == 2.0
    assert validate_config(cfg.model_dump(mode="json")).methods[0].grid() == row.grid()  # cells re-validate dumps
    problems = {
        "my_methods:Plain": "methods[0].name: 'my_methods:Plain' is not a method; expected a frozen dataclass",
        "my_methods:Gone": "methods[0].name: module 'my_methods' has no 'Gone'",
    }
    for name, message in problems.items():
        with pytest.raises(ConfigError, match=f"^{re.escape(message)}"):
            validate_config({"methods": [{"name": name}]})
    with pytest.raises(ConfigError, match=r"^methods\[0\].margin = -1: Input should be greater than or equal to 0$"):
        validate_config({"methods": [{"name": "my_methods:MarginKD", "margin": -1}]})
    with pytest.raises(ConfigError, match=r"methods.0; allowed: label, name, temperature, alpha, margin$"):
        validate_config({"methods": [{"name": "my_methods:MarginKD", "beta": 1}]})


def test_a_dotted_key_reaches_an_integer_mapping_key_from_the_command_line_and_the_api(tmp_path: Path) -> None:
    """YAML reads ``models: {1: ...}`` with an integer key: ``nodes.models.1.checkpoint`` overrides that entry
    (``--set`` and ``raykd.load_config(overrides=...)``) instead of adding a string "1" beside it."""
    import raykd
    from raykd.cli import config_from_args
    from raykd.sweep.cli import build_parser

    old, new = tmp_path / "old.pt", tmp_path / "new.pt"
    old.touch()
    new.touch()
    raw = {"methods": [{"name": "kd"}], "nodes": {"models": {1: {"name": "mlp", "checkpoint": str(old)}}}}
    config = tmp_path / "experiment.yaml"
    config.write_text(yaml.safe_dump(raw))
    assert "\n    1:\n" in config.read_text()  # an integer key, as a user writes it
    override = f"nodes.models.1.checkpoint={new}"
    args = build_parser().parse_args(["--config", str(config), "--set", override])
    configs = [
        config_from_args(args),
        raykd.load_config(config, overrides=[override]),
        raykd.load_config(raw, overrides=[override]),
    ]
    for cfg in configs:
        assert set(cfg.nodes.models) == {1} and cfg.nodes.models[1].checkpoint.resolve() == new.resolve()
        assert cfg.nodes.models[1].name == "mlp"
    whole = load_config(config, ["nodes.models.1=cnn1d"])  # the last segment too: the entry replaced, not doubled
    assert set(whole.nodes.models) == {1} and whole.nodes.models[1].name == "cnn1d"
